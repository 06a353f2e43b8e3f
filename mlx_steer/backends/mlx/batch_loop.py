"""Batch generation on mlx-lm's ``BatchGenerator`` (continuous batching), with per-row steering.

mlx-lm schedules the rows; we only tell the position tracker, for every forward it makes, which
sequences the rows hold: a row's key (and so its row-scoped interventions) follows its uid as
sequences join, finish and leave.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from typing import TYPE_CHECKING, Any

from ...engine.continuous import ContinuousBatch
from ...engine.layout import SequenceLayout
from ...engine.positions import PositionState
from ...engine.results import RowStep
from .generator_rows import RunningBatches, track

if TYPE_CHECKING:
    from ...engine.model import Steerable


class GeneratorLayout(SequenceLayout):
    """The rows of a ``BatchGenerator``'s forwards: the uids of the batch running the forward, which
    the generator's batches register while they run (:mod:`.generator_rows`)."""

    def __init__(self, running: RunningBatches, *, key_base: int | None = None) -> None:
        super().__init__(key_base=key_base)
        self.running = running

    def current(self, cache: object) -> tuple[list[int], bool]:
        return self.running.current(cache)


def generate_rows(
    mlx_model: Any, state: PositionState, tokens: list[list[int]], *, max_tokens: int, sampler: Any, processors: list,
    prefill_step_size: int, stop_tokens: list[int], caches: list[list[Any]] | None = None,
) -> Iterator[RowStep]:
    """Every row's tokens as mlx-lm's ``BatchGenerator`` makes them; row keys are prompt indices.
    With ``caches`` (per row, mlx-lm caches holding its prompt but the last token), each row starts
    there: only its last prompt token is inserted, and it goes straight to decoding."""
    from mlx_lm.generate import BatchGenerator

    B = len(tokens)
    gen = BatchGenerator(mlx_model, max_tokens=max_tokens, stop_tokens=[[t] for t in stop_tokens],
                         sampler=sampler, completion_batch_size=B, prefill_batch_size=B,
                         prefill_step_size=prefill_step_size)
    layout = GeneratorLayout(track(gen), key_base=0)
    try:
        uids = gen.insert(tokens if caches is None else [t[-1:] for t in tokens], max_tokens=[max_tokens] * B,
                          caches=caches, all_tokens=None if caches is None else [t[:-1] for t in tokens],
                          logits_processors=[list(processors)] * B)
        for uid, t in zip(uids, tokens):  # uids are 0..B-1: row keys are prompt indices
            layout.add(uid, prompt_len=len(t))
        with state.laid_out(layout):
            while responses := gen.next_generated():
                for r in responses:
                    yield RowStep(r.uid, int(r.token), r.finish_reason)
    finally:
        gen.close()

class GeneratorLoop:
    """The MLX backend's :class:`~mlx_steer.engine.protocols.BatchLoop`: mlx-lm's ``BatchGenerator``
    schedules prefill and decoding; its batches say which sequences each forward holds."""

    def __init__(self, mlx_model: Any, *, eos: Collection[int], completion_batch_size: int = 32,
                 prefill_batch_size: int = 8, prefill_step_size: int = 2048, max_kv_size: int | None = None):
        from mlx_lm.generate import BatchGenerator

        self.generator = BatchGenerator(
            mlx_model, stop_tokens=[[t] for t in sorted(eos)],
            completion_batch_size=completion_batch_size, prefill_batch_size=prefill_batch_size,
            prefill_step_size=prefill_step_size, max_kv_size=max_kv_size,
        )
        self.layout = GeneratorLayout(track(self.generator))

    def enqueue(self, prompt: list[int], *, max_tokens: int, sampler: Any, logits_processors: list) -> int:
        return int(self.generator.insert([prompt], max_tokens=[max_tokens],
                                         samplers=None if sampler is None else [sampler],
                                         logits_processors=[logits_processors])[0])

    def dequeue(self, uid: int) -> None:
        self.generator.remove([uid])

    def next(self) -> list[tuple[int, int, Any, str | None]]:
        return [(r.uid, int(r.token), r.logprobs, r.finish_reason) for r in self.generator.next_generated()]

    def close(self) -> None:
        self.generator.close()


class SteeredBatchGenerator(ContinuousBatch):
    """Continuous batching with per-sequence steering on mlx-lm's ``BatchGenerator`` (which
    schedules prefill and decoding); see :class:`~mlx_steer.engine.continuous.ContinuousBatch`.

    Args:
        model: The steerable model.
        completion_batch_size, prefill_batch_size, prefill_step_size, max_kv_size: as for
            mlx-lm's ``BatchGenerator``.
    """

    def __init__(self, model: Steerable, *, completion_batch_size: int = 32, prefill_batch_size: int = 8,
                 prefill_step_size: int = 2048, max_kv_size: int | None = None):
        loop = model.backend.batch_loop(completion_batch_size=completion_batch_size,
                                        prefill_batch_size=prefill_batch_size,
                                        prefill_step_size=prefill_step_size, max_kv_size=max_kv_size)
        super().__init__(model.backend, loop, calls=model.calls, registry=model.registry)
