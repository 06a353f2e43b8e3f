"""Direction finding from recorded activations (numpy only).

Inputs are ``pos`` (N, D) and ``neg`` (M, D) activations of contrast prompts. Math runs in
float64; directions come back as float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _check(pos: object, neg: object, *, paired: bool = False, min_rows: int = 1) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(pos, dtype=np.float64), np.asarray(neg, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"activations must be 2-D (N, D); got shapes {a.shape} and {b.shape}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"positive and negative sizes differ: {a.shape} vs {b.shape}")
    if paired and a.shape[0] != b.shape[0]:
        raise ValueError(f"paired method needs as many positive as negative rows; got {a.shape[0]} and {b.shape[0]}")
    if min(a.shape[0], b.shape[0]) < min_rows:
        raise ValueError(f"need at least {min_rows} rows on each side; got {a.shape[0]} and {b.shape[0]}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("activations contain NaN or inf")
    return a, b


def mean_difference(pos: object, neg: object) -> np.ndarray:
    """mean(pos) - mean(neg): contrastive activation addition (CAA)."""
    a, b = _check(pos, neg)
    return (a.mean(0) - b.mean(0)).astype(np.float32)


def _oriented(direction: np.ndarray, diffs: np.ndarray) -> np.ndarray:
    """Unit direction, sign chosen so the mean projection of the differences is positive."""
    d = direction / np.linalg.norm(direction)
    return (d if float((diffs @ d).mean()) >= 0 else -d).astype(np.float32)


def pca_direction(pos: object, neg: object, *, center: bool = False) -> np.ndarray:
    """First principal direction of the paired differences pos_i - neg_i (repeng's ``pca_diff``).

    Uncentered by default: the differences share a sign (pos - neg), so their common shift is
    the signal; centering would remove it. (repeng centers, but shuffles each pair's order first.)
    Unit norm, pointing toward ``pos``.
    """
    a, b = _check(pos, neg, paired=True, min_rows=2)
    diffs = a - b
    x = diffs - diffs.mean(0) if center else diffs
    if not np.any(x):
        raise ValueError("all paired differences are identical; PCA has no direction (use mean_difference)")
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return _oriented(vt[0], diffs)


def pca_center_direction(pos: object, neg: object) -> np.ndarray:
    """repeng's ``pca_center``: center each pair on its midpoint, PCA of the stacked points."""
    a, b = _check(pos, neg, paired=True, min_rows=2)
    mid = (a + b) / 2
    x = np.concatenate([a - mid, b - mid])
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return _oriented(vt[0], a - b)


@dataclass(frozen=True)
class ProbeResult:
    """A logistic-regression probe: ``sigmoid(x @ weight + bias)`` = P(positive)."""

    direction: np.ndarray
    weight: np.ndarray
    bias: float
    accuracy: float
    n_iter: int


def logistic_probe(pos: object, neg: object, *, l2: float = 1.0, max_iter: int = 100, tol: float = 1e-8) -> ProbeResult:
    """L2-regularized logistic regression (label 1 = positive), fitted by Newton's method.

    Features are centered (not scaled: per-feature scaling would tilt the direction by each
    feature's variance); the returned weight and bias are in the original space. With more than
    4096 dimensions the Newton step is solved in the (N x N) Woodbury form.

    Args:
        l2: Penalty on the weights (the bias is not penalized).
    """
    a, b = _check(pos, neg)
    if l2 <= 0:
        raise ValueError(f"l2 must be > 0, got {l2}")
    x = np.concatenate([a, b])
    y = np.concatenate([np.ones(len(a)), np.zeros(len(b))])
    mu = x.mean(0)
    z = np.hstack([x - mu, np.ones((len(x), 1))])
    n, k = z.shape
    reg = np.full(k, l2)
    reg[-1] = 0.0
    w = np.zeros(k)
    it = 0
    for it in range(1, max_iter + 1):
        p = 1 / (1 + np.exp(-(z @ w)))
        grad = z.T @ (p - y) + reg * w
        s = np.maximum(p * (1 - p), 1e-10)
        step = _newton_step(z, s, reg, grad, l2)
        w -= step
        if np.linalg.norm(step) < tol * (1 + np.linalg.norm(w)):
            break
    weight = w[:-1]
    bias = float(w[-1] - mu @ weight)
    acc = float((((x @ weight + bias) > 0) == (y > 0.5)).mean())
    if not np.any(weight):
        raise ValueError("probe found no direction (the classes are indistinguishable)")
    direction = (weight / np.linalg.norm(weight)).astype(np.float32)
    return ProbeResult(direction, weight.astype(np.float32), bias, acc, it)


def _newton_step(z: np.ndarray, s: np.ndarray, reg: np.ndarray, grad: np.ndarray, l2: float) -> np.ndarray:
    """Solve (Z^T S Z + diag(reg)) step = grad: directly up to 4096 features, else in the
    Woodbury (N x N) form, where the bias gets the same small penalty so R is invertible."""
    n, k = z.shape
    if k <= 4097 or k <= n:
        return np.linalg.solve(z.T @ (z * s[:, None]) + np.diag(reg), grad)
    # (R + Z^T S Z)^-1 = R^-1 - R^-1 Z^T (S^-1 + Z R^-1 Z^T)^-1 Z R^-1
    rinv = 1 / np.where(reg > 0, reg, l2)
    zr = z * rinv
    inner = np.diag(1 / s) + zr @ z.T
    g = rinv * grad
    return g - zr.T @ np.linalg.solve(inner, z @ g)


def actadd_difference(pos_seq: object, neg_seq: object) -> np.ndarray:
    """Front-aligned per-position difference (n, D) of two equal-length activation sequences.

    ActAdd pads the shorter *prompt* (with space tokens) before running the model, so the two
    sequences arrive here with equal length.
    """
    a, b = _check(pos_seq, neg_seq)
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"ActAdd sequences must have equal length (pad the shorter prompt); got {a.shape[0]} and {b.shape[0]}"
        )
    return (a - b).astype(np.float32)
