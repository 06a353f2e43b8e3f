"""Where a decoder layer's attention sits: the attention module and its output projection,
found by the names mlx-lm and transformers give them (``self_attn``, GPT-2's ``attn``), and that
projection's weight (what head results, head patching and the backends' pattern recording share)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..engine.paths import ATTENTION_OUTPUTS

ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention")


def attention_path(modules: Mapping[str, object], layer_path: str) -> str:
    """The path of the attention module of the decoder layer at ``layer_path``.

    Raises:
        ValueError: the layer has no child named like an attention module.
    """
    for name in ATTENTION_NAMES:
        if f"{layer_path}.{name}" in modules:
            return f"{layer_path}.{name}"
    raise ValueError(f"{layer_path} has no attention module (a child named one of {', '.join(ATTENTION_NAMES)})")


def output_projection_path(modules: Mapping[str, object], layer_path: str) -> str:
    """The path of the attention's output projection (``o_proj``, GPT-2's ``c_proj``...): its
    input holds the heads' outputs side by side."""
    attn = attention_path(modules, layer_path)
    for name in ATTENTION_OUTPUTS:
        if f"{attn}.{name}" in modules:
            return f"{attn}.{name}"
    raise ValueError(f"{attn} has no output projection (a child named one of {', '.join(ATTENTION_OUTPUTS)})")


def layer_indices(layers: int | Sequence[int] | None, n_layers: int) -> list[int]:
    """``layers`` as sorted, distinct non-negative indices (None: every layer; negatives count from
    the end).

    Raises:
        ValueError: an index out of range, a non-integer, or an empty list.
    """
    if layers is None:
        return list(range(n_layers))
    items = [layers] if isinstance(layers, int) else list(layers)
    if not items:
        raise ValueError(f"layers is empty; give layer indices in -{n_layers}..{n_layers - 1} (or None for all)")
    out = set()
    for i in items:
        if isinstance(i, bool) or not isinstance(i, int):
            raise ValueError(f"layer {i!r} is not an integer; valid: -{n_layers}..{n_layers - 1}")
        if not -n_layers <= i < n_layers:
            raise ValueError(f"layer {i} out of range for a {n_layers}-layer model; valid: -{n_layers}..{n_layers - 1}")
        out.add(i % n_layers)
    return sorted(out)


def output_weight(backend: Any, path: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The output projection at ``path`` as float32 ``W`` (D, H · d_head) and bias (D,) or None
    (an MLX quantized projection dequantized)."""
    module = backend.modules[path]
    if all(hasattr(module, a) for a in ("scales", "bits", "group_size")):  # mlx.nn.QuantizedLinear
        import mlx.core as mx

        w = mx.dequantize(module.weight, module.scales, module.get("biases"), group_size=module.group_size,
                          bits=module.bits, mode=getattr(module, "mode", "affine"))
        b = module.get("bias") if "bias" in module else None
        return np.array(w.astype(mx.float32)), None if b is None else np.array(b.astype(mx.float32))
    dense = backend.dense(path)
    return dense.weight, dense.bias
