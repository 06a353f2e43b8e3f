"""Installed hooks: what runs at each site (:class:`SiteProgram`), live per-row reads
(:class:`Watch`), and the handle that owns them until removed (:class:`Hooks`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from .activations import Activations
from .ops import Op
from .paths import Site
from .positions import PositionState
from .recording import Recorder
from .site_plan import SitePlan

if TYPE_CHECKING:
    from .backend import Array, Undo
    from .steerable import Steerable


class SiteProgram:
    """What runs at one site: its ops in order, and its recorder and watches, which read the
    activation after the ops (what flows on) or, when asked, before them (the model's own value)."""

    def __init__(self, site: Site, ops: list[Op], recorder: Recorder | None, state: PositionState, *,
                 record_before: bool = False):
        self.site, self.ops, self.recorder, self.state = site, ops, recorder, state
        self.record_before = record_before
        self.watches: list[Watch] = []

    def __call__(self, h: Array) -> Array:
        own = h
        for op in self.ops:
            h = op(h, self.state)
        if self.recorder is not None:
            self.recorder(own if self.record_before else h)
        for w in self.watches:
            w(own if w.before_interventions else h)
        return h


class Watch:
    """The last position of every row of each forward at one site, keyed by row (see
    :meth:`Hooks.watch`): what a live monitor reads, one value per forward a row takes part in.

    ``take(row)`` returns the oldest unread (D,) float32 value of that row, in forward order.
    """

    def __init__(self, site: Site, state: PositionState, *, before_interventions: bool, only: Any = None):
        self.site, self.state, self.before_interventions = site, state, before_interventions
        self.only = only  # a callable () -> bool: read this forward? (e.g. decode steps only)
        self._pending: list[tuple[np.ndarray, Array]] = []  # (row keys, (B, D) lazy)
        self._ready: dict[int, list[np.ndarray]] = {}
        self._gone: set[int] = set()

    def __call__(self, h: Array) -> None:
        if self.only is None or self.only():
            self._pending.append((np.array(self.state.rows), h[:, -1]))

    def take(self, row: int) -> np.ndarray | None:
        """The oldest unread value of ``row`` (None when there is none)."""
        if self._pending:
            for rows, values in self._pending:
                host = self.state.xp.to_numpy(values)
                for key, value in zip(rows.tolist(), host):
                    if key not in self._gone:
                        self._ready.setdefault(key, []).append(value)
            self._pending = []
        queue = self._ready.get(row)
        return queue.pop(0) if queue else None

    def forget(self, row: int) -> None:
        """Drop ``row``'s values, and any it still gets (its sequence is gone)."""
        self._ready.pop(row, None)
        self._gone.add(row)


class Hooks:
    """Installed interventions and recorders; undone by :meth:`remove` (or leaving ``with``).

    Every site's ops are compiled (validated) before anything is attached, so bad input leaves
    the model untouched; a failure while attaching undoes what was done. ``activations`` holds
    what the recorders collected so far (concatenated over forwards). Interventions for one
    batch row can be assigned and released while the hooks stay installed (:meth:`assign`).
    """

    def __init__(self, owner: Steerable, plans: Mapping[str, SitePlan], reduce: str | None):
        self._owner = owner
        self._undo: list[Undo] = []
        owner.__dict__.setdefault("_live_hooks", {})[id(self)] = self  # until removed, dropped or not
        self._programs = {key: owner._program(plan, reduce) for key, plan in plans.items()}
        self.recorders = {k: p.recorder for k, p in self._programs.items() if p.recorder is not None}
        try:
            self._undo.append(owner.attach_tracker())
            for program in self._programs.values():
                self._attach(program)
        except BaseException:
            self.remove()
            raise
        self.activations = Activations({k: r.result for k, r in self.recorders.items()}, owner.resolve_key)

    def _attach(self, program: SiteProgram) -> None:
        self._undo.append(self._owner.attach(program.site.path, program.site.point, program))

    def assign(self, row: int, interventions: Mapping | Any = None, *,
               plans: Mapping[str, SitePlan] | None = None) -> None:
        """Steer batch row ``row`` (a row key) with ``interventions`` from the next forward on,
        replacing what it had. Validated in full before anything changes; ``plans``: the
        interventions already planned (what the model's planning made of them), not planned again."""
        if plans is None:
            plans = self._owner._plan(interventions=interventions)
        compiled = {key: [self._owner._compile(plan.site, i.for_rows(row)) for i in plan.interventions]
                    for key, plan in plans.items()}
        self.release(row)
        for key, ops in compiled.items():
            program = self._programs.get(key)
            if program is None:
                program = self._programs[key] = SiteProgram(plans[key].site, [], None, self._owner.state)
                self._attach(program)
            program.ops.extend(ops)

    def watch(self, site: str | Site, *, before_interventions: bool = False, only: Any = None) -> Watch:
        """Start reading ``site``'s last position of every row at each forward (see :class:`Watch`);
        ``before_interventions`` reads the model's own value rather than the steered one."""
        resolved = self._owner.resolve(site)
        program = self._programs.get(resolved.key)
        if program is None:
            program = self._programs[resolved.key] = SiteProgram(resolved, [], None, self._owner.state)
            self._attach(program)
        watch = Watch(resolved, self._owner.state, before_interventions=before_interventions, only=only)
        program.watches.append(watch)
        return watch

    def release(self, row: int) -> None:
        """Drop the interventions :meth:`assign` gave row ``row`` (other rows keep theirs)."""
        only = frozenset({row})
        for program in self._programs.values():
            program.ops = [op for op in program.ops if op.rows != only]

    def remove(self) -> None:
        """Undo every patch this object made, newest first (idempotent)."""
        while self._undo:
            self._undo.pop()()
        self._owner.__dict__.get("_live_hooks", {}).pop(id(self), None)

    def flush(self) -> None:
        """Hand pending recordings to the backend at a loop boundary (MLX schedules them)."""
        pending = [a for r in self.recorders.values() for a in r.pending()]
        if pending:
            self._owner.xp.schedule(pending)

    def __enter__(self) -> Hooks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
