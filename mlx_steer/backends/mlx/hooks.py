"""Per-instance patching of MLX modules, and the tracker of each forward's positions.

``nn.Module`` has no hooks and Python looks ``__call__`` up on the type, so a patched module's
class is swapped for a cached subclass whose ``__call__`` runs the module's hook entries around
the original. The module's dict (its parameters) is never touched, so parameter names and values
are unchanged while patched. The hook list lives in a ``_``-prefixed attribute: not a parameter.

The root model is patched too: before each forward it reads the KV-cache offset and computes the
absolute position of every token (a :class:`~mlx_steer.engine.positions.PositionState`), which every
site hook then shares.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator
from typing import Any, Callable

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ...engine.positions import PositionState

_ATTR = "_mlx_steer_hooks"
_SUBCLASSES: dict[type, type] = {}


@contextlib.contextmanager
def bypassed(modules: Iterable[nn.Module]) -> Iterator[None]:
    """Run these modules as if unpatched, in this thread only (internal probe forwards).

    Scoped to the modules (one model's) and to the calling thread: another model, or this model
    called from another thread, keeps its hooks meanwhile.
    """
    me = threading.get_ident()
    hooks = [h for h in (m.__dict__.get(_ATTR) for m in modules) if h is not None and me not in h.bypassing]
    for h in hooks:
        h.bypassing.add(me)
    try:
        yield
    finally:
        for h in hooks:
            h.bypassing.discard(me)


def _patched_class(cls: type) -> type:
    sub = _SUBCLASSES.get(cls)
    if sub is None:

        class Patched(cls):
            def __call__(self, *args: Any, **kwargs: Any) -> Any:
                hooks = self.__dict__[_ATTR]
                if hooks.bypassing and threading.get_ident() in hooks.bypassing:
                    return super().__call__(*args, **kwargs)
                return hooks.call(super().__call__, args, kwargs)

        Patched.__name__, Patched.__qualname__ = cls.__name__, cls.__qualname__
        Patched.__module__ = cls.__module__
        sub = _SUBCLASSES[cls] = Patched
    return sub


class _ModuleHooks:
    """The hook entries installed on one module, in installation order."""

    def __init__(self, module: nn.Module):
        self.module, self.original_class = module, type(module)
        self.entries: list[Entry] = []
        self.instead: Callable | None = None  # the newest entry's ``instead``, kept up to date
        self.bypassing: set[int] = set()  # threads running this module as if unpatched (bypassed())

    def update(self) -> None:
        self.instead = next((e.instead for e in reversed(self.entries) if e.instead is not None), None)

    def call(self, call: Callable, args: tuple, kwargs: dict) -> Any:
        for e in self.entries:
            if e.before is not None:
                args = e.before(args, kwargs)
        out = call(*args, **kwargs) if self.instead is None else self.instead(args[0])
        for e in self.entries:
            if e.after is not None:
                out = e.after(out)
        return out


class Entry:
    """One installed hook: ``before(args, kwargs) -> args`` and/or ``after(out) -> out``, or
    ``instead(first_arg) -> out`` run in place of the module (the newest such entry wins)."""

    def __init__(self, *, before: Callable | None = None, after: Callable | None = None,
                 instead: Callable | None = None):
        self.before, self.after, self.instead = before, after, instead


def attach(module: nn.Module, entry: Entry) -> None:
    hooks = module.__dict__.get(_ATTR)
    if hooks is None:
        hooks = _ModuleHooks(module)
        object.__setattr__(module, _ATTR, hooks)
        module.__class__ = _patched_class(type(module))
    hooks.entries.append(entry)
    hooks.update()


def detach(module: nn.Module, entry: Entry) -> None:
    hooks = module.__dict__.get(_ATTR)
    if hooks is None or entry not in hooks.entries:
        return
    hooks.entries.remove(entry)
    hooks.update()
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


def position_tracker(state: PositionState) -> Entry:
    """The root model's entry: set ``state`` from the inputs and the cache offset."""

    def before(args: tuple, kwargs: dict) -> tuple:
        x = args[0] if args else kwargs.get("inputs")
        emb = kwargs.get("input_embeddings")
        if x is not None and x.size:
            B, L = (1, x.shape[0]) if x.ndim == 1 else x.shape[:2]
        elif emb is not None:
            B, L = emb.shape[:2]
        else:
            raise ValueError("the model was called with neither input tokens nor input_embeddings")
        cache = kwargs["cache"] if "cache" in kwargs else (args[1] if len(args) > 1 else None)
        state.begin(cache_offsets(cache, B), L, cache, x if x is not None and x.size else None)
        return args

    return Entry(before=before)
