"""Torch forward hooks for sites, and the tracker of each forward's positions.

Hooks are plain ``register_forward_pre_hook`` / ``register_forward_hook`` registrations (with
kwargs), so the module tree, its classes and parameter names are never touched; each returns a
handle whose ``remove()`` undoes it. The decoder model (the parent of the layer container) gets a
pre-hook that computes the absolute position of every token of the forward from the KV cache
(a :class:`~mlx_steer.engine.positions.PositionState`) before any block runs; every site shares it.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ...engine.positions import PositionState

Fn = Callable[[torch.Tensor], torch.Tensor]


def cache_length(cache: Any, cache_position: Any) -> int:
    """Tokens already in the KV cache (its own count: a host int for HF caches)."""
    if cache is not None and hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    if isinstance(cache_position, torch.Tensor) and cache_position.numel():
        return int(cache_position.reshape(-1)[0])  # syncs; only for callers without a cache object
    return 0


def _cache_argument(bound: dict) -> Any:
    # transformers >= 5.24 names it ``cache``; earlier releases ``past_key_values``
    for name in ("cache", "past_key_values"):
        if bound.get(name) is not None:
            return bound[name]
    return None


def cache_keyword(model: nn.Module) -> str:
    """The keyword ``model.forward`` takes its KV cache by (``cache`` or ``past_key_values``)."""
    return "cache" if "cache" in _param_names(model) else "past_key_values"


def left_padding(attention_mask: Any, batch: int) -> np.ndarray:
    """Leading zeros per row of a 2-D attention mask (read on the host: raw calls only)."""
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.ndim != 2:
        return np.zeros(batch, dtype=np.int64)
    m = attention_mask.detach().to("cpu").numpy() != 0
    return (np.cumsum(m, axis=1) == 0).sum(axis=1).astype(np.int64)


def position_tracker(module: nn.Module, state: PositionState) -> Callable:
    """The decoder model's pre-hook: set ``state`` from the inputs, the cache and the padding."""
    names = _param_names(module)

    def hook(mod: nn.Module, args: tuple, kwargs: dict) -> None:
        bound = dict(zip(names, args))
        bound.update(kwargs)
        x = bound.get("input_ids")
        x = x if x is not None else bound.get("inputs_embeds")
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{type(mod).__name__} was called without input_ids or inputs_embeds; "
                             "cannot compute token positions")
        B, L = (1, x.shape[0]) if x.ndim == 1 else tuple(x.shape[:2])
        past = cache_length(_cache_argument(bound), bound.get("cache_position"))
        pad = state.padding
        pad = left_padding(bound.get("attention_mask"), B) if pad is None else np.broadcast_to(pad, (B,))
        ids = bound.get("input_ids")
        state.begin(past - pad, L, _cache_argument(bound), ids if isinstance(ids, torch.Tensor) else None)

    return hook


def attach_tracker(module: nn.Module, state: PositionState) -> Any:
    # prepend: positions must be known before any site pre-hook on the same module
    return module.register_forward_pre_hook(position_tracker(module, state), with_kwargs=True, prepend=True)


def attach(module: nn.Module, point: str, fn: Fn) -> Any:
    """Register ``fn`` on ``module``'s input or output; returns the removable handle."""
    if point == "input":
        return module.register_forward_pre_hook(_on_input(module, fn), with_kwargs=True)
    return module.register_forward_hook(_on_output(fn), with_kwargs=True)


def _param_names(module: nn.Module) -> list[str]:
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _on_input(module: nn.Module, fn: Fn) -> Callable:
    names = _param_names(module)
    first = names[0] if names else None

    def hook(mod: nn.Module, args: tuple, kwargs: dict) -> tuple:
        if args:
            return (fn(args[0]),) + tuple(args[1:]), kwargs
        if first is not None and first in kwargs:  # e.g. self_attn(hidden_states=...)
            return args, {**kwargs, first: fn(kwargs[first])}
        raise ValueError(f"input hooks need the module's input; {type(mod).__name__} got no {first!r} argument")

    return hook


def _on_output(fn: Fn) -> Callable:
    """Transform the output (the first element of a tuple, the first field of a ModelOutput)."""

    def hook(mod: nn.Module, args: tuple, kwargs: dict, out: Any) -> Any:
        if isinstance(out, torch.Tensor):
            return fn(out)
        if isinstance(out, tuple):
            return (fn(out[0]),) + tuple(out[1:])
        if hasattr(out, "to_tuple") and len(out):
            key = next(iter(out.keys()))
            out[key] = fn(out[key])
            return out
        raise ValueError(f"cannot hook the output of {type(mod).__name__}: {type(out).__name__} is not a tensor")

    return hook


def bypass(module: nn.Module, fn: Fn) -> Callable[[], None]:
    """Until the returned function is called, ``module(hidden, ...)`` returns ``fn(hidden)``
    without running the module (an instance ``forward`` shadows the class's; its hooks still run)."""
    if "forward" in module.__dict__:
        raise RuntimeError(f"{type(module).__name__} already has its forward replaced")

    def forward(*args: Any, **kwargs: Any) -> Any:
        return fn(args[0] if args else kwargs["hidden_states"])

    module.forward = forward

    def undo() -> None:
        module.__dict__.pop("forward", None)

    return undo
