"""Attention patterns of a transformers model, recorded only when asked.

transformers' attention modules (GPT-2's included) pick their attention function at each call
with ``ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)``.
While patterns are asked for, each asked layer's attention module gets its own copy of the config
naming a registered function that computes the eager weights ``softmax(q kᵀ · scaling [soft-capped]
+ mask)`` in float32 beside the model's own implementation, which still computes the output: the
numbers are those of the default path. The mask is the one the model made for its own
implementation (boolean for ``sdpa``, additive for ``eager``, None for an unpadded causal forward),
so sliding windows and padding come with it. Other modules, and other models, keep their config.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ...engine.attention_sites import attention_path

Sink = Callable[[int, torch.Tensor], None]
NAME = "mlx_steer_patterns"


def attach_patterns(modules: dict[str, nn.Module], layer_paths: Sequence[str], layers: Sequence[int],
                    sink: Sink) -> Callable[[], None]:
    """Until undone, each forward hands ``sink(layer, pattern)`` the (B, H, L_q, L_k) float32
    attention weights of every layer in ``layers``; returns what undoes it.

    Raises:
        ValueError: an attention module that does not choose its function from the config.
    """
    attns = {i: modules[attention_path(modules, layer_paths[i])] for i in layers}
    for m in attns.values():
        impl = getattr(getattr(m, "config", None), "_attn_implementation", None)
        if not isinstance(impl, str) or not hasattr(sys.modules[type(m).__module__], "ALL_ATTENTION_FUNCTIONS"):
            raise ValueError(f"attention patterns are not supported for {type(m).__name__}: it does not pick its "
                             "attention function from config._attn_implementation (supported: transformers models "
                             "whose attention modules use ALL_ATTENTION_FUNCTIONS)")
        if impl == "eager" and getattr(m, "reorder_and_upcast_attn", False):  # GPT-2's own eager variant
            raise ValueError(f"attention patterns are not supported for {type(m).__name__} with "
                             "reorder_and_upcast_attn=True under eager attention; load it with "
                             "attn_implementation='sdpa' or set reorder_and_upcast_attn=False")
    _register()
    originals: list[tuple[nn.Module, Any]] = []
    try:
        for i, m in attns.items():
            config: Any = m.config
            mine = copy.copy(config)
            mine.__dict__["_attn_implementation_internal"] = NAME  # not the setter: it recurses into shared sub-configs
            mine.__dict__["_mlx_steer_pattern"] = (i, sink, config._attn_implementation)
            originals.append((m, config))
            m.config = mine
    except BaseException:
        _restore(originals)
        raise
    return lambda: _restore(originals)


def _restore(originals: list[tuple[nn.Module, Any]]) -> None:
    for m, config in reversed(originals):
        m.config = config


def _register() -> None:
    from transformers import AttentionInterface

    if NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(NAME, _recording_attention)


def _recording_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, Any]:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    layer, sink, impl = module.config.__dict__["_mlx_steer_pattern"]
    sink(layer, pattern(query, key, attention_mask, scaling=kwargs.get("scaling"), softcap=kwargs.get("softcap")))
    own = ALL_ATTENTION_FUNCTIONS.get_interface(impl, sys.modules[type(module).__module__].eager_attention_forward)
    return own(module, query, key, value, attention_mask, **kwargs)


def pattern(query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None, *, scaling: float | None,
            softcap: float | None) -> torch.Tensor:
    """Eager attention weights in float32, (B, H, L_q, L_k), as transformers' eager attention makes
    them; ``mask`` boolean (True: attend), additive, or None (causal, queries the last keys)."""
    with torch.no_grad():
        H, Hkv = query.shape[1], key.shape[1]
        k = key.repeat_interleave(H // Hkv, dim=1) if H != Hkv else key
        scale = query.shape[-1] ** -0.5 if scaling is None else scaling
        scores = (query.float() @ k.float().transpose(-1, -2)) * scale
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        qL, kL = scores.shape[-2:]
        if mask is None:
            q_at = torch.arange(kL - qL, kL, device=scores.device)
            mask = q_at[:, None] >= torch.arange(kL, device=scores.device)[None]
        lowest = torch.finfo(torch.float32).min
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask[..., :kL], lowest)
        else:
            scores = scores + mask[..., :kL].float()
        return torch.softmax(scores, dim=-1)
