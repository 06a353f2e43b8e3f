"""Direction finding from recorded activations: mean difference (CAA), PCA of paired differences
(repeng), a logistic-regression probe, and ActAdd's per-position difference.

Numpy only. A backend records activations, turns them into ``pos`` (N, D) and ``neg`` (M, D)
arrays (row i of each is one prompt of a contrast pair where pairs matter) and calls these.
Inputs are validated and computed in float64; directions come back float32, the steering dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from ..engine.host_array import host_array

__all__ = [
    "ProbeResult",
    "actadd_difference",
    "logistic_probe",
    "mean_difference",
    "pca_center_direction",
    "pca_direction",
]


# -- CAA -----------------------------------------------------------------------------------------
def mean_difference(pos: ArrayLike, neg: ArrayLike) -> np.ndarray:
    """``mean(pos) - mean(neg)``: the contrastive activation addition (CAA) vector.

    Args:
        pos: (N, D) activations of the positive prompts.
        neg: (M, D) activations of the negative prompts (``M`` may differ from ``N``).

    Returns:
        float32 (D,) difference of the means, computed in float64. Not normalized.

    Raises:
        ValueError: not 2-D, empty, different hidden sizes, or non-finite values.
    """
    p, n = _two_matrices(pos, neg, "mean_difference")
    return (p.mean(axis=0) - n.mean(axis=0)).astype(np.float32)


# -- PCA -----------------------------------------------------------------------------------------
def pca_direction(pos: ArrayLike, neg: ArrayLike, *, center: bool = False) -> np.ndarray:
    """First principal direction of the paired differences ``pos[i] - neg[i]`` (repeng "pca_diff").

    Uncentered by default: every difference is taken the same way round (pos - neg), so their
    common shift *is* the concept, and centering would remove it (pairs that all differ by about
    the same vector leave only noise). ``center=True`` reproduces repeng, whose sklearn PCA
    centers: the axis along which the differences vary most.

    Args:
        pos: (N, D) activations of the positive prompts.
        neg: (N, D) activations of the negative prompts, row i paired with ``pos[i]``.
        center: Subtract the mean difference before the decomposition.

    Returns:
        float32 (D,) unit vector, signed so the mean projection of ``pos - neg`` onto it is positive
        (on an exact tie, so its largest-magnitude coordinate is positive).

    Raises:
        ValueError: unpaired or fewer than 2 pairs, bad shapes or values, all differences zero,
            or (with ``center``) differences that do not vary.
    """
    p, n = _pairs(pos, neg, "pca_direction")
    diffs = p - n
    train = diffs - diffs.mean(axis=0) if center else diffs
    return _first_component(train, diffs, "pca_direction", centered=center)


def pca_center_direction(pos: ArrayLike, neg: ArrayLike) -> np.ndarray:
    """repeng's "pca_center": center each pair on its midpoint, then PCA of the stacked points.

    The stacked points are ``±(pos[i] - neg[i]) / 2``, so this is the dominant direction of the
    uncentered differences, the mean difference included.

    Args:
        pos: (N, D) activations of the positive prompts.
        neg: (N, D) activations of the negative prompts, row i paired with ``pos[i]``.

    Returns:
        float32 (D,) unit vector, signed like :func:`pca_direction`.

    Raises:
        ValueError: unpaired or fewer than 2 pairs, bad shapes or values, or all pairs identical.
    """
    p, n = _pairs(pos, neg, "pca_center_direction")
    mid = (p + n) / 2
    train = np.concatenate([p - mid, n - mid])
    train -= train.mean(axis=0)  # sklearn's PCA centers; zero up to rounding here
    return _first_component(train, p - n, "pca_center_direction", centered=False)


def _first_component(train: np.ndarray, diffs: np.ndarray, fn: str, *, centered: bool) -> np.ndarray:
    scale = float(np.linalg.norm(diffs))
    if scale == 0.0:
        raise ValueError(f"{fn}: every pos - neg difference is zero; there is no direction to find")
    _, s, vt = np.linalg.svd(train, full_matrices=False)
    if s[0] <= 1e-9 * scale:
        hint = "; use center=False or mean_difference" if centered else ""
        raise ValueError(
            f"{fn}: the {'centered ' if centered else ''}differences of {diffs.shape[0]} pairs have no "
            f"variance (largest singular value {s[0]:.3g} vs difference norm {scale:.3g}){hint}"
        )
    return _orient(vt[0], diffs.mean(axis=0)).astype(np.float32)


def _orient(v: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Unit ``v`` signed so ``reference @ v > 0`` (on a tie: largest-magnitude coordinate > 0)."""
    v = v / np.linalg.norm(v)
    proj = float(reference @ v)
    if proj == 0.0:
        proj = float(v[np.argmax(np.abs(v))])
    return -v if proj < 0 else v


# -- logistic probe ------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class ProbeResult:
    """A fitted linear probe ``logit(x) = x @ weight + bias`` (positive class = ``pos``).

    Attributes:
        direction: float32 (D,) unit ``weight``, pointing toward the positive class.
        weight: float64 (D,) weights in the original activation space.
        bias: Intercept.
        accuracy: Fraction of the training rows classified correctly (logit > 0 means pos).
        n_iter: Newton iterations used.
    """

    direction: np.ndarray
    weight: np.ndarray
    bias: float
    accuracy: float
    n_iter: int

    def logits(self, acts: ArrayLike) -> np.ndarray:
        """float64 ``acts @ weight + bias`` for (..., D) activations."""
        x = np.asarray(acts, dtype=np.float64)
        if x.ndim == 0 or x.shape[-1] != self.weight.shape[0]:
            raise ValueError(f"acts has shape {x.shape}; expected (..., {self.weight.shape[0]})")
        return x @ self.weight + self.bias


def logistic_probe(
    pos: ArrayLike,
    neg: ArrayLike,
    *,
    l2: float = 1e-2,
    max_iter: int = 100,
    tol: float = 1e-8,
) -> ProbeResult:
    """L2-regularized logistic regression separating ``pos`` (label 1) from ``neg`` (label 0).

    Minimizes ``sum_i [log(1 + exp(z_i)) - y_i z_i] + l2/2 * |w|^2`` with ``z = x @ w + b``
    (bias unpenalized, penalty in the original activation space) by Newton's method with a
    backtracking line search, in float64. The optimal ``w`` lies in the span of the centered
    rows, so when D > N + M each Newton step is solved in the (N + M + 1) dual form instead of
    the (D + 1) primal one, which keeps D > N cheap.

    Args:
        pos: (N, D) activations of the positive prompts.
        neg: (M, D) activations of the negative prompts.
        l2: Penalty strength, > 0 (the optimum is unique and finite even when the data separate).
        max_iter: Newton iterations allowed, >= 1.
        tol: Stop once the Newton decrement ``g @ H^-1 @ g`` (about twice the objective's
            distance from its minimum) is <= ``tol``; the step that certified it is applied.

    Returns:
        A :class:`ProbeResult`.

    Raises:
        ValueError: bad shapes or values, an empty class, a bad option, or classes the probe
            cannot tell apart (identical activations).
        RuntimeError: no convergence within ``max_iter`` iterations.
    """
    p, n = _two_matrices(pos, neg, "logistic_probe")
    l2 = _positive(l2, "l2")
    tol = _positive(tol, "tol")
    if not isinstance(max_iter, (int, np.integer)) or isinstance(max_iter, bool) or max_iter < 1:
        raise ValueError(f"max_iter must be an int >= 1, got {max_iter!r}")
    x = np.concatenate([p, n])
    y = np.concatenate([np.ones(len(p)), np.zeros(len(n))])
    w, b, n_iter = _fit_logistic(x, y, l2, int(max_iter), tol)
    logits = x @ w + b
    spread = float(np.max(np.abs(logits - logits.mean())))
    if not spread > 1e-9:
        raise ValueError(
            f"logistic_probe: found no direction separating pos {p.shape} from neg {n.shape} "
            "(the classes' activations are indistinguishable)"
        )
    w.setflags(write=False)
    direction = (w / np.linalg.norm(w)).astype(np.float32)
    direction.setflags(write=False)
    accuracy = float(np.mean((logits > 0) == (y == 1)))
    return ProbeResult(direction=direction, weight=w, bias=float(b), accuracy=accuracy, n_iter=n_iter)


def _fit_logistic(
    x: np.ndarray, y: np.ndarray, l2: float, max_iter: int, tol: float
) -> tuple[np.ndarray, float, int]:
    """(w, b, iterations). Features are centered (the bias absorbs the mean; better conditioned)."""
    mu = x.mean(axis=0)
    xc = x - mu
    if xc.shape[1] <= xc.shape[0]:
        theta, it = _newton(_Primal(xc, y, l2), max_iter, tol)
        w = theta[:-1]
    else:
        theta, it = _newton(_Dual(xc, y, l2), max_iter, tol)
        w = xc.T @ theta[:-1]
    return w, float(theta[-1] - mu @ w), it


class _Primal:
    """Newton on (w, b) directly: a (D + 1) x (D + 1) solve per step, for D <= N."""

    def __init__(self, xc: np.ndarray, y: np.ndarray, l2: float):
        self.a = np.hstack([xc, np.ones((len(xc), 1))])
        self.y, self.reg = y, np.append(np.full(xc.shape[1], l2), 0.0)
        self.size = self.a.shape[1]

    def objective(self, theta: np.ndarray) -> float:
        return _loss(self.a @ theta, self.y) + 0.5 * float(np.sum(self.reg * theta * theta))

    def step(self, theta: np.ndarray) -> tuple[np.ndarray, float]:
        prob, rest = _sigmoid_pair(self.a @ theta)
        grad = self.a.T @ np.where(self.y == 1, -rest, prob) + self.reg * theta
        hess = (self.a.T * (prob * rest)) @ self.a + np.diag(self.reg)
        step = -_solve(hess, grad)
        return step, float(grad @ step)


class _Dual:
    """Newton with ``w = xc.T @ alpha`` (the optimum lies in the row span): an (N + 1) system per
    step from the push-through identity, so D > N costs one N x N Gram matrix, no D x D solve."""

    def __init__(self, xc: np.ndarray, y: np.ndarray, l2: float):
        self.k, self.y, self.l2 = xc @ xc.T, y, l2
        self.size = len(xc) + 1

    def objective(self, theta: np.ndarray) -> float:
        ka = self.k @ theta[:-1]
        return _loss(ka + theta[-1], self.y) + 0.5 * self.l2 * float(theta[:-1] @ ka)

    def step(self, theta: np.ndarray) -> tuple[np.ndarray, float]:
        alpha, n = theta[:-1], len(theta) - 1
        prob, rest = _sigmoid_pair(self.k @ alpha + theta[-1])
        r, s = np.where(self.y == 1, -rest, prob), prob * rest
        # Newton in w-space: (X'SX + l2 I) dw + X's db = -X'(r + l2 alpha), s'X dw + sum(s) db = -sum(r);
        # dw = X' d_alpha solves it when (S K + l2 I) d_alpha + s db = -(r + l2 alpha)
        m = np.empty((n + 1, n + 1))
        m[:n, :n] = s[:, None] * self.k + self.l2 * np.eye(n)
        m[:n, n], m[n, :n], m[n, n] = s, s @ self.k, s.sum()
        g_alpha = r + self.l2 * alpha
        step = -_solve(m, np.append(g_alpha, r.sum()))
        slope = float(g_alpha @ (self.k @ step[:-1]) + r.sum() * step[-1])  # gradient . step in w-space
        return step, slope


def _newton(problem: _Primal | _Dual, max_iter: int, tol: float) -> tuple[np.ndarray, int]:
    """Damped Newton from zero; stops after the step whose decrement ``-g . step`` is <= tol."""
    theta = np.zeros(problem.size)
    f = problem.objective(theta)
    for it in range(1, max_iter + 1):
        step, slope = problem.step(theta)
        t = 1.0
        while True:  # backtracking (Armijo); the slack absorbs rounding next to the optimum
            f_new = problem.objective(theta + t * step)
            if f_new <= f + 1e-4 * t * slope + 1e-13 * abs(f) or t < 1e-10:
                break
            t /= 2
        moved = t * step
        theta, f = theta + moved, f_new
        stalled = np.max(np.abs(moved)) <= 10 * np.finfo(np.float64).eps * (1 + np.max(np.abs(theta)))
        if -slope <= tol or stalled:
            return theta, it
    raise RuntimeError(
        f"logistic_probe did not converge in max_iter={max_iter} Newton iterations "
        f"(decrement {-slope:.3g} > tol={tol:g}); raise max_iter or l2"
    )


def _sigmoid_pair(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sigma(z), 1 - sigma(z)), each accurate in its own tail."""
    return np.exp(-np.logaddexp(0.0, -z)), np.exp(-np.logaddexp(0.0, z))


def _loss(z: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum(np.logaddexp(0.0, z) - y * z))


def _solve(h: np.ndarray, g: np.ndarray) -> np.ndarray:
    try:
        step = np.linalg.solve(h, g)
        if np.all(np.isfinite(step)):
            return step
    except np.linalg.LinAlgError:
        pass  # singular bias row (every weight underflowed): least squares instead
    return np.linalg.lstsq(h, g, rcond=None)[0]


# -- ActAdd --------------------------------------------------------------------------------------
def actadd_difference(pos_seq: ArrayLike, neg_seq: ArrayLike) -> np.ndarray:
    """Front-aligned per-position difference ``pos_seq[i] - neg_seq[i]`` (ActAdd, Turner et al.).

    ActAdd pads the shorter *prompt* with space tokens before the forward pass, so the two
    activation sequences arrive here with equal lengths; the backends pad with the tokenizer's
    space token. The result is added at absolute positions ``0..n-1`` (see DESIGN.md, Positions).

    Args:
        pos_seq: (n, D) activations of the positive prompt, one row per token.
        neg_seq: (n, D) activations of the negative prompt.

    Returns:
        float32 (n, D) differences.

    Raises:
        ValueError: different lengths or hidden sizes, not 2-D, empty, or non-finite values.
    """
    p = _matrix(pos_seq, "pos_seq")
    n = _matrix(neg_seq, "neg_seq")
    if p.shape[0] != n.shape[0]:
        raise ValueError(
            f"actadd_difference: pos_seq has {p.shape[0]} positions and neg_seq has {n.shape[0]}; "
            "they must be equal (pad the shorter prompt with space tokens before the forward pass)"
        )
    _same_width(p, n, "pos_seq", "neg_seq")
    return (p - n).astype(np.float32)


# -- validation ----------------------------------------------------------------------------------
def _matrix(value: ArrayLike, what: str) -> np.ndarray:
    """A finite float64 (rows, D) copy of ``value`` with at least one row and column."""
    arr = host_array(value, what=what, dtype=np.float64)
    if arr.ndim != 2 or 0 in arr.shape:
        raise ValueError(f"{what} has shape {arr.shape}; expected a non-empty 2-D (rows, hidden) array")
    finite = np.isfinite(arr)
    if not finite.all():
        rows = np.flatnonzero(~finite.all(axis=1))
        raise ValueError(
            f"{what} {arr.shape} has {arr.size - int(finite.sum())} non-finite values (NaN or inf), "
            f"in rows {rows[:5].tolist()}{'...' if rows.size > 5 else ''}"
        )
    return arr


def _same_width(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{name_a} {a.shape} and {name_b} {b.shape} have different hidden sizes")


def _two_matrices(pos: ArrayLike, neg: ArrayLike, fn: str) -> tuple[np.ndarray, np.ndarray]:
    p, n = _matrix(pos, f"{fn}: pos"), _matrix(neg, f"{fn}: neg")
    _same_width(p, n, f"{fn}: pos", "neg")
    return p, n


def _pairs(pos: ArrayLike, neg: ArrayLike, fn: str) -> tuple[np.ndarray, np.ndarray]:
    p, n = _two_matrices(pos, neg, fn)
    if p.shape[0] != n.shape[0]:
        raise ValueError(f"{fn} needs paired rows; pos {p.shape} and neg {n.shape} differ in count")
    if p.shape[0] < 2:
        raise ValueError(f"{fn} needs at least 2 pairs, got {p.shape[0]} (pos {p.shape}, neg {n.shape})")
    return p, n


def _positive(value: object, what: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a positive finite number, got {value!r}")
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be a positive finite number, got {value!r}") from exc
    if not (np.isfinite(x) and x > 0):
        raise ValueError(f"{what} must be a positive finite number, got {value!r}")
    return x
