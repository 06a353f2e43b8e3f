"""Continuous batching with per-sequence steering, written once for every backend.

Sequences join (:meth:`ContinuousBatch.insert`) and leave (:meth:`ContinuousBatch.remove`, or by
finishing) between steps. One set of hooks stays installed; each sequence's interventions are
scoped to its uid (its row key), so they follow it however the batch is reordered, and
monitors read, for every token, the activation that produced it. A backend supplies the batch
loop (``_enqueue``, ``_dequeue``, ``_next``) and the layout that tells the position tracker
which uids a forward's rows are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .call_guard import CallGuard
from .compiling import CompiledSteering, sequence_steering
from .hooks import HookRegistry, Hooks
from .interventions import as_vector
from .layout import SequenceLayout
from .limits import check_length, check_loop

from .protocols import BatchLoop

if TYPE_CHECKING:
    from .protocols import Backend
    from .site_program import Watch

__all__ = ["BatchLoop", "ContinuousBatch", "Monitor", "SequenceLayout", "StepEvent"]


@dataclass(frozen=True)
class Monitor:
    """Read ``site``'s activation along ``direction`` (normalized) for every generated token;
    ``before_interventions`` reads the model's own value rather than the steered one."""

    site: str
    direction: Any
    before_interventions: bool = False


@dataclass
class StepEvent:
    """One token of one sequence from :meth:`ContinuousBatch.step`.

    Attributes:
        uid: The sequence.
        token: The token id (the EOS itself when ``finish_reason == "stop"``).
        logprobs: (V,) float32 numpy log-probabilities it was sampled from.
        finish_reason: None, ``"stop"`` (EOS) or ``"length"``.
        projections: Per monitor name, the projection of the activation that produced this
            token (the monitor's site, last position) on the monitor's unit direction.
        conditions: On a conditionally steered sequence's first token: each rule's decision on
            its prompt, ``{"met": bool, "values": {condition name: value}}`` (None otherwise).
    """

    uid: int
    token: int
    logprobs: np.ndarray
    finish_reason: str | None
    projections: dict[str, float] = field(default_factory=dict)
    conditions: list[dict[str, Any]] | None = None


class ContinuousBatch:
    """The shared part of a backend's continuous batch: validation, per-uid steering, monitors, over
    the backend's :class:`~mlx_steer.engine.protocols.BatchLoop`.

    Use from one thread; close it (or use ``with``) to undo every patch.

    Args:
        backend: The model's backend.
        loop: The backend's batch loop.
        calls: The model's call guard (each step is one call).
        registry: The model's registry of live hooks.
    """

    def __init__(self, backend: Backend, loop: BatchLoop, *, calls: CallGuard, registry: HookRegistry | None = None):
        self.backend, self.loop, self.layout, self.calls = backend, loop, loop.layout, calls
        self.hooks = Hooks(backend, {}, None, registry=registry)
        self._watches: dict[tuple[str, bool], Watch] = {}
        self._monitors: dict[int, dict[str, tuple[Watch, np.ndarray]]] = {}
        self._gated: set[int] = set()  # conditionally steered sequences not yet reported

    def insert(self, prompt: Sequence[int], *, max_tokens: int, interventions: Any = None,
               monitors: dict[str, Monitor] | None = None, steering: CompiledSteering | None = None,
               **sampling: Any) -> int:
        """Queue a sequence; returns its uid. Everything is validated before it is queued.

        Args:
            prompt: Token ids.
            max_tokens: Tokens to generate at most.
            interventions: ``{site: intervention(s)}`` or a SteeringVector, for this sequence only.
            monitors: ``{name: Monitor}`` read for every token of this sequence.
            steering: Instead of ``interventions``: this sequence's steering already planned,
                checked against its prompt and ``max_tokens`` and compiled (the model's
                ``compile_steering``), e.g. by a server's request planner.
            sampling: ``temp, top_p, min_p, top_k, repetition_penalty, repetition_context_size,
                logits_processors, sampler`` as for ``stream_generate`` (default greedy).

        Raises:
            ValueError: bad interventions, sites, positions, monitors or options.
        """
        check_loop(max_tokens, sampling)
        prompt = self.backend.prompts.encode(prompt)
        if steering is None:  # planned, checked (the length too) and compiled here
            steering = sequence_steering(self.backend, interventions, prompt_len=len(prompt), max_tokens=max_tokens)
        elif interventions is not None:
            raise ValueError("give interventions or compiled steering, not both")
        else:
            check_length(self.backend.max_positions, len(prompt) + max_tokens, "prompt + max_tokens")
        reads = {name: (self.backend.resolver.resolve(m.site), _unit(m.direction, self.backend.hidden_size, name), m)
                 for name, m in (monitors or {}).items()}
        sampler, processors = self.backend.sampling(**sampling)
        uid = self.loop.enqueue(prompt, max_tokens=max_tokens, sampler=sampler, logits_processors=processors)
        try:
            self.hooks.assign(self.layout.base + uid, steering=steering)  # planned and checked once
            if steering.gated:
                self._gated.add(uid)
            self._monitors[uid] = {name: (self._watch(site.key, m.before_interventions), unit)
                                   for name, (site, unit, m) in reads.items()}
        except BaseException:
            self.remove(uid)
            raise
        self.layout.add(uid, prompt_len=len(prompt))
        return uid

    def remove(self, uid: int) -> None:
        """Drop a sequence at once (e.g. its client went away); its row leaves the batch."""
        self.loop.dequeue(uid)
        self._forget(uid)

    def step(self) -> list[StepEvent]:
        """Run until some sequence has a new token; [] when nothing is queued or running."""
        with self.calls("a batch generator step"), self.backend.state.laid_out(self.layout):
            raw = self.loop.next()
        events = []
        for uid, token, logprobs, reason in raw:
            projections = {}
            for name, (watch, unit) in self._monitors.get(uid, {}).items():
                value = watch.take(self.layout.base + uid)
                if value is not None:
                    projections[name] = float(value @ unit)
            conditions = None
            if uid in self._gated:  # its prompt has been read: the first token came from it
                self._gated.discard(uid)
                conditions = self.hooks.conditions(self.layout.base + uid)
            events.append(StepEvent(uid, token, self.backend.xp.to_numpy(logprobs), reason, projections, conditions))
            if reason is not None:
                self._forget(uid)
        return events

    @property
    def active(self) -> int:
        """Sequences queued or running."""
        return len(self.layout.length_of)

    def close(self) -> None:
        """Undo every patch and release the backend's loop (idempotent)."""
        self.hooks.remove()
        self.loop.close()

    def __enter__(self) -> ContinuousBatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _watch(self, site: str, before: bool) -> Watch:
        w = self._watches.get((site, before))
        if w is None:
            w = self._watches[(site, before)] = self.hooks.watch(
                site, before_interventions=before, only=lambda: self.layout.decoding)
        return w

    def _forget(self, uid: int) -> None:
        self.hooks.release(self.layout.base + uid)
        self.layout.drop(uid)
        for w in self._watches.values():
            w.forget(self.layout.base + uid)
        self._monitors.pop(uid, None)
        self._gated.discard(uid)


def _unit(direction: object, hidden: int, name: str) -> np.ndarray:
    d = as_vector(direction, what=f"monitor {name!r} direction").astype(np.float64)
    if d.shape != (hidden,):
        raise ValueError(f"monitor {name!r} direction has shape {d.shape}; the model's hidden size is {hidden}")
    norm = float(np.linalg.norm(d))
    if norm == 0.0:
        raise ValueError(f"monitor {name!r} direction has zero norm")
    return (d / norm).astype(np.float32)
