"""Which positions' logits a forward keeps (``run(logits=...)``): every position, none, or chosen ones.

Keeping only the positions a caller reads saves the (B, L, V) array (with a 150k vocabulary, 32 rows
x 120 tokens are 2.3 GB of float32 logits) and, where the backend can, the unembedding of the other
positions: the final norm's output is gathered at those positions before the head (MLX: a
per-instance patch of the norm; torch: transformers' ``logits_to_keep``). Where that cannot be done
safely (a hook on the norm or the head, a model split over ranks) the backend gathers the full
logits instead; the result is the same.

Positions are absolute, counted from each row's first real token; a negative index counts from the
row's end (``-1`` is its last token), so ``"last"`` (= ``[-1]``) reads each row's last real token
under left padding.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["LogitsSpec", "logit_positions", "padded_columns"]

LogitsSpec = bool | str | int | Sequence[int] | Sequence[Sequence[int]] | np.ndarray


def logit_positions(spec: object, lengths: Sequence[int]) -> np.ndarray | None:
    """The (B, k) absolute positions whose logits a run keeps, or None for every position
    (``True``/``"all"``). ``False`` is not a position spec (the caller keeps no logits).

    Args:
        spec: ``"last"``; one index or a list of indices shared by every row; or one list per row
            (all of the same length); a (k,) or (B, k) integer array.
        lengths: Each row's number of real tokens.

    Raises:
        ValueError: an unknown form, an empty list, rows of different counts, a list per row whose
            length is not the number of rows, or an index outside a row (naming it and the valid range).
    """
    B = len(lengths)
    if spec is True or (isinstance(spec, str) and spec == "all"):
        return None
    if isinstance(spec, str):
        if spec == "last":
            return np.asarray(lengths, dtype=np.int64).reshape(B, 1) - 1
        raise ValueError(f"unknown logits selector {spec!r}; valid: True, False, 'all', 'last', an index, "
                         "a list of indices, or one list of indices per row")
    if isinstance(spec, (bool, np.bool_)) or spec is None:
        raise ValueError(f"logits={spec!r} keeps no positions; valid: True, False, 'all', 'last', indices")
    arr = _as_int_array(spec)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim == 1:
        if arr.size == 0:
            raise ValueError("logits=[] names no position; give at least one index, or logits=False")
        arr = np.broadcast_to(arr, (B, arr.size))
    elif arr.ndim != 2 or arr.shape[0] != B or arr.shape[1] == 0:
        raise ValueError(f"logits positions per row must be {B} non-empty lists of equal length "
                         f"(one per prompt), got shape {arr.shape}")
    n = np.asarray(lengths, dtype=np.int64).reshape(B, 1)
    bad = (arr < -n) | (arr >= n)
    if bad.any():
        row, col = map(int, np.argwhere(bad)[0])
        raise ValueError(f"logits position {int(arr[row, col])} out of range for row {row} of {int(n[row, 0])} "
                         f"tokens; valid: {-int(n[row, 0])}..{int(n[row, 0]) - 1}")
    return np.where(arr < 0, arr + n, arr).astype(np.int64)


def _as_int_array(spec: object) -> np.ndarray:
    """An integer array from an int, a list (of lists) of ints, or an integer array."""
    if isinstance(spec, np.ndarray):
        if not np.issubdtype(spec.dtype, np.integer):
            raise ValueError(f"logits positions must be integers, got an array of {spec.dtype}")
        return spec.astype(np.int64)
    if isinstance(spec, (int, np.integer)):
        return np.asarray(int(spec), dtype=np.int64)
    if not isinstance(spec, Sequence) or isinstance(spec, (str, bytes)):
        raise ValueError(f"cannot use {spec!r} as logits positions; valid: True, False, 'all', 'last', "
                         "an index, a list of indices, or one list of indices per row")
    nested = [list(v) if isinstance(v, (Sequence, np.ndarray)) and not isinstance(v, str) else v for v in spec]
    flat = [x for v in nested for x in (v if isinstance(v, list) else [v])]
    for x in flat:
        if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)):
            raise ValueError(f"logits positions must be ints, got {x!r}")
    if all(isinstance(v, list) for v in nested) and nested:
        counts = {len(v) for v in nested}
        if len(counts) != 1:
            raise ValueError(f"logits positions per row must have one count for every row, got counts {sorted(counts)}")
        return np.asarray(nested, dtype=np.int64)
    if any(isinstance(v, list) for v in nested):
        raise ValueError(f"logits positions mix indices and lists: {spec!r}")
    return np.asarray(flat, dtype=np.int64)


def padded_columns(positions: np.ndarray, padding: Sequence[int] | np.ndarray) -> np.ndarray:
    """Columns of ``positions`` (B, k) in a left-padded batch."""
    return positions + np.asarray(padding, dtype=np.int64).reshape(-1, 1)
