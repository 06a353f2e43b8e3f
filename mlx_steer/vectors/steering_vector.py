"""SteeringVector: steering directions per site, plus the metadata that makes them portable.

A frozen value object holding read-only numpy arrays keyed by resolved module path
(``model.layers.8``); every site shares one hook point. Arithmetic is per site
(``2 * happy - sad``, ``v / 4``, ``-v``) and transforms return new vectors (``normalized``,
``orthogonalized``, ``to``, ``select``, ``with_sites``, ``replace``). Numpy only.

    v = SteeringVector({"model.layers.8": d8, "model.layers.9": d9}, method="mean_diff")
    (v.normalized() * 4).to_interventions(positions="last")
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeGuard

import numpy as np

from ..engine import interventions as iv
from ..engine.host_array import host_array
from ..engine.paths import HOOK_POINTS
from .calibration import Calibration

FLOAT_DTYPES = ("float16", "float32", "float64")
_COMMON = ("model_id", "method", "read_positions")  # kept by + and - only when both sides agree


def _library_version() -> str:
    """``mlx_steer.__version__``, the one version source (the distribution is mlx-steer-lab; the name
    mlx-steer on the package index is someone else's)."""
    from .. import __version__

    return __version__


@dataclass(frozen=True, eq=False)
class SteeringVector:
    """Steering directions per site, with metadata.

    Args:
        directions: Resolved site path (``"model.layers.8"``) -> (D,) direction, or a front-aligned
            (n, D) tensor added at absolute positions 0..n-1 (ActAdd). Stored as read-only copies in
            ``dtype``, in the given order.
        hook_point: ``"output"`` or ``"input"``, shared by every site.
        model_id: The model the vector was made for (informational).
        hidden_size: D; inferred from the arrays when None.
        method: How it was made, e.g. ``"mean_diff"``, ``"pca"``, ``"probe"``, ``"actadd"``.
        read_positions: Which positions were read to make it, e.g. ``"last"``.
        dtype: Array dtype, one of float16, float32, float64; the arrays are cast to it.
        created_by: The mlx-steer version that made it.
        extra: Free-form string metadata, saved with the vector.
        calibration: Coefficients per site reaching a KL budget (:mod:`mlx_steer.vectors.calibration`),
            or None; kept (rescaled by positive scaling) by ``to select with_sites * / normalized
            scaled_per_site``, dropped by ``+ - neg orthogonalized``.

    Raises:
        ValueError: no sites, a path that is not a non-empty string without ``:``, arrays that
            are not 1-D/2-D, non-finite values, different D across sites, ``hidden_size`` not
            matching D, unknown hook point or dtype, non-string metadata, a calibration of a site the vector lacks.
    """

    directions: Mapping[str, np.ndarray]
    hook_point: str = "output"
    model_id: str | None = None
    hidden_size: int | None = None
    method: str | None = None
    read_positions: str | None = None
    dtype: str = "float32"
    created_by: str = field(default_factory=_library_version)
    extra: Mapping[str, str] = field(default_factory=dict)
    calibration: Calibration | None = None

    __hash__ = None  # type: ignore[assignment]  # holds arrays; compare with ==
    __array_ufunc__ = None  # numpy scalars defer to our __rmul__ instead of broadcasting

    def __post_init__(self) -> None:
        if self.hook_point not in HOOK_POINTS:
            raise ValueError(f"unknown hook point {self.hook_point!r}; valid: {', '.join(HOOK_POINTS)}")
        dtype = _float_dtype(self.dtype)
        if not isinstance(self.directions, Mapping) or not self.directions:
            got = f"{len(self.directions)} sites" if isinstance(self.directions, Mapping) else type(self.directions).__name__
            raise ValueError(f"directions must be a non-empty mapping {{site path: array}}, got {got}")
        dirs = {_check_path(s): _as_array(v, s, dtype) for s, v in self.directions.items()}
        widths = {s: a.shape[-1] for s, a in dirs.items()}
        if len(set(widths.values())) > 1:
            listed = ", ".join(f"{s}={w}" for s, w in widths.items())
            raise ValueError(f"directions have different sizes (last dim): {listed}; every site needs the same D")
        D = next(iter(widths.values()))
        hidden = D if self.hidden_size is None else self.hidden_size
        if not _is_int(hidden) or hidden != D:
            raise ValueError(f"hidden_size {self.hidden_size!r} does not match the directions' width {D}")
        for name in (*_COMMON, "created_by"):
            value = getattr(self, name)
            if not (isinstance(value, str) or (value is None and name != "created_by")):
                raise ValueError(f"{name} must be a string{'' if name == 'created_by' else ' or None'}, got {value!r}")
        if not isinstance(self.extra, Mapping):
            raise ValueError(f"extra must be a mapping of strings, got {type(self.extra).__name__}")
        bad = [f"{k!r}: {v!r}" for k, v in self.extra.items() if not (isinstance(k, str) and k and isinstance(v, str))]
        if bad:
            raise ValueError(f"extra must map non-empty strings to strings; bad entries: {', '.join(bad)}")
        if self.calibration is not None:
            if not isinstance(self.calibration, Calibration):
                raise ValueError(f"calibration must be a Calibration or None, got {type(self.calibration).__name__}")
            stray = [s for s in self.calibration.sites if s not in dirs]
            if stray:
                raise ValueError(f"calibration has coefficients for sites the vector lacks: {', '.join(stray)}; "
                                 f"the vector has: {', '.join(dirs)}")
        object.__setattr__(self, "directions", MappingProxyType(dirs))
        object.__setattr__(self, "hidden_size", int(hidden))
        object.__setattr__(self, "dtype", dtype)
        object.__setattr__(self, "extra", MappingProxyType(dict(self.extra)))

    # -- container -----------------------------------------------------------------------------
    @property
    def sites(self) -> tuple[str, ...]:
        """Site paths, in insertion order."""
        return tuple(self.directions)

    def __getitem__(self, site: str) -> np.ndarray:
        if site not in self.directions:
            raise KeyError(f"no direction at {site!r}; sites: {', '.join(self.sites)}")
        return self.directions[site]

    def __len__(self) -> int:
        return len(self.directions)

    def __iter__(self) -> Iterator[str]:
        return iter(self.directions)

    def __contains__(self, site: object) -> bool:
        return site in self.directions

    # -- arithmetic ----------------------------------------------------------------------------
    def __add__(self, other: object) -> SteeringVector:
        return self._combine(other, np.add, "add") if isinstance(other, SteeringVector) else NotImplemented

    def __sub__(self, other: object) -> SteeringVector:
        return self._combine(other, np.subtract, "subtract") if isinstance(other, SteeringVector) else NotImplemented

    def __mul__(self, factor: object) -> SteeringVector:
        if not _is_real(factor):
            return NotImplemented
        f = _finite(factor, "multiplier")
        return self._rescale(self._map(lambda _, a: a * f), dict.fromkeys(self.sites, f))

    __rmul__ = __mul__

    def __truediv__(self, divisor: object) -> SteeringVector:
        if not _is_real(divisor):
            return NotImplemented
        d = _finite(divisor, "divisor")
        if d == 0.0:
            raise ValueError("cannot divide a SteeringVector by 0")
        return self._rescale(self._map(lambda _, a: a / d), dict.fromkeys(self.sites, 1.0 / d))

    def __neg__(self) -> SteeringVector:
        return self._map(lambda _, a: -a)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SteeringVector):
            return NotImplemented
        return (
            self._metadata() == other._metadata()
            and self.directions.keys() == other.directions.keys()
            and all(np.array_equal(a, other.directions[s]) for s, a in self.directions.items())
        )

    # -- transforms ----------------------------------------------------------------------------
    def norms(self) -> dict[str, float]:
        """L2 norm per site (Frobenius norm for an (n, D) tensor), in float32 or wider."""
        return {s: float(np.linalg.norm(a.astype(np.promote_types(a.dtype, np.float32)))) for s, a in self.directions.items()}

    def normalized(self) -> SteeringVector:
        """The vector with unit norm at every site (an (n, D) tensor is scaled as a whole).

        Raises:
            ValueError: some site's direction is all zeros.
        """
        norms = self.norms()
        zero = [s for s, n in norms.items() if n == 0.0]
        if zero:
            raise ValueError(f"cannot normalize zero directions at: {', '.join(zero)}")
        return self._rescale(self._map(lambda s, a: a.astype(np.float64) / norms[s]),
                             {s: 1.0 / n for s, n in norms.items()})

    def orthogonalized(self, other: SteeringVector | np.ndarray) -> SteeringVector:
        """Remove from each site its projection onto ``other``'s direction: ``v - (v·u / u·u) u``.

        Args:
            other: A SteeringVector with a (D,) direction at every site of this one (extra sites
                are ignored), or one (D,) array used at every site. Each row of an (n, D) tensor is
                orthogonalized on its own.

        Returns:
            A vector with the same sites whose directions are orthogonal to ``other``'s.

        Raises:
            ValueError: ``other`` lacks a site, is not (D,), or is zero at a site.
        """
        if isinstance(other, SteeringVector):
            missing = [s for s in self.sites if s not in other.directions]
            if missing:
                raise ValueError(f"other has no direction at: {', '.join(missing)}; it has: {', '.join(other.sites)}")
            against = {s: other.directions[s] for s in self.sites}
        else:
            u = iv.as_vector(other, what="direction to orthogonalize against")
            against = dict.fromkeys(self.sites, u)
        for s, u in against.items():
            if u.shape != (self.hidden_size,):
                raise ValueError(f"direction to orthogonalize against at {s!r} must have shape ({self.hidden_size},), got {u.shape}")
            if not np.any(u):
                raise ValueError(f"cannot orthogonalize against a zero direction at {s!r}")

        def reject(site: str, a: np.ndarray) -> np.ndarray:
            v, u = a.astype(np.float64), against[site].astype(np.float64)
            return v - np.multiply.outer(v @ u / (u @ u), u)

        return self._map(reject)

    def replace(self, **changes: Any) -> SteeringVector:
        """A copy with the given fields changed (validated like a new vector)."""
        return dataclasses.replace(self, **changes)

    def to(self, dtype: str | np.dtype) -> SteeringVector:
        """The vector with every array cast to ``dtype`` (float16, float32 or float64)."""
        return self.replace(dtype=_float_dtype(dtype))

    def select(self, sites: Iterable[str] | str) -> SteeringVector:
        """The vector restricted to ``sites``, in the order given.

        Raises:
            ValueError: no sites given, or a site this vector does not have.
        """
        wanted = [sites] if isinstance(sites, str) else list(sites)
        if not wanted:
            raise ValueError(f"select() needs at least one site; this vector has: {', '.join(self.sites)}")
        self._check_known(wanted)
        cal = self.calibration.restricted(tuple(wanted)) if self.calibration is not None else None
        return self.replace(directions={s: self.directions[s] for s in wanted}, calibration=cal)

    def with_sites(self, mapping: Mapping[str, str]) -> SteeringVector:
        """The vector with sites renamed ``old -> new``; sites not in ``mapping`` keep their path.

        Raises:
            ValueError: an old path this vector does not have, or two sites renamed to one path.
        """
        self._check_known(mapping)
        renamed = [mapping.get(s, s) for s in self.sites]
        clashes = sorted(p for p, n in Counter(renamed).items() if n > 1)
        if clashes:
            raise ValueError(f"renaming would put several sites at: {', '.join(clashes)}")
        cal = self.calibration.renamed(mapping) if self.calibration is not None else None
        return self.replace(directions=dict(zip(renamed, self.directions.values())), calibration=cal)

    def scaled_per_site(self, weights: Mapping[str, float]) -> SteeringVector:
        """The vector with each site's direction multiplied by ``weights[site]`` (1 where absent).

        Raises:
            ValueError: a weight for a site this vector does not have, or a non-finite weight.
        """
        self._check_known(weights)
        w = {s: _finite(v, f"weight for {s!r}") for s, v in weights.items()}
        return self._rescale(self._map(lambda s, a: a * w[s] if s in w else a), w)

    def to_interventions(
        self, *, scale: float = 1.0, positions: object = "all", weights: Mapping[str, float] | None = None
    ) -> dict[str, iv.AddVector]:
        """``{site key: add_vector(direction, scale, positions)}`` for a model's ``interventions=``.

        Args:
            scale: Multiplier for every site.
            positions: Position selector; an (n, D) tensor sets its own positions, so it must
                stay ``"all"`` for one.
            weights: Optional per-site multipliers on top of ``scale`` (1 where absent).

        Returns:
            Keys carry the hook point (``model.layers.8`` or ``model.layers.8:input``).

        Raises:
            ValueError: a weight for a site this vector does not have, or a bad scale/positions.
        """
        weights = weights or {}
        self._check_known(weights)
        base = _finite(scale, "scale")
        per_site = {s: base * _finite(weights.get(s, 1.0), f"weight for {s!r}") for s in self.sites}
        suffix = "" if self.hook_point == "output" else f":{self.hook_point}"
        return {
            f"{s}{suffix}": iv.add_vector(a, scale=per_site[s], positions=positions) for s, a in self.directions.items()
        }

    # -- internals -----------------------------------------------------------------------------
    def _map(self, fn: Callable[[str, np.ndarray], np.ndarray]) -> SteeringVector:
        """A vector with every array replaced by ``fn(site, array)``, cast back to this dtype (its
        calibration dropped: the new directions are not the calibrated ones)."""
        return self.replace(directions={s: fn(s, a).astype(self.dtype) for s, a in self.directions.items()},
                            calibration=None)

    def _rescale(self, out: SteeringVector, factors: Mapping[str, float]) -> SteeringVector:
        """``out`` (site ``s`` times ``factors[s]``) with the calibration rescaled if every factor is positive."""
        cal = self.calibration
        if cal is None or any(factors.get(s, 1.0) <= 0 for s in cal.sites):
            return out
        return out.replace(calibration=cal.rescaled(factors))

    def _combine(self, other: SteeringVector, op: np.ufunc, verb: str) -> SteeringVector:
        left, right = set(self.sites), set(other.sites)
        if left != right:
            only_l, only_r = sorted(left - right), sorted(right - left)
            raise ValueError(
                f"cannot {verb} vectors that differ in sites: only in the left: {', '.join(only_l) or '-'}; "
                f"only in the right: {', '.join(only_r) or '-'}"
            )
        if self.hook_point != other.hook_point:
            raise ValueError(f"cannot {verb} vectors at different hook points: {self.hook_point!r} and {other.hook_point!r}")
        shapes = [f"{s}: {self[s].shape} vs {other[s].shape}" for s in self.sites if self[s].shape != other[s].shape]
        if shapes:
            raise ValueError(f"cannot {verb} vectors with different shapes at {'; '.join(shapes)}")
        dtype = np.result_type(self.dtype, other.dtype).name
        agreed = {k: getattr(self, k) if getattr(self, k) == getattr(other, k) else None for k in _COMMON}
        return SteeringVector(
            directions={s: op(a.astype(dtype), other[s].astype(dtype)) for s, a in self.directions.items()},
            hook_point=self.hook_point,
            dtype=dtype,
            created_by=self.created_by if self.created_by == other.created_by else _library_version(),
            extra={k: v for k, v in self.extra.items() if other.extra.get(k) == v},
            **agreed,
        )

    def _check_known(self, sites: Iterable[str]) -> None:
        unknown = [repr(s) for s in sites if s not in self.directions]
        if unknown:
            raise ValueError(f"no direction at {', '.join(unknown)}; this vector has: {', '.join(self.sites)}")

    def _metadata(self) -> dict[str, Any]:
        meta = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "directions"}
        meta["extra"] = dict(self.extra)
        return meta

    def __reduce__(self) -> tuple:
        # mappingproxy fields do not pickle; rebuild from plain dicts
        state = self._metadata() | {"directions": dict(self.directions)}
        return functools.partial(SteeringVector, **state), ()

    def __repr__(self) -> str:
        shown = ", ".join(self.sites[:3]) + (f", ... ({len(self)} sites)" if len(self) > 3 else "")
        return (
            f"SteeringVector([{shown}], hidden_size={self.hidden_size}, hook_point={self.hook_point!r}, "
            f"method={self.method!r}, dtype={self.dtype!r})"
        )


def _float_dtype(dtype: object) -> str:
    try:
        name = np.dtype(dtype).name  # type: ignore[call-overload]
    except TypeError:
        name = None
    if name not in FLOAT_DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; valid: {', '.join(FLOAT_DTYPES)}")
    return name


def _check_path(site: object) -> str:
    if not isinstance(site, str) or not site:
        raise ValueError(f"site paths must be non-empty strings, got {site!r}")
    if ":" in site:
        raise ValueError(f"site path {site!r} carries a hook point; store the bare path and set hook_point")
    return site


def _as_array(value: object, site: str, dtype: str) -> np.ndarray:
    """A read-only ``dtype`` copy of ``value`` (numpy, list, mlx or torch), checked 1-D/2-D and finite."""
    arr = host_array(value, what=f"direction at {site!r}", dtype=dtype)  # overflow shows as inf, reported below
    if arr.ndim not in (1, 2) or arr.size == 0:
        raise ValueError(f"direction at {site!r} must have shape (D,) or (n, D) with D, n > 0; got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(f"direction at {site!r} has {bad} non-finite values (NaN or inf) as {dtype}; steering needs finite values")
    arr.setflags(write=False)
    return arr


def _is_int(x: object) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_real(x: object) -> TypeGuard[numbers.Real]:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _finite(x: object, what: str) -> float:
    if not _is_real(x) or not np.isfinite(float(x)):
        raise ValueError(f"{what} must be a finite number, got {x!r}")
    return float(x)
