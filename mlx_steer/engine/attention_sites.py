"""Where a decoder layer's attention sits: the attention module and its output projection,
found by the names mlx-lm and transformers give them (``self_attn``, GPT-2's ``attn``), and that
projection's weight and the site of its input, where the heads sit side by side (what head results,
head steering, head patching and the backends' pattern recording share)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .paths import ATTENTION_OUTPUTS

if TYPE_CHECKING:
    from .model import Steerable

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


def head_z_site(model: Steerable, layer: int) -> str:
    """The site holding ``layer``'s heads side by side (its attention output projection's input),
    resolved: record it anywhere (e.g. ``model.record`` over a generation), then :func:`split_heads`.

    Raises:
        ValueError: a bad layer index, or a layer without an output projection.
    """
    backend = model.backend
    (i,) = layer_indices(layer, len(backend.layer_paths))
    return model.resolve_key(f"{output_projection_path(backend.modules, backend.layer_paths[i])}:input")


def head_shape(model: Steerable, layer: int) -> tuple[int, int]:
    """``(H, d_head)`` of ``layer``: its head count and each head's width at :func:`head_z_site`.

    Raises:
        ValueError: a bad layer, no head count in the config, or a width it does not divide.
    """
    site = model.resolve(head_z_site(model, layer))
    H, width = model.backend.n_heads, model.backend.site_dim(site.path, site.point)
    if H is None or width is None:
        raise ValueError(f"{site.key}: the model gives no head count or width there; head steering needs both")
    if width % H:
        raise ValueError(f"{site.path} takes {width} inputs, not a multiple of the head count {H}")
    return H, width // H
