"""Attribution patching (Nanda's linear approximation): a cell's effect estimated as
``(clean - corrupted) · d metric / d activation`` at the corrupted run, summed over the cell's
positions — every cell from one forward and one backward of the corrupted prompt (plus the clean run)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..engine.gradients import gradients
from ..engine.logit_positions import LogitsSpec
from .sweep import Sweep
from .table import PatchRow

if TYPE_CHECKING:
    from ..engine.gradients import Metric
    from ..engine.model import Steerable

__all__ = ["attribution_rows"]


def attribution_rows(model: Steerable, sweep: Sweep, metric: Metric, *,
                     logits: LogitsSpec = True) -> tuple[float, list[PatchRow]]:
    """The corrupted prompt's metric, and one estimated row per cell (``logits``: the positions the
    metric reads, as for ``run``)."""
    keys = list(dict.fromkeys(c.site.key for c in sweep.cells))
    g = gradients(model, [sweep.pair.corrupted], metric, sites=keys, logits=logits)
    corrupted = float(np.asarray(g.metric, dtype=np.float64).reshape(-1)[0])
    rows = []
    for cell in sweep.cells:
        clean = sweep.clean[cell.site.key].astype(np.float64)
        act = g.activations[cell.site.key][0].astype(np.float64)
        grad = g.gradients[cell.site.key][0].astype(np.float64)
        cols = slice(*cell.site.columns) if cell.site.columns is not None else slice(None)  # a head's slice
        effect = sum(float((clean[c, cols] - act[q, cols]) @ grad[q, cols]) for c, q in cell.pairs)
        rows.append(sweep.row("attribution", cell, corrupted + effect, corrupted))
    return corrupted, rows
