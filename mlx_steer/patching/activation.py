"""Activation patching: each cell a batch row of the corrupted prompt with the clean activation
``set`` at its site and position(s) (the engine's per-row steering), so a whole sweep is a few
batched forwards; every row's metric equals that of its own solo run.

Every row is the same corrupted prompt, so below a cell's layer all rows compute the same thing: a
batch starts at the lowest layer its cells patch (``run(from_layer=..., hidden=...)``, the layer's
input recorded once from the corrupted run), which halves a sweep over every layer."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..engine import interventions as iv
from ..engine.layer_skip import latest_start
from ..engine.logit_positions import LogitsSpec
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


def activation_rows(model: Steerable, sweep: Sweep, metric: Metric, *, batch_size: int,
                    logits: LogitsSpec = True) -> tuple[float, list[PatchRow]]:
    """The corrupted prompt's metric, and one row per cell; cells run ``batch_size`` at a time, in
    order of the layer they start at. ``logits``: which positions' logits the metric reads (as for
    ``run``; ``"last"`` skips the unembedding elsewhere)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    cells = sweep.cells
    starts = [0 if model.distributed is not None else latest_start(model.backend, model.resolve(c.site.key).path)
              for c in cells]
    used = sorted({s for s in starts if s > 0})
    inputs = [f"{model.layer_paths[s]}:input" for s in used]
    base = model.run([sweep.pair.corrupted], record=inputs or None, logits=logits)
    corrupted = float(metric_rows(model, metric, base.logits, 1)[0])
    hidden = {s: model.to_numpy(base.activations[k]) for s, k in zip(used, inputs)}
    order = sorted(range(len(cells)), key=lambda i: starts[i])
    values = np.empty(len(cells))
    for at in range(0, len(order), batch_size):
        chunk = order[at:at + batch_size]
        start = min(starts[i] for i in chunk)
        out = model.run([sweep.pair.corrupted] * len(chunk), logits=logits,
                        interventions=[cell_interventions(sweep, cells[i]) for i in chunk],
                        from_layer=start or None,
                        hidden=np.repeat(hidden[start], len(chunk), axis=0) if start else None)
        values[chunk] = metric_rows(model, metric, out.logits, len(chunk))
    return corrupted, [sweep.row("activation", c, float(v), corrupted) for c, v in zip(cells, values)]
