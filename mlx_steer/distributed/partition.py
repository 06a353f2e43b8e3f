"""Which rank reads which prompts: a split balanced by token length."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["split_by_length"]


def split_by_length(lengths: Sequence[int], size: int) -> list[list[int]]:
    """Indices of ``lengths`` for each of ``size`` ranks, balanced by token length.

    Items are sorted by length and dealt back and forth (0, 1, .., size-1, size-1, .., 0, ...),
    so every rank gets nearly the same count, the same spread of lengths (its length-sorted
    batches pad as little as the single-process ones) and nearly the same number of tokens.
    Deterministic: every rank computes the same split from the same lengths.

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
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    shards: list[list[int]] = [[] for _ in range(size)]
    for k, i in enumerate(order):
        lap, pos = divmod(k, size)
        shards[pos if lap % 2 == 0 else size - 1 - pos].append(i)
    return [sorted(s) for s in shards]
