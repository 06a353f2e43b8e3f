"""Recorders: keep a site's activations at selected positions, written once for every backend.

A recorder keeps contiguous copies (a slice would keep its whole source buffer alive), either
the selected positions (B, T, D), concatenated over forwards, or their per-row mean (B, D) in
float32 (``reduce="mean"``).
"""

from __future__ import annotations

import numpy as np

from .arrays import Array, ArrayOps
from .positions import Positions, PositionState, Selection, plan_selection

REDUCTIONS = (None, "mean")


class Recorder:
    """Collects one site's activations.

    Args:
        state: The model's position state (which positions this forward holds).
        positions: Which positions to keep.
        reduce: ``None`` keeps positions (B, T, D); ``"mean"`` averages them per row (B, D).
    """

    def __init__(self, state: PositionState, positions: Positions, reduce: str | None, *, site: str):
        self.state, self.positions, self.reduce, self.site = state, positions, reduce, site
        self.xp: ArrayOps = state.xp
        self.chunks: list[Array] = []
        self.sum: Array | None = None
        self.count = np.zeros(0)
        self._evaluated = 0  # chunks[:_evaluated] were handed to the backend by pending()

    def __call__(self, h: Array) -> Array:
        host = self.state.host_mask(self.positions)
        self._check_rows(h.shape[0])
        if self.reduce == "mean":
            s = self.xp.weighted_sum(h, host.astype(np.float32))
            self.sum = s if self.sum is None else self.sum + s
            self.count = host.sum(axis=1) + (self.count if self.count.size else 0)
        elif self.positions.kind == "all":
            self.chunks.append(self.xp.copy(h))
        else:
            part = gather(self.xp, h, plan_selection(host))
            if part is not None:
                self.chunks.append(self.xp.copy(part))
        return h

    def _check_rows(self, batch: int) -> None:
        """Forwards of different batch sizes cannot be stacked into one result."""
        seen = self.sum.shape[0] if self.sum is not None else self.chunks[0].shape[0] if self.chunks else None
        if seen is not None and seen != batch:
            raise ValueError(
                f"recording {self.site!r} saw a forward of {batch} rows after forwards of {seen} rows; "
                "record each batch size in its own call (e.g. one model.run per batch)"
            )

    def reset(self) -> None:
        self.chunks, self.sum, self.count, self._evaluated = [], None, np.zeros(0), 0

    def set_result(self, value: Array) -> None:
        """Replace what was collected (used when a batch was run row by row)."""
        self.reset()
        if self.reduce == "mean":
            self.sum, self.count = value, np.ones(value.shape[0])
        else:
            self.chunks = [value]

    def pending(self) -> list[Array]:
        """Recorded pieces to compute at a loop boundary. The newest piece is left alone: in
        mlx-lm's loop it belongs to the step being computed asynchronously right now."""
        out = self.chunks[self._evaluated : -1]
        self._evaluated = max(self._evaluated, len(self.chunks) - 1)
        return out

    def result(self) -> Array | None:
        """What was recorded so far: (B, T, D), (B, D) with ``reduce="mean"``, or None."""
        if self.reduce == "mean":
            return None if self.sum is None else self.xp.divide_rows(self.sum, np.maximum(self.count, 1))
        if not self.chunks:
            return None
        if len(self.chunks) > 1:  # one array, so the per-forward pieces can be freed
            self.chunks, self._evaluated = [self.xp.concatenate(self.chunks, axis=1)], 0
        return self.chunks[0]


def gather(xp: ArrayOps, h: Array, sel: Selection) -> Array | None:
    """The positions ``sel`` of ``h`` (B, L, D); None when nothing is selected."""
    if sel.kind == "none":
        return None
    if sel.kind == "range":
        return h[:, sel.start : sel.stop]
    if sel.kind == "per_row":
        assert sel.idx is not None  # plan_selection sets idx for per_row, cols for the others
        return xp.take_along_rows(h, sel.idx)
    assert sel.cols is not None
    part = h[:, xp.index(sel.cols, like=h)]
    if sel.kind == "columns":
        return part
    assert sel.keep is not None
    return xp.where(xp.mask(sel.keep[..., None], like=h), part, xp.zeros_like(part))
