"""Which rank reads which prompts: a split balanced by token length."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["split_by_length"]


def split_by_length(lengths: Sequence[int], size: int) -> list[list[int]]:
    """Indices of ``lengths`` for each of ``size`` ranks, balanced by token length.

    Longest first, each item goes to the rank with the fewest tokens so far among those below
    their share of the count (``ceil(n / size)``): every rank gets nearly the same count and
    the same number of tokens, and a similar spread of lengths (so its length-sorted batches pad
    about as little as one process's). Deterministic: every rank computes the same split.

    Args:
        lengths: Token count (cost) of each item.
        size: Number of ranks, >= 1.

    Returns:
        ``size`` lists of item indices, each in increasing order.

    Raises:
        ValueError: ``size`` < 1, or fewer items than ranks (a rank would have nothing to read).
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    if len(lengths) < size:
        raise ValueError(f"{len(lengths)} items cannot be split over {size} ranks; give at least {size}")
    cap = -(-len(lengths) // size)
    shards: list[list[int]] = [[] for _ in range(size)]
    tokens = [0] * size
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        r = min((r for r in range(size) if len(shards[r]) < cap), key=lambda r: (tokens[r], r))
        shards[r].append(i)
        tokens[r] += lengths[i]
    return [sorted(s) for s in shards]
