"""Comparing directions: cosine, SVD of a stack, projections, orthogonalization (numpy only)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def _rows(vectors: object) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float64)
    if v.ndim != 2 or v.shape[0] == 0:
        raise ValueError(f"expected a (K, D) stack of vectors, got shape {v.shape}")
    norms = np.linalg.norm(v, axis=1)
    if np.any(norms == 0):
        raise ValueError(f"vector(s) {np.flatnonzero(norms == 0).tolist()} have zero norm")
    return v


def cosine(a: object, b: object) -> float:
    """Cosine similarity of two vectors."""
    v = _rows(np.stack([np.ravel(a), np.ravel(b)]))
    return float(v[0] @ v[1] / (np.linalg.norm(v[0]) * np.linalg.norm(v[1])))


def cosine_matrix(vectors: object) -> np.ndarray:
    """(K, K) cosine similarities of a (K, D) stack."""
    v = _rows(vectors)
    u = v / np.linalg.norm(v, axis=1, keepdims=True)
    return u @ u.T


def top_singular_direction(vectors: object) -> tuple[np.ndarray, float]:
    """First right singular vector of a (K, D) stack, signed so the mean projection is positive,
    and the fraction of the stack's squared norm it explains."""
    v = _rows(vectors)
    _, s, vt = np.linalg.svd(v, full_matrices=False)
    d = vt[0] if float((v @ vt[0]).mean()) >= 0 else -vt[0]
    return d.astype(np.float32), float(s[0] ** 2 / np.sum(s**2))


def project(acts: object, direction: object) -> np.ndarray:
    """Scalar projections of activations (..., D) onto the unit ``direction``."""
    d = _rows(np.ravel(direction)[None])[0]
    return np.asarray(acts, dtype=np.float64) @ (d / np.linalg.norm(d))


def orthogonalize(v: object, against: object) -> np.ndarray:
    """``v`` minus its component along ``against``."""
    a = _rows(np.ravel(against)[None])[0]
    x = np.asarray(v, dtype=np.float64)
    return (x - (x @ a) / (a @ a) * a).astype(np.float32)


def norm_profile(vector_norms: Mapping[str, float], residual_norms: Mapping[str, float]) -> dict[str, float]:
    """Per site, the vector's norm relative to the mean residual-stream norm there."""
    missing = sorted(set(vector_norms) - set(residual_norms))
    if missing:
        raise ValueError(f"no residual norm for sites {missing}")
    return {k: float(vector_norms[k]) / float(residual_norms[k]) for k in vector_norms}
