"""Continuation scoring for lm-eval's loglikelihood requests, on any backend: a request is a context's
tokens and a continuation's tokens; its row is ``(context + continuation)[:-1]`` and the logits at the
row's last ``len(continuation)`` positions predict the continuation's tokens. Rows run in batches
(longest first, left-padded by :meth:`~mlx_steer.engine.model.Steerable.run`), each row with its own
steering, and ``run(logits=<positions>)`` keeps only the positions read. The log-softmax and its sum are
taken in float64 on the host.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Scored", "TokenPair", "score_pairs"]


@dataclass(frozen=True)
class TokenPair:
    """One request: ``context`` (at least one token) and the ``continuation`` scored after it."""

    context: list[int]
    continuation: list[int]


@dataclass(frozen=True)
class Scored:
    """A continuation's log-likelihood (float64 sum) and whether greedy decoding would produce it."""

    logprob: float
    is_greedy: bool


def _row(pair: TokenPair, max_length: int) -> tuple[list[int], int]:
    """The forward row of ``pair`` (left-truncated to ``max_length`` tokens) and its continuation length."""
    if not pair.context:
        raise ValueError("a scored continuation needs at least one context token (lm-eval's prefix token)")
    n = len(pair.continuation)
    if n == 0:
        raise ValueError("an empty continuation has no tokens to score")
    if n > max_length:
        raise ValueError(f"the continuation has {n} tokens, more than max_length={max_length}; "
                         "raise max_length or shorten it")
    return (pair.context + pair.continuation)[-(max_length + 1):][:-1], n


def score_pairs(model: Any, pairs: Sequence[TokenPair], steering: Sequence[dict | None], *, batch_size: int,
                max_length: int) -> list[Scored]:
    """Each pair's continuation log-likelihood under its own steering.

    Args:
        model: A steerable model of either backend.
        pairs: The requests, as token ids.
        steering: One ``interventions=`` mapping (or None: unsteered) per pair.
        batch_size: Rows per forward.
        max_length: Most tokens in a row (the context is cut from the left beyond it).

    Returns:
        One :class:`Scored` per pair, in the given order.
    """
    if len(steering) != len(pairs):
        raise ValueError(f"{len(steering)} steering entries for {len(pairs)} requests; give one per request")
    rows = [_row(p, max_length) for p in pairs]
    order = sorted(range(len(pairs)), key=lambda i: -len(rows[i][0]))
    out: list[Scored | None] = [None] * len(pairs)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        for i, scored in zip(chunk, _score_batch(model, [rows[i] for i in chunk], [pairs[i] for i in chunk],
                                                 [steering[i] for i in chunk])):
            out[i] = scored
    return [s for s in out if s is not None]


def _score_batch(model: Any, rows: list[tuple[list[int], int]], pairs: list[TokenPair],
                 steering: list[dict | None]) -> list[Scored]:
    """One forward over ``rows``; each row reads only its continuation's positions (the shorter
    continuations repeat their last position so every row keeps the same count)."""
    k = max(n for _, n in rows)
    positions = [[len(r) - n + j for j in range(n)] + [len(r) - 1] * (k - n) for r, n in rows]
    spec: Any = None if all(s is None for s in steering) else list(steering)
    logits = model.to_numpy(model.run([r for r, _ in rows], interventions=spec, logits=positions).logits)
    scored = []
    for b, ((_, n), pair) in enumerate(zip(rows, pairs)):
        x = logits[b, :n].astype(np.float64)
        m = x.max(axis=-1, keepdims=True)
        logp = x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))
        target = np.asarray(pair.continuation, dtype=np.int64)
        total = float(logp[np.arange(n), target].sum())
        scored.append(Scored(total, bool((x.argmax(axis=-1) == target).all())))
    return scored
