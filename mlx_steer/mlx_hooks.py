"""Per-instance patching of MLX modules, and the per-forward position state.

``nn.Module`` has no hooks and Python looks ``__call__`` up on the type, so a patched module's
class is swapped for a cached subclass whose ``__call__`` runs the module's hook entries around
the original. The module's dict (its parameters) is never touched, so parameter names and values
are unchanged while patched. The hook list lives in a ``_``-prefixed attribute: not a parameter.

The root model is patched too: before each forward it reads the KV-cache offset and computes the
absolute position of every token (:class:`ForwardState`), which every site hook then shares.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Callable

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .positions import Positions, PositionState, Selection, plan_selection

_ATTR = "_mlx_steer_hooks"
_SUBCLASSES: dict[type, type] = {}
_BYPASS: list[bool] = [False]


@contextlib.contextmanager
def bypassed() -> Iterator[None]:
    """Run patched modules as if unpatched (for internal probe forwards)."""
    previous, _BYPASS[0] = _BYPASS[0], True
    try:
        yield
    finally:
        _BYPASS[0] = previous


def _patched_class(cls: type) -> type:
    sub = _SUBCLASSES.get(cls)
    if sub is None:

        class Patched(cls):  # type: ignore[misc, valid-type]
            def __call__(self, *args: Any, **kwargs: Any) -> Any:
                if _BYPASS[0]:
                    return super().__call__(*args, **kwargs)
                return self.__dict__[_ATTR].call(super().__call__, args, kwargs)

        Patched.__name__, Patched.__qualname__ = cls.__name__, cls.__qualname__
        Patched.__module__ = cls.__module__
        sub = _SUBCLASSES[cls] = Patched
    return sub


class _ModuleHooks:
    """The hook entries installed on one module, in installation order."""

    def __init__(self, module: nn.Module):
        self.module, self.original_class = module, type(module)
        self.entries: list[Entry] = []

    def call(self, call: Callable, args: tuple, kwargs: dict) -> Any:
        for e in self.entries:
            if e.before is not None:
                args = e.before(args, kwargs)
        out = call(*args, **kwargs)
        for e in self.entries:
            if e.after is not None:
                out = e.after(out)
        return out


class Entry:
    """One installed hook: ``before(args, kwargs) -> args`` and/or ``after(out) -> out``."""

    def __init__(self, *, before: Callable | None = None, after: Callable | None = None):
        self.before, self.after = before, after


def attach(module: nn.Module, entry: Entry) -> None:
    hooks = module.__dict__.get(_ATTR)
    if hooks is None:
        hooks = _ModuleHooks(module)
        object.__setattr__(module, _ATTR, hooks)
        module.__class__ = _patched_class(type(module))
    hooks.entries.append(entry)


def detach(module: nn.Module, entry: Entry) -> None:
    hooks = module.__dict__.get(_ATTR)
    if hooks is None or entry not in hooks.entries:
        return
    hooks.entries.remove(entry)
    if not hooks.entries:
        module.__class__ = hooks.original_class
        del module.__dict__[_ATTR]


def is_patched(module: nn.Module) -> bool:
    return _ATTR in module.__dict__


def on_first_arg(fn: Callable[[mx.array], mx.array]) -> Callable[[tuple, dict], tuple]:
    """A ``before`` hook that transforms the module's input (its first positional argument)."""

    def before(args: tuple, kwargs: dict) -> tuple:
        if not args:
            raise ValueError("input hooks need the module's input as its first positional argument")
        return (fn(args[0]),) + tuple(args[1:])

    return before


def on_output(fn: Callable[[mx.array], mx.array]) -> Callable[[Any], Any]:
    """An ``after`` hook on the output (the first element if the module returns a tuple)."""

    def after(out: Any) -> Any:
        if isinstance(out, tuple):
            return (fn(out[0]),) + out[1:]
        return fn(out)

    return after


class ForwardState(PositionState):
    """Positions of the current forward; masks as MLX arrays."""

    def device_mask(self, host: np.ndarray) -> mx.array:
        return mx.array(host)


def cache_offsets(cache: Any, batch: int) -> np.ndarray:
    """Per-row absolute offset of the first token of this forward, from the KV cache."""
    if cache is None:
        return np.zeros(batch, dtype=np.int64)
    for c in cache:
        off = getattr(c, "offset", None)
        if off is None:
            continue
        if isinstance(off, mx.array):  # batch caches: -left_padding + tokens seen, per row
            return np.array(off, dtype=np.int64).reshape(-1)
        return np.full(batch, int(off), dtype=np.int64)
    return np.zeros(batch, dtype=np.int64)


def position_tracker(state: ForwardState) -> Entry:
    """The root model's entry: set ``state`` from the inputs and the cache offset."""

    def before(args: tuple, kwargs: dict) -> tuple:
        x = args[0] if args else kwargs.get("inputs")
        emb = kwargs.get("input_embeddings")
        if x is not None and x.size:
            B, L = (1, x.shape[0]) if x.ndim == 1 else x.shape[:2]
        else:
            B, L = emb.shape[:2]
        cache = kwargs["cache"] if "cache" in kwargs else (args[1] if len(args) > 1 else None)
        state.begin(cache_offsets(cache, B), L)
        return args

    return Entry(before=before)


class Recorder:
    """Collects a site's activations at selected positions, as contiguous copies.

    Args:
        positions: Which positions to keep.
        reduce: ``None`` keeps positions (B, T, D); ``"mean"`` averages them per row (B, D).
    """

    def __init__(self, state: ForwardState, positions: Positions, reduce: str | None):
        self.state, self.positions, self.reduce = state, positions, reduce
        self.chunks: list[mx.array] = []
        self.sum: mx.array | None = None
        self.count = np.zeros(0)
        self._evaluated = 0  # chunks[:_evaluated] were evaluated by flush()

    def __call__(self, h: mx.array) -> mx.array:
        host = self.state.host_mask(self.positions)
        if self.reduce == "mean":
            self._accumulate(h, host)
        elif self.positions.kind == "all":
            self.chunks.append(mx.contiguous(h))
        else:
            part = _gather(h, plan_selection(host))
            if part is not None:
                self.chunks.append(_copy(part))
        return h

    def _accumulate(self, h: mx.array, host: np.ndarray) -> None:
        w = mx.array(host.astype(np.float32))[..., None]
        s = (h.astype(mx.float32) * w).sum(axis=1)
        self.sum = s if self.sum is None else self.sum + s
        self.count = host.sum(axis=1) + (self.count if self.count.size else 0)

    def reset(self) -> None:
        self.chunks, self.sum, self.count, self._evaluated = [], None, np.zeros(0), 0

    def set_result(self, value: mx.array) -> None:
        """Replace what was collected (used when a batch was run row by row)."""
        self.reset()
        if self.reduce == "mean":
            self.sum, self.count = value, np.ones(value.shape[0])
        else:
            self.chunks = [value]

    def pending(self) -> list[mx.array]:
        """Recorded pieces to evaluate at a loop boundary. The newest piece is left alone: in
        mlx-lm's loop it belongs to the step being computed asynchronously right now."""
        out = self.chunks[self._evaluated : -1]
        self._evaluated = max(self._evaluated, len(self.chunks) - 1)
        return out

    def result(self) -> mx.array | None:
        if self.reduce == "mean":
            if self.sum is None:
                return None
            return self.sum / mx.array(np.maximum(self.count, 1).astype(np.float32))[:, None]
        if not self.chunks:
            return None
        if len(self.chunks) > 1:  # one array, so the per-forward pieces can be freed
            self.chunks, self._evaluated = [mx.concatenate(self.chunks, axis=1)], 0
        return self.chunks[0]


def _gather(h: mx.array, sel: Selection) -> mx.array | None:
    if sel.kind == "none":
        return None
    if sel.kind == "range":
        return h[:, sel.start : sel.stop]
    if sel.kind == "columns":
        return h[:, mx.array(sel.cols)]
    if sel.kind == "per_row":
        return mx.take_along_axis(h, mx.array(sel.idx)[..., None], axis=1)
    part = h[:, mx.array(sel.cols)]
    return mx.where(mx.array(sel.keep)[..., None], part, mx.zeros_like(part))


def _copy(x: mx.array) -> mx.array:
    # A slice, even a contiguous one, keeps its whole source buffer alive once evaluated; an
    # explicit copy owns just its own bytes.
    return mx.contiguous(x)
