"""Torch forward hooks for sites, the per-forward position state, and recorders.

Hooks are plain ``register_forward_pre_hook`` / ``register_forward_hook`` registrations (with
kwargs), so the module tree, its classes and parameter names are never touched; each returns a
handle whose ``remove()`` undoes it. The decoder model (the parent of the layer container) gets a
pre-hook that computes the absolute position of every token of the forward from the KV cache
(:class:`ForwardState`) before any block runs; every site shares it.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..positions import Positions, PositionState, Selection, plan_selection

Fn = Callable[[torch.Tensor], torch.Tensor]


class ForwardState(PositionState):
    """Positions of the current forward; masks as torch bool tensors on the model's device."""

    def __init__(self) -> None:
        super().__init__()
        self.device = torch.device("cpu")

    def begin(self, offsets: np.ndarray, length: int, device: torch.device) -> None:  # type: ignore[override]
        super().begin(offsets, length)
        self.device = device

    def device_mask(self, host: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(host.copy()).to(self.device)


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


def position_tracker(module: nn.Module, state: ForwardState) -> Callable:
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
        if state.padding_stack:
            pad = np.broadcast_to(state.padding_stack[-1], (B,))
        else:
            pad = left_padding(bound.get("attention_mask"), B)
        state.begin(past - pad, L, x.device)

    return hook


def attach_tracker(module: nn.Module, state: ForwardState) -> Any:
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


class Recorder:
    """Collects a site's activations at selected positions, as contiguous detached copies.

    Args:
        positions: Which positions to keep.
        reduce: ``None`` keeps positions (B, T, D); ``"mean"`` averages them per row (B, D) in fp32.
    """

    def __init__(self, state: ForwardState, positions: Positions, reduce: str | None):
        self.state, self.positions, self.reduce = state, positions, reduce
        self.chunks: list[torch.Tensor] = []
        self.sum: torch.Tensor | None = None
        self.count = np.zeros(0)

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        host = self.state.host_mask(self.positions)
        if self.reduce == "mean":
            self._accumulate(h, host)
        elif self.positions.kind == "all":
            self.chunks.append(_copy(h))
        else:
            part = _gather(h, plan_selection(host))
            if part is not None:
                self.chunks.append(_copy(part))
        return h

    def _accumulate(self, h: torch.Tensor, host: np.ndarray) -> None:
        w = torch.from_numpy(host.astype(np.float32)[..., None]).to(h.device)
        s = (h.detach().float() * w).sum(dim=1)
        self.sum = s if self.sum is None else self.sum + s
        self.count = host.sum(axis=1) + (self.count if self.count.size else 0)

    def reset(self) -> None:
        self.chunks, self.sum, self.count = [], None, np.zeros(0)

    def result(self) -> torch.Tensor | None:
        if self.reduce == "mean":
            if self.sum is None:
                return None
            n = torch.from_numpy(np.maximum(self.count, 1).astype(np.float32)).to(self.sum.device)
            return self.sum / n[:, None]
        if not self.chunks:
            return None
        if len(self.chunks) > 1:  # one tensor, so the per-forward pieces can be freed
            self.chunks = [torch.cat(self.chunks, dim=1)]
        return self.chunks[0]


def _gather(h: torch.Tensor, sel: Selection) -> torch.Tensor | None:
    def dev(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(h.device)

    if sel.kind == "none":
        return None
    if sel.kind == "range":
        return h[:, sel.start : sel.stop]
    if sel.kind == "columns":
        return h[:, dev(sel.cols)]
    if sel.kind == "per_row":
        idx = dev(sel.idx)[..., None].expand(-1, -1, h.shape[-1])
        return torch.gather(h, 1, idx)
    part = h[:, dev(sel.cols)]
    return torch.where(dev(sel.keep)[..., None], part, torch.zeros((), dtype=part.dtype, device=part.device))


def _copy(x: torch.Tensor) -> torch.Tensor:
    # A slice is a view that keeps its whole source alive; a clone owns just its own bytes.
    return x.detach().clone(memory_format=torch.contiguous_format)
