"""The token layout of the engine's own forwards: each row's prompt length, left padding and key.

A row's key names its sequence: the prompt's index in ``run``/``batch_generate``, a uid in
continuous batching. Interventions scoped with ``rows=`` select rows by key, so a row's
steering follows its sequence however the batch is reordered. The position tracker asks the
innermost layout for the rows of each forward; a layout may answer differently per forward
(continuous batching, where rows join and leave between steps).
"""

from __future__ import annotations

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

    def rows_of(self, batch: int, cache: object) -> tuple[np.ndarray, np.ndarray]:
        """Prompt lengths and row keys, each (batch,), of a forward over ``batch`` rows."""
        if self.lengths.size == batch:
            return self.lengths, self.keys
        if self.lengths.size == 1:
            return np.broadcast_to(self.lengths, (batch,)), np.broadcast_to(self.keys, (batch,))
        raise ValueError(f"a forward of {batch} rows inside a call laid out for {self.lengths.size} rows")
