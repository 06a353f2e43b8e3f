"""The steering an lm-eval run applies: a vector file, a scale and the layers to use, from the model's
``model_args`` (the default for every request) or from a request's document (an override for that
request only). Parsed and checked here, before the model runs; nothing here imports lm_eval.

``model_args`` are strings when lm-eval parses ``key=value,key=value`` (it turns ``4`` into an int and
``true`` into a bool), and Python values when a dict or keyword arguments are given, so both forms are
accepted: ``layers=6``, ``layers=6;8`` (lm-eval splits ``model_args`` at commas), ``layers=[6, 8]``,
``layers=layers.6:input``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["OVERRIDE_KEYS", "Steering", "parse_layers", "parse_scale"]

OVERRIDE_KEYS = ("vector", "scale", "layers")


def parse_scale(value: object, *, what: str = "scale") -> float:
    """``value`` as a finite float (ints, floats and numeric strings).

    Raises:
        ValueError: a bool, a non-numeric string or a non-finite number, naming it.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{what}={value!r} is not a number; valid: a finite number, e.g. {what}=4")
    try:
        scale = float(value)
    except ValueError:
        raise ValueError(f"{what}={value!r} is not a number; valid: a finite number, e.g. {what}=4") from None
    if not math.isfinite(scale):
        raise ValueError(f"{what}={value!r} is not finite; valid: a finite number, e.g. {what}=4")
    return scale


def parse_layers(value: object) -> list[str] | None:
    """Layer indices or site names as site specs (``6`` -> ``layers.6``); None keeps every site.

    Raises:
        ValueError: an empty list or an entry that is neither an int nor a site name.
    """
    if value is None:
        return None
    if isinstance(value, str):
        items: list[object] = [s for s in re.split(r"[;\s]+", value.strip().strip("[]")) if s]
    elif isinstance(value, Sequence):
        items = list(value)
    else:
        items = [value]
    if not items:
        raise ValueError(f"layers={value!r} names no layer; valid: a layer index (layers=6), several "
                         "separated by ';' (layers=6;8) or site names (layers=layers.6:input)")
    out = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, str)):
            raise ValueError(f"layers entry {item!r} is not a layer index or a site name; e.g. layers=6 or layers=6;8")
        text = str(item).strip()
        out.append(f"layers.{text}" if re.fullmatch(r"-?\d+", text) else text)
    return out


@dataclass(frozen=True)
class Steering:
    """A vector file, scale and layers; ``vector=None`` is the unsteered model.

    Attributes:
        vector: Path of the vector file (safetensors or control-vector GGUF), or None.
        scale: Multiplier of the vector.
        layers: Site specs restricting the vector's sites (None: all of them).
    """

    vector: str | None = None
    scale: float = 1.0
    layers: tuple[str, ...] | None = None

    @classmethod
    def from_args(cls, *, vector: object = None, scale: object = None, layers: object = None) -> Steering:
        """The steering of ``model_args``.

        Raises:
            ValueError: a bad scale or layers, or scale/layers without a vector.
            FileNotFoundError: no file at ``vector``.
        """
        if vector is None:
            given = [f"{k}={v!r}" for k, v in (("scale", scale), ("layers", layers)) if v is not None]
            if given:
                raise ValueError(f"{', '.join(given)} needs a vector: add vector=FILE to the model_args")
            return cls()
        if not isinstance(vector, (str, Path)) or not str(vector):
            raise ValueError(f"vector={vector!r} is not a file path; valid: vector=FILE (.safetensors or .gguf)")
        if not Path(vector).expanduser().is_file():
            raise FileNotFoundError(f"vector={vector}: no such file (a vector file written by mlx_steer.save_vector "
                                    "or a control-vector .gguf)")
        sites = parse_layers(layers)
        return cls(str(Path(vector).expanduser()), 1.0 if scale is None else parse_scale(scale),
                   None if sites is None else tuple(sites))

    def override(self, change: object, *, where: str) -> Steering:
        """This steering with a request's overrides (``{"scale": 8}``, ``{"vector": None}`` ...).

        Args:
            change: The mapping found in the request's document.
            where: How messages name that mapping (e.g. ``doc['mlx_steer'] of gsm8k doc 3``).

        Raises:
            ValueError: not a mapping, an unknown key, a bad value, or scale/layers with no vector.
            FileNotFoundError: a vector file that does not exist.
        """
        if not isinstance(change, Mapping):
            raise ValueError(f"{where} must be a mapping with keys {', '.join(OVERRIDE_KEYS)}, got {change!r}")
        unknown = sorted(str(k) for k in change if k not in OVERRIDE_KEYS)
        if unknown:
            raise ValueError(f"{where} has unknown key(s) {', '.join(unknown)}; valid: {', '.join(OVERRIDE_KEYS)}")
        vector = change.get("vector", self.vector)
        if vector is None:
            if any(change.get(k) is not None for k in ("scale", "layers")):
                raise ValueError(f"{where} sets scale/layers but no vector applies (vector is None)")
            return Steering()
        scale = change.get("scale", self.scale)
        layers = change["layers"] if "layers" in change else (list(self.layers) if self.layers else None)
        try:
            return Steering.from_args(vector=vector, scale=scale, layers=layers)
        except (ValueError, FileNotFoundError) as exc:
            raise type(exc)(f"{where}: {exc}") from None

    def interventions(self, model: Any, cache: dict[str, Any]) -> dict[str, Any] | None:
        """``{site key: add_vector}`` for ``model``, or None when unsteered; ``cache`` keeps each
        vector file read once (checked against the model).

        Raises:
            ValueError: a vector that does not fit the model, or layers it has no direction for.
        """
        if self.vector is None:
            return None
        from ...vectors.vector_file import load_vector

        if self.vector not in cache:
            cache[self.vector] = load_vector(self.vector, model=model)
        vec = cache[self.vector]
        if self.layers is not None:
            paths = [model.resolve(s).path for s in self.layers]
            missing = [p for p in paths if p not in vec.sites]
            if missing:
                raise ValueError(f"layers={';'.join(self.layers)}: the vector {self.vector} has no direction at "
                                 f"{', '.join(missing)}; it has: {', '.join(vec.sites)}")
            vec = vec.select(paths)
        return dict(vec.to_interventions(scale=self.scale))
