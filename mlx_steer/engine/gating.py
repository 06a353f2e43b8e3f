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
    """Reads one site's activation at the prompt positions of the rows it follows (all rows, or
    ``rows``), position by position: a later forward's value of a position replaces an earlier one
    (mlx-lm's batch prefill right-pads a short row, so its last prompt positions are first computed
    as padding, then for real). A row's values are final once its forwards are past its prompt."""

    def __init__(self, site: Site, state: PositionState, rows: frozenset[int] | None):
        self.site, self.state, self.rows = site, state, rows
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, Array]] = []
        self._rows: dict[int, tuple[int, int, dict[int, np.ndarray]]] = {}  # key -> (start, end, pos -> value)

    def __call__(self, h: Array) -> None:
        st = self.state
        keys = np.asarray(st.rows, dtype=np.int64)
        start, end = np.asarray(st.prompt_start).reshape(-1), np.asarray(st.prompt_len).reshape(-1)
        prompt = (st.pos >= 0) & (st.pos >= start[:, None]) & (st.pos < end[:, None])
        if self.rows is not None:
            prompt &= np.isin(keys, list(self.rows))[:, None]
        if prompt.any():
            xp: ArrayOps = st.xp
            self._pending.append((keys, start, end, st.pos.copy(), prompt, xp.float32(h)))

    def _settle(self) -> None:
        xp = self.state.xp
        for keys, start, end, pos, prompt, h in self._pending:
            host = xp.to_numpy(h)
            for b, key in enumerate(keys.tolist()):
                cols = np.flatnonzero(prompt[b])
                if cols.size:
                    _, _, table = self._rows.setdefault(key, (int(start[b]), int(end[b]), {}))
                    for col in cols.tolist():
                        table[int(pos[b, col])] = host[b, col].astype(np.float64)
        self._pending = []

    def read(self, key: int) -> tuple[np.ndarray, float, np.ndarray] | None:
        """``(sum, count, last)`` over row ``key``'s prompt positions (None before its last one was read);
        ask once the row's forwards are past its prompt."""
        if self._pending:
            self._settle()
        row = self._rows.get(key)
        if row is None or row[1] - 1 not in row[2]:
            return None
        start, end, table = row
        values = [table[p] for p in range(start, end) if p in table]
        return np.sum(values, axis=0), float(len(values)), table[end - 1]

    def forget(self, key: int) -> None:
        self._rows.pop(key, None)


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
        # a row is decided in a forward wholly past its prompt (a generated token's): every prompt position
        # has been computed for real by then, while a prefill may still hold right-padding in its place
        plen = np.asarray(state.prompt_len).reshape(-1, 1)
        past = np.asarray(((state.pos >= plen) | (state.pos < 0)).all(1) & (state.pos >= plen).any(1))
        keys = [int(k) for k in np.asarray(state.rows).tolist()]
        met = frozenset(k for k, after in zip(keys, past.tolist()) if after
                        and (self.inner.rows is None or k in self.inner.rows)
                        and (d := self.decision(k)) is not None and d[0])
        if not met:
            return h
        # on generated tokens only: a row's prompt is read before its decision, never steered by it
        host = state.host_mask(self.inner.sel, met) & (state.pos >= np.asarray(state.prompt_len).reshape(-1, 1))
        if not host.any():
            return h
        new = self.inner.apply(h, state)
        return new if host.all() else self.xp.where(self.xp.mask(host[..., None], like=h), new, h)
