"""Activation patching: each cell a batch row of the corrupted prompt with the clean activation
``set`` at its site and position(s) (the engine's per-row steering), so a whole sweep is a few
batched forwards; every row's metric equals that of its own solo run."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..engine import interventions as iv
from .pair import metric_rows
from .sweep import Cell, Sweep
from .table import PatchRow

if TYPE_CHECKING:
    from ..engine.gradients import Metric
    from ..engine.model import Steerable

__all__ = ["activation_rows", "cell_interventions"]


def cell_interventions(sweep: Sweep, cell: Cell) -> dict[str, list[iv.Intervention]]:
    """What one cell's row runs with: the clean value ``set`` at each patched position."""
    clean = sweep.clean[cell.site.key]
    return {cell.site.key: [iv.set(clean[c], positions=[q]) for c, q in cell.pairs]}


def activation_rows(model: Steerable, sweep: Sweep, metric: Metric, *,
                    batch_size: int) -> tuple[float, list[PatchRow]]:
    """The corrupted prompt's metric, and one row per cell; rows run ``batch_size`` at a time (the
    first batch also carries the unpatched corrupted row)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    specs: list[dict | None] = [None] + [cell_interventions(sweep, c) for c in sweep.cells]
    values: list[float] = []
    for start in range(0, len(specs), batch_size):
        chunk = specs[start:start + batch_size]
        out = model.run([sweep.pair.corrupted] * len(chunk), interventions=chunk, logits=True)
        values.extend(metric_rows(model, metric, out.logits, len(chunk)).tolist())
    corrupted = values[0]
    return corrupted, [sweep.row("activation", c, v, corrupted) for c, v in zip(sweep.cells, values[1:])]
