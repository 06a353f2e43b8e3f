"""An SAE's ``cfg.json`` (SAELens's layout, current and older field names) read strictly: a JSON object
whose fields have JSON's own types (``true``, not ``"false"``; ``k`` an integer, not ``1.7`` nor
``true``); every refusal names the file and the field."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .autoencoder import ARCHITECTURES

__all__ = ["SAEConfig", "WRITTEN", "read_config"]

# the fields save_sae writes itself (the others are kept in SparseAutoencoder.metadata)
WRITTEN = {"architecture", "d_in", "d_sae", "dtype", "device", "apply_b_dec_to_input", "normalize_activations",
           "reshape_activations", "meta", "metadata", "hook_name", "k", "activation_fn_str", "activation_fn",
           "activation_fn_kwargs", "mlx_steer_site", "sae_lens_version"}
# SAELens's older activation names
_OLD_ACTIVATIONS = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu"}


@dataclass(frozen=True)
class SAEConfig:
    """What ``load_sae`` uses of a ``cfg.json``; ``extra`` holds the fields it does not write itself."""

    architecture: str
    k: int | None
    hook_name: str | None
    site: str | None
    apply_b_dec_to_input: bool
    d_in: int | None
    d_sae: int | None
    extra: dict[str, Any]


def read_config(path: Path) -> SAEConfig:
    """``path`` (a ``cfg.json``) as an :class:`SAEConfig`.

    Raises:
        ValueError: naming ``path`` and the field: not UTF-8 JSON, not an object, a field of the wrong type,
            an architecture or activation normalization this package does not compute.
    """
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{path} holds a JSON {type(cfg).__name__}; valid: a JSON object of SAE config fields")
    field = _Fields(path, cfg)
    meta = field.get("metadata", dict) or field.get("meta", dict) or {}  # "meta" in SAELens 6's first releases
    kwargs = field.get("activation_fn_kwargs", dict) or {}
    hook = field.get("hook_name", str)
    if hook is None:
        hook = _Fields(path, meta, prefix="metadata.").get("hook_name", str)
    arch = field.get("architecture", str)
    if arch is None:
        old = field.get("activation_fn_str", str) or field.get("activation_fn", str) or "relu"
        arch = _OLD_ACTIVATIONS.get(old, old)
    if arch not in ARCHITECTURES:
        raise ValueError(f"{path}: field architecture (or activation_fn_str) is {json.dumps(arch)}; valid: "
                         f"{', '.join(ARCHITECTURES)}")
    k = field.get("k", int)
    if k is None:
        k = _Fields(path, kwargs, prefix="activation_fn_kwargs.").get("k", int)
    norm = field.get("normalize_activations", str)
    if norm not in (None, "none"):
        raise ValueError(f"{path}: field normalize_activations is {json.dumps(norm)}; valid: \"none\" (fold the "
                         "normalization into the weights first)")
    b_dec_in = field.get("apply_b_dec_to_input", bool)
    return SAEConfig(architecture=arch, k=k, hook_name=hook, site=field.get("mlx_steer_site", str),
                     apply_b_dec_to_input=True if b_dec_in is None else b_dec_in, d_in=field.get("d_in", int),
                     d_sae=field.get("d_sae", int), extra={key: v for key, v in cfg.items() if key not in WRITTEN})


class _Fields:
    """Typed reads of a JSON object's fields: absent or null is None; anything else must have the type."""

    def __init__(self, path: Path, obj: dict[str, Any], *, prefix: str = "") -> None:
        self.path, self.obj, self.prefix = path, obj, prefix

    def get(self, name: str, kind: type) -> Any:
        value = self.obj.get(name)
        if value is None:
            return None
        # bool is an int in Python, not in JSON: k=true is refused, and "false" is not a boolean
        if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
            return value
        want = {bool: "true or false", int: "an integer", str: "a string", dict: "a JSON object"}[kind]
        raise ValueError(f"{self.path}: field {self.prefix}{name} is {json.dumps(value)[:80]}; valid: {want}")
