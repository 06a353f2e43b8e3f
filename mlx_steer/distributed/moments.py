"""ContrastMoments: the sums a contrast direction needs, so ranks can add them instead of
sending activations.

``mean_diff`` needs per-side sums and counts (2·D + 2 numbers per site); ``pca`` (first principal
direction of the paired differences ``d_i = pos_i - neg_i``, uncentered) needs the D×D scatter
``Σ d_i d_iᵀ``, ``Σ d_i`` and the pair count. Both are independent of the number of prompts. A
logistic probe needs every row at every Newton step, so it is not offered here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ContrastMoments", "REDUCIBLE"]

REDUCIBLE = ("mean_diff", "pca")  # methods whose inputs reduce to ContrastMoments


@dataclass(frozen=True, eq=False)
class ContrastMoments:
    """Float64 sums over contrast activations at one site.

    Attributes:
        n_pos: Positive rows.
        n_neg: Negative rows.
        sum_pos: (D,) sum of positive rows.
        sum_neg: (D,) sum of negative rows.
        scatter: (D, D) ``Σ d dᵀ`` of paired differences (None unless paired).
        nonfinite: Count of NaN/inf activations (so every rank can raise together).
    """

    n_pos: float
    n_neg: float
    sum_pos: np.ndarray
    sum_neg: np.ndarray
    scatter: np.ndarray | None = None
    nonfinite: float = 0.0

    @classmethod
    def of(cls, pos: np.ndarray, neg: np.ndarray, *, paired: bool) -> ContrastMoments:
        """Sums of (N, D) ``pos`` and (M, D) ``neg`` (row i of each paired when ``paired``)."""
        p, n = np.asarray(pos, dtype=np.float64), np.asarray(neg, dtype=np.float64)
        bad = float(np.size(p) - np.isfinite(p).sum() + np.size(n) - np.isfinite(n).sum())
        p, n = np.nan_to_num(p, nan=0.0, posinf=0.0, neginf=0.0), np.nan_to_num(n, nan=0.0, posinf=0.0, neginf=0.0)
        scatter = None
        if paired:
            d = p - n
            scatter = d.T @ d
        return cls(float(len(p)), float(len(n)), p.sum(axis=0), n.sum(axis=0), scatter, bad)

    @classmethod
    def zeros(cls, dim: int, *, paired: bool) -> ContrastMoments:
        z = np.zeros(dim)
        return cls(0.0, 0.0, z, z.copy(), np.zeros((dim, dim)) if paired else None)

    def __add__(self, other: object) -> ContrastMoments:
        if not isinstance(other, ContrastMoments):
            return NotImplemented
        scatter = None if self.scatter is None or other.scatter is None else self.scatter + other.scatter
        return ContrastMoments(self.n_pos + other.n_pos, self.n_neg + other.n_neg, self.sum_pos + other.sum_pos,
                               self.sum_neg + other.sum_neg, scatter, self.nonfinite + other.nonfinite)

    def pack(self) -> np.ndarray:
        """One flat float64 vector (what is all-reduced)."""
        parts = [np.array([self.n_pos, self.n_neg, self.nonfinite]), self.sum_pos, self.sum_neg]
        if self.scatter is not None:
            parts.append(self.scatter.ravel())
        return np.concatenate(parts)

    @classmethod
    def unpack(cls, flat: np.ndarray, dim: int, *, paired: bool) -> ContrastMoments:
        """Inverse of :meth:`pack`."""
        n_pos, n_neg, bad = (float(x) for x in flat[:3])
        sp, sn = flat[3 : 3 + dim], flat[3 + dim : 3 + 2 * dim]
        scatter = flat[3 + 2 * dim :].reshape(dim, dim) if paired else None
        return cls(n_pos, n_neg, sp, sn, scatter, bad)

    @staticmethod
    def packed_size(dim: int, *, paired: bool) -> int:
        return 3 + 2 * dim + (dim * dim if paired else 0)

    def direction(self, method: str) -> np.ndarray:
        """The float32 (D,) ``mean_diff`` or ``pca`` direction these sums determine.

        Raises:
            ValueError: non-finite activations, an empty side, fewer than 2 pairs (pca), all
                differences zero or without variance (pca), an unknown method.
        """
        if self.nonfinite:
            raise ValueError(f"{method}: {int(self.nonfinite)} activations are non-finite (NaN or inf)")
        if not self.n_pos or not self.n_neg:
            raise ValueError(f"{method}: need positive and negative rows, got {self.n_pos:g} and {self.n_neg:g}")
        if method == "mean_diff":
            return (self.sum_pos / self.n_pos - self.sum_neg / self.n_neg).astype(np.float32)
        if method == "pca":
            return self._pca()
        raise ValueError(f"unknown method {method!r} for reduced sums; valid: {', '.join(REDUCIBLE)}")

    def _pca(self) -> np.ndarray:
        """Top eigenvector of the scatter = top right singular vector of the differences."""
        if self.scatter is None:
            raise ValueError("pca: these sums hold no scatter matrix (built with paired=False)")
        n = self.n_pos
        if n < 2:
            raise ValueError(f"pca_direction: need at least 2 pairs, got {n:g}")
        scale = float(np.sqrt(max(np.trace(self.scatter), 0.0)))  # Frobenius norm of the differences
        if scale == 0.0:
            raise ValueError("pca_direction: every pos - neg difference is zero; there is no direction to find")
        w, v = np.linalg.eigh((self.scatter + self.scatter.T) / 2)
        top = float(np.sqrt(max(w[-1], 0.0)))
        if top <= 1e-9 * scale:
            raise ValueError(f"pca_direction: the differences of {n:g} pairs have no variance "
                             f"(largest singular value {top:.3g} vs difference norm {scale:.3g})")
        u = v[:, -1] / np.linalg.norm(v[:, -1])
        mean = (self.sum_pos - self.sum_neg) / n
        proj = float(mean @ u)
        if proj == 0.0:
            proj = float(u[np.argmax(np.abs(u))])
        return (-u if proj < 0 else u).astype(np.float32)
