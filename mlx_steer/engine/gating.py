"""What runs a condition (see :mod:`mlx_steer.engine.conditions`): a reader of a site's activation
over each row's prompt, and the op that gates an intervention on each row's decision."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import numpy as np

from .conditions import Rule
from .ops import Op
from .paths import Site

if TYPE_CHECKING:
    from .arrays import Array, ArrayOps
    from .positions import PositionState

__all__ = ["ConditionReader", "GatedOp"]


class ConditionReader:
    """Reads one site's activation over the prompts of the rows it follows (all rows, or ``rows``):
    each row's sum over its prompt tokens, their count and its last token, kept lazily until asked."""

    def __init__(self, site: Site, state: PositionState, rows: frozenset[int] | None):
        self.site, self.state, self.rows = site, state, rows
        self._pending: list[tuple[np.ndarray, Array, np.ndarray, Array, np.ndarray]] = []
        self._rows: dict[int, list[Any]] = {}  # key -> [sum, count, last or None]

    def __call__(self, h: Array) -> None:
        st = self.state
        keys = np.asarray(st.rows, dtype=np.int64)
        start, end = np.asarray(st.prompt_start).reshape(-1, 1), np.asarray(st.prompt_len).reshape(-1, 1)
        prompt = (st.pos >= 0) & (st.pos >= start) & (st.pos < end)
        if self.rows is not None:
            prompt &= np.isin(keys, list(self.rows))[:, None]
        if not prompt.any():
            return
        xp: ArrayOps = st.xp
        weights = prompt.astype(np.float32)
        is_last = prompt & (st.pos == end - 1)
        has_last = is_last.any(1)
        idx = np.where(has_last, is_last.argmax(1), 0).reshape(-1, 1)
        self._pending.append((keys, xp.weighted_sum(h, weights), weights.sum(1),
                              xp.float32(xp.take_along_rows(h, idx))[:, 0], has_last))

    def _settle(self) -> None:
        xp = self.state.xp
        for keys, sums, counts, last, has_last in self._pending:
            sums_h, last_h = xp.to_numpy(sums), xp.to_numpy(last)
            for b, key in enumerate(keys.tolist()):
                if counts[b] == 0:
                    continue
                row = self._rows.setdefault(key, [0.0, 0.0, None])
                row[0], row[1] = row[0] + sums_h[b].astype(np.float64), row[1] + float(counts[b])
                if has_last[b]:
                    row[2] = last_h[b].astype(np.float64)
        self._pending = []

    def read(self, key: int) -> tuple[np.ndarray, float, np.ndarray] | None:
        """``(sum, count, last)`` of row ``key``'s prompt once its last token was read (else None)."""
        if self._pending:
            self._settle()
        row = self._rows.get(key)
        return None if row is None or row[2] is None else (row[0], row[1], row[2])


class GatedOp(Op):
    """An op acting on a row only where its rule holds for that row (see the module doc).

    Args:
        inner: The op it gates.
        rule: The rule, its conditions' sites resolved.
        state: The position state its readers read.
    """

    def __init__(self, inner: Op, rule: Rule, state: PositionState):
        self.inner, self.rule, self.state = inner, rule, state
        self.sel, self.site, self.xp = inner.sel, inner.site, inner.xp
        self.readers = {id(leaf): ConditionReader(leaf.site, state, inner.rows) for leaf in rule.leaves()
                        if isinstance(leaf.site, Site)}
        self.decided: dict[int, tuple[bool, dict[str, float]]] = {}

    @property
    def rows(self) -> frozenset[int] | None:
        return self.inner.rows

    @rows.setter
    def rows(self, value: frozenset[int] | None) -> None:
        self.inner.rows = value
        for reader in self.readers.values():
            reader.rows = value

    def fresh(self) -> GatedOp:
        """A copy with its own readers, nothing read yet (one per sequence or call)."""
        return GatedOp(copy.copy(self.inner), self.rule, self.state)

    def reader_sites(self) -> list[tuple[Site, ConditionReader]]:
        """Where its readers must be installed."""
        return [(leaf.site, self.readers[id(leaf)]) for leaf in self.rule.leaves() if isinstance(leaf.site, Site)]

    def decision(self, key: int) -> tuple[bool, dict[str, float]] | None:
        """``(holds, {condition name: value})`` for row ``key`` once its prompt was read."""
        known = self.decided.get(key)
        if known is not None:
            return known
        values: dict[int, float] = {}
        for leaf in self.rule.leaves():
            read = self.readers[id(leaf)].read(key)
            if read is None:
                return None
            values[id(leaf)] = leaf.value(*read)
        out = (self.rule.holds(values), {leaf.name: values[id(leaf)] for leaf in self.rule.leaves()})
        self.decided[key] = out
        return out

    def __call__(self, h: Array, state: PositionState) -> Array:
        keys = [int(k) for k in np.asarray(state.rows).tolist()]
        met = frozenset(k for k in keys if (self.inner.rows is None or k in self.inner.rows)
                        and (d := self.decision(k)) is not None and d[0])
        if not met:
            return h
        mask = state.mask(self.inner.sel, met, like=h)
        if mask is False:
            return h
        new = self.inner.apply(h, state)
        return new if mask is True else self.xp.where(mask, new, h)
