"""Interventions: what to do to the activation at a site. Backend-neutral value objects.

Each constructor validates its arguments (finite vectors, sane scalars) and returns a frozen
dataclass holding numpy arrays; a backend compiles it into an array op at install time, after
checking the vector size against the site. Several interventions on one site apply in order.

    from mlx_steer import interventions as iv
    {"layers.4": iv.add_vector(v, scale=4.0, positions="last"),
     "layers.6.self_attn.o_proj:input": iv.ablate_heads([0, 3])}
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from .conditions import Rule, condition
from .host_array import as_vector, host_array
from .positions import Positions, as_positions


def _finite_scalar(value: object, what: str) -> float:
    if isinstance(value, (str, bytes, bool, np.bool_, complex, np.complexfloating)):
        raise TypeError(f"{what} must be a real number, got {type(value).__name__} {value!r}")
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{what} must be a real number, got {type(value).__name__} {value!r}") from exc
    if not np.isfinite(x):
        raise ValueError(f"{what} must be finite, got {value!r}")
    return x


@dataclass(frozen=True)
class Intervention:
    """Base: every intervention acts on the selected ``positions`` only, and, when ``rows`` is
    set, only on the batch rows whose key is in it (see :meth:`for_rows`)."""

    positions: Positions = field(default_factory=Positions)
    rows: frozenset[int] | None = None
    condition: Rule | None = None  # acts on a row only where this holds for its prompt (see when)

    @property
    def is_noop(self) -> bool:
        return False

    def for_rows(self, *rows: int) -> Intervention:
        """This intervention acting only on the given batch rows.

        A row is named by its key: the prompt's index in ``run``/``batch_generate``, the
        sequence's uid in continuous batching. Other rows pass through bit-identical.

        Raises:
            ValueError: no rows, or a row that is not a non-negative int.
        """
        keys = rows[0] if len(rows) == 1 and isinstance(rows[0], (list, tuple, range, AbstractSet)) else rows
        if not keys or any(isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 0 for r in keys):
            raise ValueError(f"rows must be non-negative ints (batch row keys), got {rows!r}")
        wanted = frozenset(int(r) for r in keys)
        if self.rows is not None and not wanted <= self.rows:
            raise ValueError(f"intervention is already scoped to rows {sorted(self.rows)}; cannot widen to {sorted(wanted)}")
        return replace(self, rows=wanted)

    def when(self, rule: Rule) -> Intervention:
        """This intervention acting on a row only where ``rule`` (a :func:`condition`, or conditions
        combined with ``&``, ``|``, ``~``) holds for that row's prompt: once the prompt has been read,
        so on generated tokens (CAST, see :mod:`mlx_steer.engine.conditions`).

        Raises:
            ValueError: ``rule`` is not a condition, or this intervention is gated already.
        """
        if not isinstance(rule, Rule):
            raise ValueError(f"when() takes a condition (mlx_steer.interventions.condition(...)), got "
                             f"{type(rule).__name__}")
        if self.condition is not None:
            raise ValueError("intervention is gated by a condition already; combine conditions with & | ~ instead")
        return replace(self, condition=rule)


@dataclass(frozen=True, kw_only=True)
class AddVector(Intervention):
    """h += scale * vector, or, for a front-aligned (n, D) tensor, h[p] += scale * vector[p] for p < n."""

    vector: np.ndarray
    scale: float = 1.0

    @property
    def front_aligned(self) -> bool:
        return self.vector.ndim == 2

    @property
    def is_noop(self) -> bool:
        return self.scale == 0.0


@dataclass(frozen=True)
class Scale(Intervention):
    factor: float = 1.0

    @property
    def is_noop(self) -> bool:
        return self.factor == 1.0


@dataclass(frozen=True, kw_only=True)
class Set(Intervention):
    """Replace the activation by ``value`` (a (D,) vector or a scalar broadcast to all dims)."""

    value: np.ndarray


@dataclass(frozen=True)
class AblateHeads(Intervention):
    """Zero the given heads' slices of an attention output projection's input (B, L, H*hd)."""

    heads: tuple[int, ...] = ()


@dataclass(frozen=True, kw_only=True)
class ProjectOut(Intervention):
    """Directional ablation: h -= (h . u) u for the unit direction u."""

    direction: np.ndarray


@dataclass(frozen=True, kw_only=True)
class Cap(Intervention):
    """The projection on the unit direction u limited to [low, high]: h += (clip(h . u) - h . u) u."""

    direction: np.ndarray
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True, kw_only=True)
class FeatureClamp(Intervention):
    """One sparse-autoencoder feature set to ``value``, the SAE's reconstruction error kept:
    ``h += (value - f(h)) * decoder``, with ``f(h)`` the feature's activation (see
    :meth:`mlx_steer.sae.SparseAutoencoder.clamp`)."""

    encoder: np.ndarray  # (D,): the feature's column of W_enc
    bias: float  # its b_enc entry
    decoder: np.ndarray  # (D,): its row of W_dec
    value: float
    input_shift: np.ndarray | None = None  # b_dec, subtracted before encoding
    threshold: float | None = None  # JumpReLU
    topk: tuple[np.ndarray, np.ndarray, int] | None = None  # (W_enc, b_enc, k) of a TopK SAE


@dataclass(frozen=True, kw_only=True)
class Custom(Intervention):
    """``fn(h) -> h`` on the backend's array type; same shape and dtype required."""

    fn: Callable


def add_vector(vector: object, *, scale: float = 1.0, positions: object = "all") -> AddVector:
    """Add ``scale * vector`` at the selected positions.

    Args:
        vector: (D,) direction, or a front-aligned (n, D) tensor added at absolute positions 0..n-1
            (ActAdd); a tensor ignores ``positions``.
        scale: Multiplier (a real number; not bool or str); 0 makes the intervention a no-op.
        positions: Position selector (see :func:`mlx_steer.engine.positions.as_positions`).

    Raises:
        TypeError: a complex/bool/text vector or a scale that is not a real number.
        ValueError: a bad shape, non-finite values, or ``scale * vector`` overflowing float32.
    """
    vec = as_vector(vector, what="steering vector", ndim=(1, 2))
    factor = _finite_scalar(scale, "scale")
    with np.errstate(over="ignore", invalid="ignore"):
        scaled = vec * np.float32(factor) if abs(factor) <= np.finfo(np.float32).max else None
    if scaled is None or not np.all(np.isfinite(scaled)):
        peak = float(np.abs(vec).max())
        raise ValueError(f"scale {factor:g} times the vector (max |value| {peak:.4g}) overflows float32 to inf; "
                         f"steering needs |scale * vector| below {np.finfo(np.float32).max:.3g}")
    pos = as_positions(positions)
    if vec.ndim == 2 and pos.kind != "all":
        raise ValueError(
            f"a front-aligned (n, D) tensor sets its own positions 0..{vec.shape[0] - 1}; "
            f"leave positions='all' (got {positions!r})"
        )
    return AddVector(positions=pos, vector=vec, scale=factor)


def scale(factor: float, *, positions: object = "all") -> Scale:
    """Multiply the activation by ``factor``."""
    return Scale(positions=as_positions(positions), factor=_finite_scalar(factor, "scale factor"))


def set(value: object, *, positions: object = "all") -> Set:  # noqa: A001 - the verb users expect
    """Replace the activation by ``value`` (scalar or (D,) vector)."""
    arr = as_vector(np.atleast_1d(np.asarray(value, dtype=np.float32)) if np.isscalar(value) else value,
                    what="set value")
    return Set(positions=as_positions(positions), value=arr)


def zero(*, positions: object = "all") -> Set:
    """Zero the activation."""
    return set(0.0, positions=positions)


def mean_ablate(mean: object, *, positions: object = "all") -> Set:
    """Replace the activation by a (D,) mean, e.g. over calibration prompts."""
    return Set(positions=as_positions(positions), value=as_vector(mean, what="mean"))


def ablate_heads(heads: int | list[int] | tuple[int, ...], *, positions: object = "all") -> AblateHeads:
    """Zero attention heads; install on an output projection's input (``...o_proj:input``)."""
    hs = [heads] if isinstance(heads, (int, np.integer)) else list(heads)
    if not hs or any(isinstance(h, bool) or not isinstance(h, (int, np.integer)) or h < 0 for h in hs):
        raise ValueError(f"heads must be non-negative ints, got {heads!r}")
    return AblateHeads(positions=as_positions(positions), heads=tuple(sorted({int(h) for h in hs})))


def project_out(direction: object, *, positions: object = "all") -> ProjectOut:
    """Remove the component along ``direction`` (normalized here)."""
    d = as_vector(direction, what="direction").astype(np.float64)
    norm = float(np.linalg.norm(d))
    if norm == 0.0:
        raise ValueError("direction has zero norm; project_out needs a non-zero direction")
    unit = (d / norm).astype(np.float32)
    unit.setflags(write=False)
    return ProjectOut(positions=as_positions(positions), direction=unit)


def cap(direction: object, *, low: float | None = None, high: float | None = None,
        positions: object = "all") -> Cap:
    """Limit the activation's projection on ``direction`` (normalized here) to ``[low, high]``
    (either bound may be None: a one-sided clamp); other directions are untouched.

    Raises:
        ValueError: no bound, non-finite bounds, ``low > high``, or a zero direction.
    """
    d = as_vector(direction, what="direction").astype(np.float64)
    norm = float(np.linalg.norm(d))
    if norm == 0.0:
        raise ValueError("direction has zero norm; cap needs a non-zero direction")
    if low is None and high is None:
        raise ValueError("cap needs low=, high= or both (the range the projection is limited to)")
    lo = None if low is None else _finite_scalar(low, "cap low")
    hi = None if high is None else _finite_scalar(high, "cap high")
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"cap low {lo} is above high {hi}")
    unit = (d / norm).astype(np.float32)
    unit.setflags(write=False)
    return Cap(positions=as_positions(positions), direction=unit, low=lo, high=hi)


def custom(fn: Callable, *, positions: object = "all") -> Custom:
    """Apply ``fn(h) -> h`` (backend arrays, shape (B, L, D)) at the selected positions."""
    if not callable(fn):
        raise ValueError(f"custom intervention needs a callable, got {fn!r}")
    return Custom(positions=as_positions(positions), fn=fn)


def as_intervention_list(value: object, *, site: str) -> list[Intervention]:
    """Normalize one dict value: an intervention, a callable, or a list of them."""
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    out: list[Intervention] = []
    for item in items:
        if isinstance(item, Intervention):
            out.append(item)
        elif callable(item):
            out.append(custom(item))
        else:
            raise ValueError(
                f"intervention for site {site!r} must be made by mlx_steer.interventions "
                f"(add_vector, scale, set, zero, mean_ablate, ablate_heads, project_out, cap, custom) "
                f"or be a callable, got {type(item).__name__}"
            )
    return out
