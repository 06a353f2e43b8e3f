"""Per-token KL between unsteered and steered next-token distributions over unsteered rollouts.

The measurement behind :func:`mlx_steer.analysis.kl_calibration.calibrate`: the unsteered model
continues each prompt, and teacher-forced forwards of *prompt + rollout* give, at each scored
position (the last prompt token onwards), ``KL(p_unsteered || p_steered)`` in nats from a float64
log-softmax over the whole vocabulary. Each forward keeps logits only at the scored positions, and
carries many steerings at once (one per row).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..engine.model import Steerable

__all__ = ["Rollouts", "kl_statistic", "log_softmax", "make_rollouts", "token_kls"]


@dataclass(frozen=True)
class Rollouts:
    """Prompts continued by the unsteered model, and its log-probabilities at the scored positions.

    Attributes:
        tokens: Per prompt, its tokens then the rollout's (EOS excluded).
        positions: Per prompt, the scored positions ``P-1 .. P+G-1`` (absolute).
        reference: Per prompt, (len(positions), V) float64 unsteered log-probabilities there.
    """

    tokens: list[list[int]]
    positions: list[list[int]]
    reference: list[np.ndarray]


def make_rollouts(model: Steerable, prompts: Sequence[str], *, rollout_tokens: int, chat: bool,
                  system: str | None, temp: float, seed: int, batch_size: int) -> Rollouts:
    """Greedy (``temp=0``) or seeded sampled rollouts of the unsteered model, and its log-probs on them."""
    encoded = [model.encode(p, chat=chat, system=system) for p in prompts]
    sampling: dict[str, Any] = {"temp": float(temp), "seed": seed} if temp > 0 else {}
    tokens: list[list[int]] = []
    for i in range(0, len(encoded), batch_size):
        chunk = encoded[i : i + batch_size]
        out = model.batch_generate(chunk, max_tokens=rollout_tokens, **sampling)
        tokens += [list(p) + [int(t) for t in g] for p, g in zip(chunk, out.token_ids)]
    positions = [list(range(len(p) - 1, len(t))) for p, t in zip(encoded, tokens)]
    partial = Rollouts(tokens, positions, [])
    reference = _log_probs(model, partial, list(range(len(tokens))), [None] * len(tokens), batch_size)
    return Rollouts(tokens, positions, reference)


def token_kls(model: Steerable, ro: Rollouts, steerings: Sequence[Mapping | None], *,
              batch_size: int) -> list[np.ndarray]:
    """Per steering, the per-token KLs over every scored position of every prompt (prompt-major):
    the rows of all steerings share batched forwards."""
    n = len(ro.tokens)
    rows = [i for _ in steerings for i in range(n)]
    per_row = [s for s in steerings for _ in range(n)]
    logp = _log_probs(model, ro, rows, per_row, batch_size)
    out = []
    for j in range(len(steerings)):
        out.append(np.concatenate([kl_rows(ro.reference[i], logp[j * n + i]) for i in range(n)]))
    return out


def kl_rows(p_log: np.ndarray, q_log: np.ndarray) -> np.ndarray:
    """KL(p || q) per row of two (k, V) log-probability arrays, in nats (never below 0)."""
    p = np.exp(p_log)
    return np.maximum((p * (p_log - q_log)).sum(axis=-1), 0.0)


def kl_statistic(kls: np.ndarray, statistic: str) -> float:
    """The mean of ``kls``, or their percentile for ``"pNN"`` (numpy's linear interpolation)."""
    if statistic == "mean":
        return float(np.mean(kls))
    return float(np.percentile(kls, float(statistic[1:])))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """float64 log-softmax over the last axis."""
    x = logits.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _log_probs(model: Steerable, ro: Rollouts, rows: list[int], steer: list[Mapping | None],
               batch_size: int) -> list[np.ndarray]:
    """Per row (an index into the rollouts, with its steering), the log-probs at its scored positions."""
    out: list[np.ndarray] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        k = max(len(ro.positions[i]) for i in chunk)
        keep = [ro.positions[i] + [ro.positions[i][-1]] * (k - len(ro.positions[i])) for i in chunk]
        tr = model.run([ro.tokens[i] for i in chunk], interventions=steer[start : start + len(chunk)], logits=keep)
        logits = model.to_numpy(tr.logits)
        out += [log_softmax(logits[r, : len(ro.positions[i])]) for r, i in enumerate(chunk)]
    return out
