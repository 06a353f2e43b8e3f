"""Comparing directions: cosines, the dominant direction of a stack, projections,
orthogonalization, and a vector's size relative to the residual stream (numpy only).

Computed in float64. Vectors come back float32 (the steering dtype); scores come back float64.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from numpy.typing import ArrayLike

from ..engine.host_array import host_array

__all__ = ["cosine", "cosine_matrix", "norm_ratios", "orthogonalize", "project", "top_singular_direction"]


def cosine_matrix(vectors: ArrayLike) -> np.ndarray:
    """Pairwise cosine similarities of a stack of vectors.

    Args:
        vectors: (K, D) stack, no zero rows.

    Returns:
        float64 (K, K) symmetric matrix with values in [-1, 1].

    Raises:
        ValueError: not a non-empty 2-D array, non-finite values, or zero rows.
    """
    v = _stack(vectors, "vectors")
    u = v / _nonzero_norms(v, "vectors")[:, None]
    return np.clip(u @ u.T, -1.0, 1.0)


def cosine(a: ArrayLike, b: ArrayLike) -> float:
    """Cosine similarity of two (D,) vectors.

    Raises:
        ValueError: not 1-D, different sizes, non-finite values, or a zero vector.
    """
    x, y = _vector(a, "a"), _vector(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"a {x.shape} and b {y.shape} have different sizes")
    nx, ny = np.linalg.norm(x), np.linalg.norm(y)
    for name, n in (("a", nx), ("b", ny)):
        if n == 0:
            raise ValueError(f"{name} is a zero vector; cosine is undefined for it")
    return float(np.clip((x / nx) @ (y / ny), -1.0, 1.0))


def top_singular_direction(vectors: ArrayLike) -> tuple[np.ndarray, float]:
    """The direction a stack of vectors shares most: its first right singular vector (uncentered).

    Args:
        vectors: (K, D) stack, e.g. one steering vector per prompt set or per layer.

    Returns:
        (direction, explained_ratio): float32 (D,) unit vector signed so the rows' mean projection
        onto it is positive (on an exact tie, so its largest-magnitude coordinate is positive), and
        the fraction ``s[0]^2 / sum(s^2)`` of the stack's squared norm along it.

    Raises:
        ValueError: not a non-empty 2-D array, non-finite values, or every row zero.
    """
    v = _stack(vectors, "vectors")
    _, s, vt = np.linalg.svd(v, full_matrices=False)
    if s[0] == 0:
        raise ValueError(f"vectors {v.shape} are all zero; there is no direction to find")
    d = vt[0] / np.linalg.norm(vt[0])
    proj = float(v.mean(axis=0) @ d)
    if proj == 0.0:
        proj = float(d[np.argmax(np.abs(d))])
    d = -d if proj < 0 else d
    return d.astype(np.float32), float(s[0] ** 2 / np.sum(s**2))


def project(acts: ArrayLike, direction: ArrayLike) -> np.ndarray:
    """Scalar projections of activations onto the unit vector along ``direction``.

    Args:
        acts: (..., D) activations.
        direction: (D,) non-zero vector (its length does not matter).

    Returns:
        float64 array of shape ``acts.shape[:-1]``.

    Raises:
        ValueError: mismatched sizes, non-finite values, or a zero direction.
    """
    d = _vector(direction, "direction")
    x = _array(acts, "acts")
    if x.ndim == 0 or x.shape[-1] != d.shape[0]:
        raise ValueError(f"acts has shape {x.shape}; expected (..., {d.shape[0]}) to match direction {d.shape}")
    n = np.linalg.norm(d)
    if n == 0:
        raise ValueError("direction is a zero vector; projection onto it is undefined")
    return x @ (d / n)


def orthogonalize(v: ArrayLike, against: ArrayLike) -> np.ndarray:
    """``v`` with its component in the span of ``against`` removed.

    Args:
        v: (D,) vector.
        against: (D,) vector or (K, D) stack of vectors (linearly dependent rows are fine).

    Returns:
        float32 (D,) vector orthogonal to every row of ``against`` (up to float32 rounding).

    Raises:
        ValueError: mismatched sizes, non-finite values, or a zero vector in ``against``.
    """
    x = _vector(v, "v")
    a = _array(against, "against")
    a = a[None] if a.ndim == 1 else a
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] != x.shape[0]:
        raise ValueError(f"against has shape {np.shape(against)}; expected ({x.shape[0]},) or (K, {x.shape[0]})")
    _nonzero_norms(a, "against")
    _, s, vt = np.linalg.svd(a, full_matrices=False)
    basis = vt[s > s[0] * max(a.shape) * np.finfo(np.float64).eps]
    for _ in range(2):  # twice is enough (Kahan): the second pass removes the first's rounding
        x = x - basis.T @ (basis @ x)
    return x.astype(np.float32)


def norm_ratios(vector_norms: Mapping[str, float], residual_norms: Mapping[str, float]) -> dict[str, float]:
    """Per site, the steering vector's norm divided by the residual stream's (mean) norm there.

    Args:
        vector_norms: site -> norm of the (scaled) steering vector, >= 0.
        residual_norms: site -> typical residual-stream norm, > 0; may cover more sites.

    Returns:
        site -> ratio, in ``vector_norms`` order.

    Raises:
        ValueError: a site without a residual norm, a negative or non-finite vector norm, or a
            residual norm that is not positive and finite.
    """
    missing = [k for k in vector_norms if k not in residual_norms]
    if missing:
        raise ValueError(f"no residual norm for sites {missing}; residual_norms has {sorted(residual_norms)}")
    out: dict[str, float] = {}
    for site, vn in vector_norms.items():
        v, r = float(vn), float(residual_norms[site])
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"vector norm at {site!r} must be finite and >= 0, got {vn!r}")
        if not (math.isfinite(r) and r > 0):
            raise ValueError(f"residual norm at {site!r} must be finite and > 0, got {residual_norms[site]!r}")
        out[site] = v / r
    return out


def _array(value: ArrayLike, what: str) -> np.ndarray:
    arr = host_array(value, what=what, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        bad = arr.size - int(np.count_nonzero(np.isfinite(arr)))
        raise ValueError(f"{what} {arr.shape} has {bad} non-finite values (NaN or inf)")
    return arr


def _vector(value: ArrayLike, what: str) -> np.ndarray:
    arr = _array(value, what)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{what} has shape {arr.shape}; expected a non-empty 1-D (D,) vector")
    return arr


def _stack(value: ArrayLike, what: str) -> np.ndarray:
    arr = _array(value, what)
    if arr.ndim != 2 or 0 in arr.shape:
        raise ValueError(f"{what} has shape {arr.shape}; expected a non-empty 2-D (K, D) stack")
    return arr


def _nonzero_norms(v: np.ndarray, what: str) -> np.ndarray:
    norms = np.linalg.norm(v, axis=1)
    zero = np.flatnonzero(norms == 0)
    if zero.size:
        raise ValueError(f"{what} {v.shape} has zero vectors at rows {zero.tolist()}; their direction is undefined")
    return norms
