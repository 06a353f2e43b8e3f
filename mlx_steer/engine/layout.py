"""The token layout of the engine's own forwards: each row's prompt length, left padding and key.

A row's key names its sequence: the prompt's index in ``run``/``batch_generate``, a uid in
continuous batching. Interventions scoped with ``rows=`` select rows by key, so a row's
steering follows its sequence however the batch is reordered. The position tracker asks the
innermost layout for the rows of each forward; a layout may answer differently per forward
(continuous batching, where rows join and leave between steps).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np


class Layout:
    """A fixed batch: row ``b`` has prompt length ``lengths[b]``, left padding ``padding[b]``
    and key ``rows[b]`` (default ``b``).
    """

    def __init__(self, lengths: Sequence[int] | np.ndarray, padding: Sequence[int] | np.ndarray | None = None,
                 rows: Sequence[int] | np.ndarray | None = None):
        self.lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
        self.padding: np.ndarray | None = (
            np.zeros_like(self.lengths) if padding is None else np.asarray(padding, dtype=np.int64).reshape(-1)
        )
        self.keys = np.arange(self.lengths.size, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        self.start: np.ndarray | None = None  # set by the call's first forward

    def rows_of(self, batch: int, cache: object, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Where each row's prompt of this call starts and ends (absolute positions) and its key,
        each (batch,), for a forward over ``batch`` rows whose first tokens sit at ``offsets``.

        The call's first forward fixes where its prompt starts: 0 for a fresh cache, the cache's
        offset when a KV cache is reused across turns (then ``prompt``, ``generated`` and
        ``last`` refer to this call's tokens, and indices stay absolute).
        """
        if self.lengths.size not in (1, batch):
            raise ValueError(f"a forward of {batch} rows inside a call laid out for {self.lengths.size} rows")
        if self.start is None:
            self.start = np.maximum(np.asarray(offsets, dtype=np.int64), 0).reshape(-1)
        start = np.broadcast_to(self.start, (batch,)) if self.start.size in (1, batch) else self.start[:batch]
        lengths = np.broadcast_to(self.lengths, (batch,))
        return start, start + lengths, np.broadcast_to(self.keys, (batch,))


_KEY_SPACES = itertools.count(1)


class SequenceLayout(Layout):
    """Rows of a continuous batch: uid -> prompt length; a backend says which uids a forward holds."""

    def __init__(self, *, key_base: int | None = None) -> None:
        super().__init__([0])
        self.padding = None
        self.length_of: dict[int, int] = {}
        # row keys are base + uid: by default a range no other call's row keys (prompt indices) reach
        self.base = next(_KEY_SPACES) << 32 if key_base is None else key_base
        self.decoding = False  # whether the current forward samples tokens (monitors read those)
        self.span_rows: dict[int, object] = {}  # row key -> its token history, for span selectors

    def add(self, uid: int, *, prompt_len: int) -> None:
        self.length_of[uid] = prompt_len

    def drop(self, uid: int) -> None:
        self.length_of.pop(uid, None)
        self.span_rows.pop(self.base + uid, None)

    def rows_of(self, batch: int, cache: object, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        uids, self.decoding = self.current(cache)
        if len(uids) != batch:
            raise RuntimeError(f"a batch forward of {batch} rows holds {len(uids)} sequences")
        # a row whose sequence already left (its batch still computes it) has no steering left
        ends = np.array([self.length_of.get(u, 0) for u in uids], dtype=np.int64)
        return np.zeros(batch, dtype=np.int64), ends, self.base + np.array(uids, dtype=np.int64)

    def current(self, cache: object) -> tuple[list[int], bool]:
        """The uids of the forward now running (in row order), and whether it is a decode step."""
        raise NotImplementedError
