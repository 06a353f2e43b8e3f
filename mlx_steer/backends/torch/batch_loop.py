"""Continuous batching with per-sequence steering on the torch backend.

Sequences admitted at the same step form a cohort: one :class:`PaddedBatch` prefilled together
and then decoded one token per row per step; cohorts step in turn, so sequences join at any step
and leave (finish or are removed) without disturbing the others. A removed or finished row of a
live cohort is masked out of sampling (its row still computes until the cohort ends).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Collection
from typing import Any

import torch

from ...engine.layout import SequenceLayout
from .generation import PaddedBatch, log_probs


class _Sequence:
    def __init__(self, uid: int, prompt: list[int], max_tokens: int, sampler: Any, processors: list):
        self.uid, self.prompt, self.max_tokens = uid, prompt, max_tokens
        self.sampler, self.processors = sampler, processors
        self.generated = 0
        self.alive = True


class _Cohort:
    """Sequences prefilled together and decoded as one batch."""

    def __init__(self, hf_model: Any, seqs: list[_Sequence], *, pad_id: int, prefill_step_size: int,
                 logits_to_keep: Callable[[int], int]):
        self.seqs = seqs
        self.batch = PaddedBatch(hf_model, [s.prompt for s in seqs], pad_id=pad_id,
                                 prefill_step_size=prefill_step_size, logits_to_keep=logits_to_keep)
        self.contexts = [torch.tensor(s.prompt, dtype=torch.long, device=self.batch.device) for s in seqs]
        self.logits: torch.Tensor | None = None

    @property
    def uids(self) -> list[int]:
        return [s.uid for s in self.seqs]

    def advance(self, eos: Collection[int]) -> list[tuple[int, int, Any, str | None]]:
        """Sample every live row from the pending logits, then compute the next logits."""
        assert self.logits is not None
        logprobs = log_probs(self.logits, [s.processors for s in self.seqs], self.contexts)
        y = torch.zeros(len(self.seqs), dtype=torch.long, device=logprobs.device)
        groups: dict[int, list[int]] = {}
        for b, s in enumerate(self.seqs):
            if s.alive:
                groups.setdefault(id(s.sampler), []).append(b)
        for rows in groups.values():
            idx = torch.tensor(rows, device=logprobs.device)
            y[idx] = self.seqs[rows[0]].sampler(logprobs[idx]).reshape(-1).to(torch.long)
        out = []
        for b, (s, token) in enumerate(zip(self.seqs, y.tolist())):
            if not s.alive:
                continue
            s.generated += 1
            reason = "stop" if token in eos else "length" if s.generated >= s.max_tokens else None
            s.alive = reason is None
            out.append((s.uid, int(token), logprobs[b], reason))
        if any(s.alive for s in self.seqs):
            if any(s.processors for s in self.seqs):
                self.contexts = [torch.cat([c, y[b : b + 1]]) for b, c in enumerate(self.contexts)]
            self.logits = self.batch.step(y)
        return out


class CohortLayout(SequenceLayout):
    """A forward's rows are the uids of the cohort whose KV cache it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.cohorts: dict[int, _Cohort] = {}

    def current(self, cache: object) -> tuple[list[int], bool]:
        cohort = self.cohorts.get(id(cache))
        if cohort is None:
            raise RuntimeError("a forward inside batch generation that is not one of its cohorts")
        return cohort.uids, cohort.batch.sampling


class CohortLoop:
    """The torch backend's :class:`~mlx_steer.engine.protocols.BatchLoop`: cohorts of sequences admitted
    together, stepped in turn (see the module doc).

    Args:
        hf_model: The transformers model.
        pad_id, eos: The padding token and the tokens that end a sequence.
        logits_to_keep: ``wanted -> n`` positions of logits a forward keeps (all while the head is hooked).
        completion_batch_size: Most sequences decoding at once (others wait in the queue).
        prefill_batch_size: Most sequences admitted into one new cohort.
        prefill_step_size: Prompt tokens per prefill forward.
    """

    def __init__(self, hf_model: Any, *, pad_id: int, eos: Collection[int], logits_to_keep: Callable[[int], int],
                 completion_batch_size: int = 32, prefill_batch_size: int = 8, prefill_step_size: int = 2048):
        self.hf_model, self.pad_id, self.eos, self.logits_to_keep = hf_model, pad_id, eos, logits_to_keep
        self.completion_batch_size, self.prefill_batch_size = completion_batch_size, prefill_batch_size
        self.prefill_step_size = prefill_step_size
        self._queue: deque[_Sequence] = deque()
        self._cohorts: list[_Cohort] = []
        self._uids = 0
        self.layout = CohortLayout()

    def enqueue(self, prompt: list[int], *, max_tokens: int, sampler: Any, logits_processors: list) -> int:
        uid, self._uids = self._uids, self._uids + 1
        self._queue.append(_Sequence(uid, prompt, max_tokens, sampler, logits_processors))
        return uid

    def dequeue(self, uid: int) -> None:
        self._queue = deque(s for s in self._queue if s.uid != uid)
        for cohort in self._cohorts:
            for s in cohort.seqs:
                if s.uid == uid:
                    s.alive = False
        self._drop_finished()

    def _drop_finished(self) -> None:
        for cohort in [c for c in self._cohorts if not any(s.alive for s in c.seqs)]:
            self._cohorts.remove(cohort)
            self.layout.cohorts.pop(id(cohort.batch.cache), None)

    def next(self) -> list[tuple[int, int, Any, str | None]]:
        while True:
            running = sum(s.alive for c in self._cohorts for s in c.seqs)
            n = min(len(self._queue), self.prefill_batch_size, self.completion_batch_size - running)
            if n > 0:
                cohort = _Cohort(self.hf_model, [self._queue.popleft() for _ in range(n)], pad_id=self.pad_id,
                                 prefill_step_size=self.prefill_step_size, logits_to_keep=self.logits_to_keep)
                self.layout.cohorts[id(cohort.batch.cache)] = cohort
                self._cohorts.append(cohort)
                cohort.logits = cohort.batch.prefill()
            events = [e for c in list(self._cohorts) for e in c.advance(self.eos)]
            self._drop_finished()
            if events or not (self._cohorts or self._queue):
                return events

    def close(self) -> None:
        """Nothing to release: the cohorts' KV caches are plain tensors, freed with the batch."""
