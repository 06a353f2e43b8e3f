"""One sequence at a time, for a backend without continuous batching (``batch_generator`` raises
NotImplementedError): the same ``insert / step / remove / active / close`` as
:class:`~mlx_steer.engine.continuous.ContinuousBatch`, over the model's ``stream_generate``.

Requests still queue and stream; they just run one after another. Monitors record the monitored
sites' last position at every forward and project them, as the batch's monitors do.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..engine.continuous import Monitor, StepEvent


@dataclass
class _Sequence:
    uid: int
    steps: Iterator[Any]
    monitors: dict[str, tuple[str, np.ndarray]]
    hooks: list = field(default_factory=list)
    n: int = 0


class SerialBatch:
    """Sequences queue and run one at a time through ``model.stream_generate``."""

    def __init__(self, model: Any):
        self.model = model
        self._queue: deque[_Sequence] = deque()
        self._current: _Sequence | None = None
        self._uid = 0

    def insert(self, prompt: Sequence[int], *, max_tokens: int, interventions: Any = None,
               monitors: dict[str, Monitor] | None = None, **sampling: Any) -> int:
        """Queue a sequence (validated now, as ``stream_generate`` checks its arguments at the call);
        it plans ``interventions`` itself, so the engine gives it those rather than compiled steering."""
        monitors = monitors or {}
        stages = {m.before_interventions for m in monitors.values()}
        if len(stages) > 1:
            raise ValueError("one sequence's monitors must all read before steering or all after it "
                             "(this backend runs sequences one at a time)")
        units = {name: (m.site, _unit(m.direction, self.model.hidden_size, name)) for name, m in monitors.items()}
        seq = _Sequence(self._uid, iter(()), units)
        seq.steps = self.model.stream_generate(
            list(prompt), max_tokens=max_tokens, interventions=interventions,
            record=sorted({site for site, _ in units.values()}) or None, record_positions="last",
            record_stage="before" if stages == {True} else "after", hooks_out=seq.hooks, **sampling)
        self._uid += 1
        self._queue.append(seq)
        return seq.uid

    def remove(self, uid: int) -> None:
        """Drop a sequence at once (its hooks come off if it is running)."""
        if self._current is not None and self._current.uid == uid:
            self._close_current()
        else:
            self._queue = deque(s for s in self._queue if s.uid != uid)

    def step(self) -> list[StepEvent]:
        """The running sequence's next token ([] when nothing is queued)."""
        if self._current is None:
            if not self._queue:
                return []
            self._current = self._queue.popleft()
        seq = self._current
        try:
            r = next(seq.steps)
        except StopIteration:
            self._close_current()
            return []
        projections = {}
        if seq.monitors and seq.hooks:
            acts = seq.hooks[0].activations
            for name, (site, unit) in seq.monitors.items():
                values = self.model.to_numpy(acts[site])[0]
                if seq.n < len(values):
                    projections[name] = float(values[seq.n] @ unit)
        seq.n += 1
        reason = r.finish_reason
        if reason is not None:
            self._close_current()
        return [StepEvent(seq.uid, int(r.token), self.model.to_numpy(r.logprobs).reshape(-1), reason, projections)]

    @property
    def active(self) -> int:
        return len(self._queue) + (self._current is not None)

    def close(self) -> None:
        self._close_current()
        self._queue.clear()

    def _close_current(self) -> None:
        if self._current is not None:
            steps = self._current.steps
            self._current = None
            close = getattr(steps, "close", None)
            if close is not None:
                close()  # leaves the generation loop: its hooks are removed


def _unit(direction: Any, hidden: int, name: str) -> np.ndarray:
    d = np.asarray(direction, dtype=np.float64).reshape(-1)
    if d.shape != (hidden,) or not np.all(np.isfinite(d)) or not np.any(d):
        raise ValueError(f"monitor {name!r} direction must be a finite non-zero ({hidden},) vector, got shape {d.shape}")
    return (d / np.linalg.norm(d)).astype(np.float32)
