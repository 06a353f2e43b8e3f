"""Sparse autoencoders on disk in SAELens's layout: a folder with ``cfg.json`` and
``sae_weights.safetensors`` (``W_enc``, ``b_enc``, ``W_dec``, ``b_dec``, and ``threshold`` for JumpReLU);
read from a local folder or, online, from a hub repo."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .autoencoder import SparseAutoencoder
from .config_file import SAEConfig, read_config
from .hook_names import hook_name_of, site_of_hook
from .weights_file import read_weights

__all__ = ["load_sae", "save_sae"]

CONFIG, WEIGHTS = "cfg.json", "sae_weights.safetensors"


def _folder(path_or_repo: str | os.PathLike, subfolder: str | None) -> Path:
    path = Path(path_or_repo)
    if path.is_dir():
        return path / subfolder if subfolder else path
    if path.exists():
        raise ValueError(f"{path} is a file; give the SAE's folder (with {CONFIG} and {WEIGHTS})")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ValueError(f"{path_or_repo!r} is not a folder, and huggingface_hub is not installed to fetch it") from None
    patterns = [f"{subfolder}/*" if subfolder else "*"]
    try:
        got = snapshot_download(str(path_or_repo), allow_patterns=patterns, local_files_only=True)
    except Exception:
        if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
            raise ValueError(f"SAE {path_or_repo!r} is not a local folder nor in the hub cache, and HF_HUB_OFFLINE is "
                             "set: download it once online, or give its folder") from None
        try:
            got = snapshot_download(str(path_or_repo), allow_patterns=patterns, etag_timeout=10)
        except Exception as exc:
            raise ValueError(f"SAE {path_or_repo!r} is not a local folder and could not be downloaded from the hub "
                             f"({type(exc).__name__}: {exc}); give its folder") from None
    return Path(got) / subfolder if subfolder else Path(got)


def load_sae(path_or_repo: str | os.PathLike, *, subfolder: str | None = None, site: str | None = None,
             model: Any = None) -> SparseAutoencoder:
    """Read an SAE in SAELens's layout.

    Args:
        path_or_repo: Its folder, or a hub repo id (online, or already in the hub cache).
        subfolder: The SAE's folder inside the repo (a release holding several).
        site: The mlx_steer site it reads; default: from its ``hook_name`` (``blocks.12.hook_resid_post``
            is ``layers.12``).
        model: When given, the site is resolved on it and the SAE's width checked against the site's.

    Weights saved as bf16, fp16 or fp64 are read as float32 (exact for bf16 and fp16); interventions cast
    them to the model's activation dtype when they are installed.

    Raises:
        ValueError: naming the file and the field or tensor: missing files, ``cfg.json`` not a JSON object or
            a field of the wrong type (JSON's own: ``true``, an integer ``k``), weights truncated, not floats
            or not finite, shapes that disagree, an architecture or hook without a counterpart, or a width
            that does not fit the model's site.
    """
    folder = _folder(path_or_repo, subfolder)
    missing = [n for n in (CONFIG, WEIGHTS) if not (folder / n).is_file()]
    if missing:
        raise ValueError(f"{folder} is not an SAE folder in SAELens's layout: {', '.join(missing)} missing")
    cfg = read_config(folder / CONFIG)
    need = ["W_enc", "b_enc", "W_dec", "b_dec"] + (["threshold"] if cfg.architecture == "jumprelu" else [])
    weights = read_weights(folder / WEIGHTS, need)
    _check_shapes(folder, cfg, weights)
    try:
        where = site or cfg.site or site_of_hook(cfg.hook_name or "")
    except ValueError as exc:
        raise ValueError(f"{folder / CONFIG}: field hook_name: {exc}") from None
    sae = SparseAutoencoder(
        weights["W_enc"], weights["b_enc"], weights["W_dec"], weights["b_dec"], architecture=cfg.architecture,
        k=cfg.k, threshold=weights.get("threshold"), site=where, hook_name=cfg.hook_name,
        apply_b_dec_to_input=cfg.apply_b_dec_to_input, metadata=cfg.extra)
    if model is not None:
        try:
            check_fits(sae, model)
        except ValueError as exc:
            raise ValueError(f"{folder}: {exc}") from None
    return sae


def check_fits(sae: SparseAutoencoder, model: Any) -> None:
    """ValueError naming the site and both widths when the SAE does not read ``model``'s site."""
    s = model.resolve(sae.site)
    dim = model.backend.site_dim(s.path, s.point)
    if dim is not None and dim != sae.d_in:
        raise ValueError(f"the SAE reads width {sae.d_in} but site {s.key!r} of this model has width {dim}")


def _check_shapes(folder: Path, cfg: SAEConfig, weights: dict[str, np.ndarray]) -> None:
    """ValueError naming the file and the field or tensor whose shape or value disagrees with the others."""
    enc = weights["W_enc"].shape
    if len(enc) != 2:
        raise ValueError(f"{folder / WEIGHTS}: W_enc has shape {list(enc)}; valid: (d_in, d_sae)")
    d_in, d_sae = enc
    for name, value, got in (("d_in", cfg.d_in, d_in), ("d_sae", cfg.d_sae, d_sae)):
        if value is not None and value != got:
            raise ValueError(f"{folder / CONFIG}: field {name} is {value} but W_enc in {WEIGHTS} is {d_in} x {d_sae}")
    want = {"b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,), "threshold": (d_sae,)}
    for name, shape in want.items():
        if name in weights and weights[name].shape != shape:
            raise ValueError(f"{folder / WEIGHTS}: {name} has shape {list(weights[name].shape)}; with W_enc "
                             f"{d_in} x {d_sae} it must be {list(shape)}")
    if cfg.architecture == "topk" and not (cfg.k is not None and 1 <= cfg.k <= d_sae):
        raise ValueError(f"{folder / CONFIG}: field k is {cfg.k}; a topk SAE of {d_sae} features needs k in 1..{d_sae}")


def save_sae(sae: SparseAutoencoder, folder: str | os.PathLike, *, model_name: str | None = None) -> Path:
    """Write ``sae`` in SAELens's layout (``cfg.json`` + ``sae_weights.safetensors``); returns the folder."""
    from safetensors.numpy import save_file

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {n: np.ascontiguousarray(getattr(sae, n), dtype=np.float32) for n in ("W_enc", "b_enc", "W_dec", "b_dec")}
    if sae.threshold is not None:
        tensors["threshold"] = np.ascontiguousarray(sae.threshold, dtype=np.float32)
    save_file(tensors, str(out / WEIGHTS))
    hook = sae.hook_name or hook_name_of(sae.site)
    layer = int(hook.split(".")[1]) if hook and hook.startswith("blocks.") else None
    # SAELens 6 reads the config's own fields and the metadata (an SAEMetadata: only its fields), "metadata"
    # since 6.x, "meta" in the first 6.x releases; the rest it skips. Without a sae_lens_version of 6 or
    # later it would convert the file as one written before 6.0
    cfg = {**(sae.metadata or {}), "sae_lens_version": "6.0.0", "architecture": sae.architecture, "d_in": sae.d_in, "d_sae": sae.d_sae,
           "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": sae.apply_b_dec_to_input,
           "normalize_activations": "none", "reshape_activations": "none", "hook_name": hook,
           "metadata": {"hook_name": hook, "model_name": model_name, "hook_layer": layer},
           "meta": {"hook_name": hook, "model_name": model_name, "hook_layer": layer}, "mlx_steer_site": sae.site}
    if sae.k is not None:
        cfg["k"] = sae.k
    (out / CONFIG).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return out
