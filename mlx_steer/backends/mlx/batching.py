"""Batch generation on mlx-lm's ``BatchGenerator`` (continuous batching), with per-row steering.

mlx-lm schedules the rows; we only tell the position tracker, for every forward it makes, which
sequences the rows hold: a row's key (and so its row-scoped interventions) follows its uid as
sequences join, finish and leave.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from ...layout import Layout
from ...steerable import RowStep

if TYPE_CHECKING:
    from .model import SteerableModel


class GeneratorLayout(Layout):
    """The rows of a ``BatchGenerator``'s forwards: uid -> (row key, prompt length).

    The generator runs batches (prompt processing and decoding), each with its own KV cache and
    uids; the batch whose cache a forward was given is the one whose uids its rows are.
    """

    def __init__(self, generator: Any):
        super().__init__([0])
        self.generator = generator
        self.padding = None  # positions come from the batch caches' offsets
        self.key_of: dict[int, int] = {}
        self.length_of: dict[int, int] = {}

    def add(self, uid: int, *, key: int, prompt_len: int) -> None:
        self.key_of[uid], self.length_of[uid] = key, prompt_len

    def drop(self, uid: int) -> None:
        self.key_of.pop(uid, None)
        self.length_of.pop(uid, None)

    def rows_of(self, batch: int, cache: object) -> tuple[np.ndarray, np.ndarray]:
        uids = self._uids(cache)
        if len(uids) != batch:
            raise RuntimeError(f"BatchGenerator forward of {batch} rows holds {len(uids)} sequences")
        lengths = np.array([self.length_of[u] for u in uids], dtype=np.int64)
        keys = np.array([self.key_of[u] for u in uids], dtype=np.int64)
        return lengths, keys

    @staticmethod
    def _uids(cache: object) -> list[int]:
        # mlx-lm's prompt and decode batches call the model from their own methods, with their
        # own cache (some before the generator holds them): the caller that owns this cache
        # holds the uids, in row order
        frame = sys._getframe(1)
        for _ in range(16):
            if frame is None:
                break
            owner = frame.f_locals.get("self")
            if getattr(owner, "prompt_cache", None) is cache and hasattr(owner, "uids"):
                return list(owner.uids)
            frame = frame.f_back
        raise RuntimeError("a forward inside batch generation that is not one of the BatchGenerator's batches")


def generate_rows(
    model: SteerableModel, tokens: list[list[int]], *, max_tokens: int, sampler: Any, processors: list,
    prefill_step_size: int, stop_tokens: list[int],
) -> Iterator[RowStep]:
    """Every row's tokens as mlx-lm's ``BatchGenerator`` makes them; row keys are prompt indices."""
    from mlx_lm.generate import BatchGenerator

    B = len(tokens)
    gen = BatchGenerator(model.model, max_tokens=max_tokens, stop_tokens=[[t] for t in stop_tokens],
                         sampler=sampler, completion_batch_size=B, prefill_batch_size=B,
                         prefill_step_size=prefill_step_size)
    layout = GeneratorLayout(gen)
    try:
        uids = gen.insert(tokens, max_tokens=[max_tokens] * B, logits_processors=[list(processors)] * B)
        for row, (uid, t) in enumerate(zip(uids, tokens)):
            layout.add(uid, key=row, prompt_len=len(t))
        with model._layout(layout):
            while responses := gen.next_generated():
                for r in responses:
                    yield RowStep(layout.key_of[r.uid], int(r.token), r.finish_reason)
    finally:
        gen.close()
