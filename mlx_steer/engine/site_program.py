"""What runs at one installed site (:class:`SiteProgram`: its ops, recorder and watches), and a
live per-row read of a site (:class:`Watch`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .ops import Op
from .paths import Site
from .positions import PositionState
from .recording import Recorder

if TYPE_CHECKING:
    from .arrays import Array

__all__ = ["SiteProgram", "Watch"]


class SiteProgram:
    """What runs at one site: its ops in order, and its recorder and watches, which read the
    activation after the ops (what flows on) or, when asked, before them (the model's own value)."""

    def __init__(self, site: Site, ops: list[Op], recorder: Recorder | None, state: PositionState, *,
                 record_before: bool = False):
        self.site, self.ops, self.recorder, self.state = site, ops, recorder, state
        self.record_before = record_before
        self.watches: list[Watch] = []
        self.readers: list[Any] = []  # condition readers (mlx_steer.engine.gating): the model's own value

    def __call__(self, h: Array) -> Array:
        own = h
        for reader in self.readers:
            reader(own)
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
