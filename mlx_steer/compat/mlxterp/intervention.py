"""mlxterp's interventions: ``fn(activation) -> activation`` callables that carry the mlx_steer
interventions doing the same, so a trace steers exactly like mlx_steer does (``iv.add_vector(v)``
installs ``mlx_steer.engine.interventions.add_vector(v)``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace

import mlx.core as mx
import numpy as np

from ...engine import interventions as _iv
from ...backends.mlx.arrays import XP
from ...engine.ops import Op, compile_op


@dataclass(frozen=True)
class Intervention:
    """An mlxterp-style intervention: ``fn(activation) -> activation``, carrying the mlx_steer
    interventions that do the same inside a trace.

    Attributes:
        native: mlx_steer interventions, applied in order.
        name: What made it (``add_vector``, ``scale``...), for messages.
    """

    native: tuple[_iv.Intervention, ...]
    name: str
    _compiled: dict[int, list[Op]] = field(default_factory=dict, compare=False, repr=False)

    def __repr__(self) -> str:
        return f"Intervention({self.name}: {', '.join(type(n).__name__ for n in self.native)})"

    def __call__(self, x: mx.array) -> mx.array:
        """Apply to an array directly (mlxterp interventions are plain functions): every
        position of ``x`` is selected."""
        for op in self._ops(x.shape[-1]):
            x = op.apply(x, None)  # type: ignore[arg-type]  # no positions: these ops do not read them
        return x

    def _ops(self, dim: int) -> list[Op]:
        """The compiled ops for activations of size ``dim``, compiled once."""
        ops = self._compiled.get(dim)
        if ops is None:
            ops = self._compiled[dim] = [compile_op(s, xp=XP, site=self.name, dim=dim, n_heads=None)
                                         for s in self.native]
        return ops


def _numpy(value: object) -> np.ndarray:
    if isinstance(value, mx.array):
        return np.array(value.astype(mx.float32))
    return np.asarray(value, dtype=np.float32)


def _flat(v: np.ndarray) -> np.ndarray | None:
    """``v`` as (D,) when it is one vector ((D,), (1, D), (1, 1, D)); None for other shapes."""
    return v.reshape(-1) if v.ndim >= 1 and v.size == v.shape[-1] else None


def _broadcast(name: str, fn: Callable[[mx.array], mx.array]) -> Intervention:
    return Intervention((_iv.custom(fn),), name)


def add_vector(vector: object) -> Intervention:
    """Add ``vector`` (a (D,) steering vector, or any array broadcastable to the activation)."""
    v = _numpy(vector)
    flat = _flat(v)
    if flat is not None:
        return Intervention((_iv.add_vector(flat),), "add_vector")
    arr = mx.array(v)
    return _broadcast("add_vector", lambda x: x + arr.astype(x.dtype))


def scale(factor: float) -> Intervention:
    """Multiply the activation by ``factor``."""
    return Intervention((_iv.scale(factor),), "scale")


def replace_with(value: object) -> Intervention:
    """Replace the activation by a scalar, a (D,) vector, or an array broadcastable to it."""
    if np.isscalar(value):
        return Intervention((_iv.set(float(value)),), "replace_with")  # type: ignore[arg-type]
    v = _numpy(value)
    flat = _flat(v)
    if flat is not None:
        return Intervention((_iv.set(flat),), "replace_with")
    arr = mx.array(v)
    return _broadcast("replace_with", lambda x: mx.broadcast_to(arr.astype(x.dtype), x.shape))


zero_out = Intervention((_iv.zero(),), "zero_out")
"""Zero the activation (used bare, as in mlxterp: ``{"layers.4": iv.zero_out}``)."""


def clamp(min_val: float | None = None, max_val: float | None = None) -> Intervention:
    """Clamp the activation to ``[min_val, max_val]`` (either bound may be None)."""
    if min_val is None and max_val is None:
        raise ValueError("clamp needs min_val, max_val or both")

    def fn(x: mx.array) -> mx.array:
        return mx.clip(x, min_val, max_val)

    return _broadcast("clamp", fn)


def noise(std: float = 0.1) -> Intervention:
    """Add Gaussian noise of standard deviation ``std`` (seed with ``mx.random.seed``)."""
    return _broadcast("noise", lambda x: x + (mx.random.normal(x.shape) * std).astype(x.dtype))


def as_native(value: object, *, site: str) -> list[_iv.Intervention]:
    """mlx_steer interventions for one ``interventions=`` value."""
    if isinstance(value, Intervention):
        return list(value.native)
    if isinstance(value, _iv.Intervention):
        return [value]
    if isinstance(value, (list, tuple)):
        return [n for item in value for n in as_native(item, site=site)]
    if callable(value):
        return [_iv.custom(value)]
    raise ValueError(
        f"intervention for {site!r} must be a callable (e.g. interventions.add_vector(v), "
        f"interventions.scale(0.5), interventions.zero_out), got {type(value).__name__}"
    )


class InterventionComposer:
    """Chain interventions: ``compose().add(scale(0.8)).add(add_vector(v)).build()``."""

    def __init__(self) -> None:
        self._parts: list[object] = []

    def add(self, fn: Callable[[mx.array], mx.array]) -> InterventionComposer:
        self._parts.append(fn)
        return self

    def build(self) -> Intervention:
        """One intervention applying the added ones in order."""
        return Intervention(tuple(as_native(self._parts, site="compose")), "compose")


def compose() -> InterventionComposer:
    """Start a chain of interventions (``compose().add(a).add(b).build()``)."""
    return InterventionComposer()


interventions = SimpleNamespace(
    add_vector=add_vector, scale=scale, replace_with=replace_with, zero_out=zero_out, clamp=clamp,
    noise=noise, compose=compose, InterventionComposer=InterventionComposer,
)
"""mlxterp's ``interventions`` module: ``from mlx_steer.compat.mlxterp import interventions as iv``."""

