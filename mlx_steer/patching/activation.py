"""Activation patching: each cell a batch row of the corrupted prompt with the clean activation
``set`` at its site and position(s) (the engine's per-row steering), so a whole sweep is a few
batched forwards; every row's metric equals that of its own solo run.

Every row is the same corrupted prompt, so a cell changes nothing before the first position it
patches nor below the layer it patches: a forward of cells runs only the positions from the lowest
one its cells patch (and the metric reads), continuing a cached prefix of the corrupted prompt
(:mod:`~mlx_steer.engine.shared_prefix`), and only the layers from the lowest one they patch, fed the
corrupted run's input there (:mod:`~mlx_steer.engine.layer_skip`). :func:`~.tiling.tile` groups the
cells into such forwards. Where a prefix cannot be shared (the metric reads every position, a model
split over ranks or whose cache cannot be shared) the forwards run the whole prompt."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..engine import interventions as iv
from ..engine.layer_skip import latest_start
from ..engine.logit_positions import LogitsSpec, logit_positions
from ..engine.shared_prefix import PrefixRefused, shared_prefix
from .pair import metric_rows
from .sweep import Cell, Sweep
from .table import PatchRow
from .tiling import tile

if TYPE_CHECKING:
    from ..engine.gradients import Metric
    from ..engine.model import Steerable

__all__ = ["activation_rows", "cell_interventions"]


def cell_interventions(sweep: Sweep, cell: Cell) -> dict[str, list[iv.Intervention]]:
    """What one cell's row runs with: the clean value ``set`` at each patched position (a head: its
    slice zeroed with ``ablate_heads``, then the clean slice added, the other heads untouched)."""
    clean, site = sweep.clean[cell.site.key], cell.site
    if site.head is None or site.columns is None:
        return {site.key: [iv.set(clean[c], positions=[q]) for c, q in cell.pairs]}
    a, b = site.columns
    out: list[iv.Intervention] = []
    for c, q in cell.pairs:
        part = np.zeros_like(clean[c])
        part[a:b] = clean[c][a:b]
        out += [iv.ablate_heads(site.head, positions=[q]), iv.add_vector(part, positions=[q])]
    return {site.key: out}


def activation_rows(model: Steerable, sweep: Sweep, metric: Metric, *, batch_size: int,
                    logits: LogitsSpec = True) -> tuple[float, list[PatchRow]]:
    """The corrupted prompt's metric, and one row per cell; at most ``batch_size`` cells per forward.
    ``logits``: which positions' logits the metric reads (as for ``run``; ``"last"`` skips the
    unembedding elsewhere and lets forwards start at a later position)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    cells, corrupted = sweep.cells, sweep.pair.corrupted
    n, L = model.num_layers, len(corrupted)
    starts = [0 if model.distributed is not None else min(latest_start(model.backend, model.resolve(c.site.key).path),
                                                           n - 1) for c in cells]
    used = sorted({s for s in starts if s > 0})
    inputs = [f"{model.layer_paths[s]}:input" for s in used]
    base = model.run([corrupted], record=inputs or None, logits=logits)
    value = float(metric_rows(model, metric, base.logits, 1)[0])
    hidden = {s: model.to_numpy(base.activations[k]) for s, k in zip(used, inputs)}
    read = None if logits is False or model.distributed is not None else logit_positions(logits, [L])
    firsts = [0 if read is None else min(min(q for _, q in c.pairs), int(read.min())) for c in cells]
    tiles = tile(list(zip(firsts, starts)), length=L, layers=n, max_rows=batch_size)
    prefix = None
    needed = sorted({t.start for t in tiles if t.start > 0})
    if needed:
        try:
            prefix = shared_prefix(model, [corrupted[:p] for p in needed])
        except PrefixRefused:  # whole prompts instead, tiled for them
            tiles = tile([(0, s) for s in starts], length=L, layers=n, max_rows=batch_size)
    values = np.empty(len(cells))
    for t in tiles:
        for at in range(0, len(t.cells), batch_size):
            chunk = list(t.cells[at:at + batch_size])
            steer = [cell_interventions(sweep, cells[i]) for i in chunk]
            out = None
            if prefix is not None and t.start > 0:
                try:
                    out = prefix.run([corrupted[t.start:]] * len(chunk), prefix_of=[needed.index(t.start)] * len(chunk),
                                     interventions=steer, logits=logits, max_rows=batch_size,
                                     from_layer=t.layer or None,
                                     hidden=np.repeat(hidden[t.layer][:, t.start:], len(chunk), 0) if t.layer else None)
                except PrefixRefused:  # e.g. an intervention that reads the whole prompt: the whole forward
                    out = None
            if out is None:
                out = model.run([corrupted] * len(chunk), logits=logits, interventions=steer,
                                from_layer=t.layer or None,
                                hidden=np.repeat(hidden[t.layer], len(chunk), axis=0) if t.layer else None)
            values[chunk] = metric_rows(model, metric, out.logits, len(chunk))
    return value, [sweep.row("activation", c, float(v), value) for c, v in zip(cells, values)]
