"""Site paths: resolve what users type (``layers.8``, ``layers.-1.mlp``, ``model.layers.8:input``)
to the module's dotted name in the model tree plus a hook point. Pure Python, shared by backends.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass

HOOK_POINTS = ("output", "input")
NORM_NAMES = ("norm", "ln_f", "norm_f", "final_layernorm", "final_norm", "final_layer_norm", "ln_out")


@dataclass(frozen=True)
class Site:
    """A resolved module path and the hook point on it (its output or its input)."""

    path: str
    point: str = "output"

    @property
    def key(self) -> str:
        """Canonical string: ``path`` for outputs, ``path:input`` for inputs."""
        return self.path if self.point == "output" else f"{self.path}:{self.point}"

    def __str__(self) -> str:
        return self.key


class PathResolver:
    """Resolves user paths against a model's module names.

    Args:
        module_names: Every module's dotted name (``named_modules()`` order).
        layer_paths: Resolved decoder-layer paths, in order.
    """

    def __init__(self, module_names: list[str], layer_paths: list[str]):
        self.names = [n for n in module_names if n]
        self._set = set(self.names)
        self.layer_paths = list(layer_paths)
        self.container = layer_paths[0].rsplit(".", 1)[0] if layer_paths else ""

    def resolve_path(self, name: str) -> str:
        """The full module path for ``name``; raises ValueError with close matches if unknown."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"site path must be a non-empty string, got {name!r}")
        if name in self._set:
            return name
        typed = name
        head, _, rest = name.partition(".")
        idx_str, _, tail = rest.partition(".")
        short_container = self.container.rsplit(".", 1)[-1]
        if head in ("layers", short_container) and _is_int(idx_str):
            n = len(self.layer_paths)
            i = int(idx_str)
            if not -n <= i < n:
                raise ValueError(
                    f"layer {i} out of range for a {n}-layer model; valid: {-n}..{n - 1}"
                )
            full = self.layer_paths[i] + (f".{tail}" if tail else "")
            if full in self._set:
                return full
            name = full  # fall through to the error with suggestions
        suffix = [n for n in self.names if n.endswith("." + name)]
        if len(suffix) == 1:
            return suffix[0]
        raise ValueError(self._unknown(typed, name, suffix))

    def resolve(self, spec: object) -> Site:
        """Parse ``path[:input|:output]`` (or a Site) into a resolved Site; anything else is a ValueError."""
        if isinstance(spec, Site):
            path, point = spec.path, spec.point
        elif isinstance(spec, str):
            path, sep, point = spec.partition(":")
            point = point if sep else "output"
        else:
            raise ValueError(f"site must be a string like 'layers.4' or 'layers.4:input', got {spec!r}")
        if point not in HOOK_POINTS:
            raise ValueError(f"unknown hook point {point!r} in {spec!r}; valid: {', '.join(HOOK_POINTS)}")
        return Site(self.resolve_path(path), point)

    def _unknown(self, typed: str, name: str, ambiguous: list[str]) -> str:
        if ambiguous:
            return f"site path {typed!r} is ambiguous; matches: {', '.join(ambiguous[:8])}"
        close = difflib.get_close_matches(name, self.names, n=5, cutoff=0.6)
        n = len(self.layer_paths)
        layers = f"{self.layer_paths[0]} .. {self.layer_paths[-1]}" if n else "none found"
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        return (
            f"unknown site path {typed!r}{hint} Decoder layers: {layers} "
            f"(short form 'layers.i', i in {-n}..{n - 1})"
        )


ATTENTION_OUTPUTS = ("o_proj", "out_proj", "c_proj", "dense", "wo")


def is_attention_output(path: str) -> bool:
    """Whether ``path`` is an attention block's output projection (``self_attn.o_proj``,
    GPT-2's ``attn.c_proj``): its input holds the heads' outputs side by side."""
    parent, _, name = path.rpartition(".")
    last = parent.rpartition(".")[2]
    return name in ATTENTION_OUTPUTS and ("attn" in last or "attention" in last)


def final_norm_path(modules: Mapping[str, object], container: str) -> str | None:
    """The norm applied after the last block: a module whose type name says norm, named like
    one of ``NORM_NAMES``, beside the layer container (or at the root); None if there is none."""
    parent = container.rpartition(".")[0]
    for prefix in dict.fromkeys([parent, ""]):
        for name in NORM_NAMES:
            path = f"{prefix}.{name}" if prefix else name
            if path in modules and "norm" in type(modules[path]).__name__.lower():
                return path
    return None


def _is_int(s: str) -> bool:
    try:
        int(s)
    except ValueError:
        return False
    return True
