"""The numbers behind ITI's per-head probes (numpy only): the held-out split, and many L2-regularized
logistic regressions fitted at once by Newton's method.

Each probe ``p`` reads ``x[p]`` (N, d) and predicts ``y`` (N,) in {0, 1}. Features are standardized
with the training mean and std before fitting (so one ``l2`` suits heads of any scale) and the
weights mapped back, so ``x @ w[p] + b[p] > 0`` predicts the positive class on raw activations.
The loss is the mean log-loss plus ``l2 / 2 · |w|²`` (the bias is not penalized); it is convex,
and each Newton step is halved until the loss does not rise.
"""

from __future__ import annotations

import numpy as np

__all__ = ["accuracy", "fit_logistic", "heldout_split"]


def heldout_split(n_positive: int, n_negative: int, *, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Which positive and which negative examples are held out (boolean masks): per class, a
    permutation drawn from ``np.random.default_rng(seed)`` (positives first, then negatives), whose
    last ``max(1, round(holdout · n))`` entries are held out.

    Raises:
        ValueError: ``holdout`` outside (0, 1), or a class too small to train on and test.
    """
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float)) or not 0.0 < holdout < 1.0:
        raise ValueError(f"holdout {holdout!r} must be a fraction in (0, 1), e.g. 0.25")
    rng = np.random.default_rng(seed)
    masks = []
    for n, what in ((n_positive, "positive"), (n_negative, "negative")):
        if n < 2:
            raise ValueError(f"{n} {what} example(s): each class needs at least 2 (one to train on, one held out)")
        k = min(n - 1, max(1, round(holdout * n)))
        mask = np.zeros(n, dtype=bool)
        mask[rng.permutation(n)[n - k:]] = True
        masks.append(mask)
    return masks[0], masks[1]


def fit_logistic(x: np.ndarray, y: np.ndarray, *, l2: float = 1e-2, max_steps: int = 100,
                 tol: float = 1e-10) -> tuple[np.ndarray, np.ndarray]:
    """Fit one logistic regression per probe.

    Args:
        x: (P, N, d) features of P probes over the same N examples.
        y: (N,) labels in {0, 1}.
        l2: L2 penalty on the standardized weights (positive).
        max_steps: Newton steps at most.
        tol: Stop when no parameter moves more than this.

    Returns:
        ``w`` (P, d) and ``b`` (P,) float64 on the raw features.

    Raises:
        ValueError: a non-positive ``l2``, labels not in {0, 1} or of one class only.
    """
    if not l2 > 0:
        raise ValueError(f"l2 {l2!r} must be positive (it keeps separable data's weights finite)")
    y = np.asarray(y, dtype=np.float64)
    if not np.all((y == 0) | (y == 1)) or y.min() == y.max():
        raise ValueError("labels must be 0 and 1, both present")
    x = np.asarray(x, dtype=np.float64)
    P, N, d = x.shape
    mu, sd = x.mean(1, keepdims=True), x.std(1, keepdims=True)
    sd = np.where(sd > 1e-12, sd, 1.0)
    xa = np.concatenate([(x - mu) / sd, np.ones((P, N, 1))], axis=2)  # (P, N, d + 1), bias last
    theta = np.zeros((P, d + 1))
    penalty = np.full(d + 1, l2)
    penalty[-1] = 0.0
    loss = _loss(xa, y, theta, penalty)
    for _ in range(max_steps):
        p = _sigmoid(np.einsum("pnk,pk->pn", xa, theta))
        grad = np.einsum("pnk,pn->pk", xa, p - y) / N + penalty * theta
        hess = np.einsum("pnk,pn,pnj->pkj", xa, p * (1 - p), xa) / N + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hess, grad[..., None])[..., 0]
        size = np.ones(P)
        for _ in range(30):  # halve each probe's step until its loss does not rise
            trial = _loss(xa, y, theta - size[:, None] * step, penalty)
            worse = trial > loss + 1e-15
            if not worse.any():
                break
            size = np.where(worse, size / 2, size)
        theta, loss = theta - size[:, None] * step, trial
        if np.abs(size[:, None] * step).max() < tol:
            break
    w = theta[:, :d] / sd[:, 0]
    b = theta[:, d] - np.einsum("pd,pd->p", w, mu[:, 0])
    return w, b


def accuracy(x: np.ndarray, y: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(P,) fraction of the N examples each probe classifies right (a logit > 0 predicts 1)."""
    pred = np.einsum("pnd,pd->pn", np.asarray(x, dtype=np.float64), w) + b[:, None] > 0
    return (pred == (np.asarray(y) == 1)).mean(1)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _loss(xa: np.ndarray, y: np.ndarray, theta: np.ndarray, penalty: np.ndarray) -> np.ndarray:
    z = np.einsum("pnk,pk->pn", xa, theta)
    nll = np.logaddexp(0.0, z) - y * z  # -log sigmoid(z) for y = 1, -log(1 - sigmoid(z)) for y = 0
    return nll.mean(1) + 0.5 * (penalty * theta * theta).sum(1)
