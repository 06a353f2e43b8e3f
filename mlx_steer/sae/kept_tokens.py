"""Which tokens an SAE is trained and measured on: each sequence's first token (the attention sink, when
the sequence has more than one) is left out, and so is every token whose norm is more than
``max_norm_ratio`` times the median of the rest (other massive activations). Training
(:func:`~mlx_steer.sae.training.record_tokens`) and :meth:`SparseAutoencoder.reconstruction` share it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["MAX_NORM_RATIO", "kept_tokens"]

MAX_NORM_RATIO = 10.0


def kept_tokens(sequences: Sequence[np.ndarray], *, skip_first: bool = True,
                max_norm_ratio: float | None = MAX_NORM_RATIO) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """The tokens of ``sequences`` (each (n, D): one sequence's real tokens, in order) that the rule keeps.

    Args:
        sequences: Each sequence's activations, first token first.
        skip_first: Leave out each sequence's first token (when it has more than one).
        max_norm_ratio: Leave out tokens whose norm is over this many times the median norm of the tokens
            left after ``skip_first``; None keeps them.

    Returns:
        The kept tokens (N, D), in order, and the ``(sequence, position)`` of each one left out.
    """
    if max_norm_ratio is not None and not max_norm_ratio > 0:
        raise ValueError(f"max_norm_ratio must be a positive number or None, got {max_norm_ratio!r}")
    where = [(s, p) for s, seq in enumerate(sequences) for p in range(len(seq))
             if not (skip_first and p == 0 and len(seq) > 1)]
    skipped = [(s, 0) for s, seq in enumerate(sequences) if skip_first and len(seq) > 1]
    if not where:
        return np.zeros((0, sequences[0].shape[-1] if len(sequences) else 0), np.float32), skipped
    acts = np.concatenate([seq[1:] if skip_first and len(seq) > 1 else seq for seq in sequences])
    if max_norm_ratio is not None:
        norms = np.linalg.norm(acts.astype(np.promote_types(acts.dtype, np.float32)), axis=1)
        keep = norms <= max_norm_ratio * float(np.median(norms))
        skipped = sorted(skipped + [w for w, k in zip(where, keep) if not k])
        acts = acts[keep]
    return acts, skipped
