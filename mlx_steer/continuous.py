"""Continuous batching with per-sequence steering, written once for every backend.

Sequences join (:meth:`ContinuousBatch.insert`) and leave (:meth:`ContinuousBatch.remove`, or by
finishing) between steps. One set of hooks stays installed; each sequence's interventions are
scoped to its uid (its row key), so they follow it however the batch is reordered, and
monitors read, for every token, the activation that produced it. A backend supplies the batch
loop (``_enqueue``, ``_dequeue``, ``_next``) and the layout that tells the position tracker
which uids a forward's rows are.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from .interventions import as_vector
from .layout import Layout
from .site_plan import check_plans
from .steerable import check_loop

if TYPE_CHECKING:
    from .hooks import Watch
    from .steerable import Steerable


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
    """

    uid: int
    token: int
    logprobs: np.ndarray
    finish_reason: str | None
    projections: dict[str, float] = field(default_factory=dict)


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

    def add(self, uid: int, *, prompt_len: int) -> None:
        self.length_of[uid] = prompt_len

    def drop(self, uid: int) -> None:
        self.length_of.pop(uid, None)

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


class BatchLoop(Protocol):
    """What a backend supplies to a continuous batch: its scheduler, and the layout that says which
    sequences each of its forwards holds. :class:`ContinuousBatch` holds one."""

    @property
    def layout(self) -> SequenceLayout:
        """Which sequences each forward of the loop holds."""
        ...

    def enqueue(self, prompt: list[int], *, max_tokens: int, sampler: Any, logits_processors: list) -> int:
        """Queue a checked sequence; returns its uid."""
        ...

    def dequeue(self, uid: int) -> None:
        """Drop a sequence, queued or running."""
        ...

    def next(self) -> list[tuple[int, int, Any, str | None]]:
        """Run until some sequence has a token: ``(uid, token, logprobs, finish_reason)`` each."""
        ...

    def close(self) -> None:
        """Release the loop."""
        ...


class ContinuousBatch:
    """The shared part of a backend's continuous batch: validation, per-uid steering, monitors, over
    the backend's :class:`BatchLoop`.

    Use from one thread; close it (or use ``with``) to undo every patch.
    """

    def __init__(self, model: Steerable, loop: BatchLoop):
        self.model, self.loop, self.layout = model, loop, loop.layout
        self.hooks = model.hooks()
        self._watches: dict[tuple[str, bool], Watch] = {}
        self._monitors: dict[int, dict[str, tuple[Watch, np.ndarray]]] = {}

    def insert(self, prompt: Sequence[int], *, max_tokens: int, interventions: Any = None,
               monitors: dict[str, Monitor] | None = None, **sampling: Any) -> int:
        """Queue a sequence; returns its uid. Everything is validated before it is queued.

        Args:
            prompt: Token ids.
            max_tokens: Tokens to generate at most.
            interventions: ``{site: intervention(s)}`` or a SteeringVector, for this sequence only.
            monitors: ``{name: Monitor}`` read for every token of this sequence.
            sampling: ``temp, top_p, min_p, top_k, repetition_penalty, repetition_context_size,
                logits_processors, sampler`` as for ``stream_generate`` (default greedy).

        Raises:
            ValueError: bad interventions, sites, positions, monitors or options.
        """
        check_loop(max_tokens, sampling)
        prompt = self.model.encode(prompt)
        self.model.check_length(len(prompt) + max_tokens, "prompt + max_tokens")
        plans = self.model._plan(interventions=interventions)
        check_plans(plans, limit=len(prompt) + max_tokens, prompt_len=len(prompt), what="prompt + max_tokens")
        reads = {name: (self.model.resolve(m.site), _unit(m.direction, self.model.hidden_size, name), m)
                 for name, m in (monitors or {}).items()}
        sampler, processors = self.model._sampling(**sampling)
        uid = self.loop.enqueue(prompt, max_tokens=max_tokens, sampler=sampler, logits_processors=processors)
        try:
            self.hooks.assign(self.layout.base + uid, plans=plans)  # planned and checked above: once
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
        with self.model.calls("a batch generator step"):
            self.model.state.layouts.append(self.layout)
            try:
                raw = self.loop.next()
            finally:
                self.model.state.layouts.remove(self.layout)
        events = []
        for uid, token, logprobs, reason in raw:
            projections = {}
            for name, (watch, unit) in self._monitors.get(uid, {}).items():
                value = watch.take(self.layout.base + uid)
                if value is not None:
                    projections[name] = float(value @ unit)
            events.append(StepEvent(uid, token, self.model.to_numpy(logprobs), reason, projections))
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


def _unit(direction: object, hidden: int, name: str) -> np.ndarray:
    d = as_vector(direction, what=f"monitor {name!r} direction").astype(np.float64)
    if d.shape != (hidden,):
        raise ValueError(f"monitor {name!r} direction has shape {d.shape}; the model's hidden size is {hidden}")
    norm = float(np.linalg.norm(d))
    if norm == 0.0:
        raise ValueError(f"monitor {name!r} direction has zero norm")
    return (d / norm).astype(np.float32)
