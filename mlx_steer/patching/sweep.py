"""What both patching methods share: the prompt pair, the sites, the cells — one (site, positions)
each — and the clean run (its metric and its activations at every site)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..engine.logit_positions import LogitsSpec
from .pair import PromptPair, metric_rows, prompt_pair
from .sites import PatchSite, patch_sites
from .table import PatchRow

if TYPE_CHECKING:
    from ..engine.gradients import Metric
    from ..engine.model import Steerable

__all__ = ["Cell", "Sweep", "prepare"]


@dataclass(frozen=True)
class Cell:
    """One cell: a site and the ``(clean position, corrupted position)`` pairs patched together."""

    site: PatchSite
    pairs: tuple[tuple[int, int], ...]

    @property
    def position(self) -> int | None:
        """The corrupted position (None: several at once)."""
        return self.pairs[0][1] if len(self.pairs) == 1 else None


@dataclass(frozen=True)
class Sweep:
    """A sweep ready to run: the pair, its cells, and the clean run's metric and (L, D) activations."""

    pair: PromptPair
    cells: tuple[Cell, ...]
    clean_metric: float
    clean: dict[str, np.ndarray]

    def row(self, method: str, cell: Cell, value: float, corrupted: float) -> PatchRow:
        gap = self.clean_metric - corrupted
        fraction = (value - corrupted) / gap if gap != 0 else float("nan")
        p = cell.position
        token = "*" if p is None else self.pair.labels[p]
        return PatchRow(method, cell.site.key, cell.site.label, p, token, float(value), float(fraction))


def prepare(model: Steerable, clean: str | Sequence[int], corrupted: str | Sequence[int], metric: Metric, *,
            sites: str | Sequence[str], positions: object, aligned: Sequence[tuple[int, int]] | None,
            chat: bool, logits: LogitsSpec = True) -> Sweep:
    """Check the inputs, lay out the cells, and run the clean prompt once (recording every site).

    ``logits``: the positions the metric reads (as for ``run``). ``positions``: ``"each"`` (one cell per aligned position), ``"all"`` (one cell per site, every
    aligned position patched at once), or a list of corrupted positions (one cell each).

    Raises:
        ValueError: bad prompts, alignment, sites, positions or metric (nothing is changed).
    """
    if not callable(metric):
        raise ValueError(f"metric must be a callable of the (B, L, V) logits, got {type(metric).__name__}")
    pair = prompt_pair(model, clean, corrupted, aligned=aligned, chat=chat)
    chosen = patch_sites(model, sites)
    groups = _groups(positions, pair)
    cells = tuple(Cell(s, g) for s in chosen for g in groups)
    keys = list(dict.fromkeys(s.key for s in chosen))  # a layer's heads share one site
    run = model.run([pair.clean], record=keys, logits=logits)
    value = metric_rows(model, metric, run.logits, 1)[0]
    idle = [k for k in keys if run.activations[k] is None]
    if idle:
        raise ValueError(f"sites {idle} do not run in a forward (a container, not a module that computes); "
                         f"name modules that run, e.g. {model.layer_paths[0]} or resid, attn, mlp")
    acts = {k: model.to_numpy(run.activations[k])[0] for k in keys}
    return Sweep(pair, cells, float(value), acts)


def _groups(positions: object, pair: PromptPair) -> list[tuple[tuple[int, int], ...]]:
    if isinstance(positions, str):
        if positions == "each":
            return [(p,) for p in pair.aligned]
        if positions == "all":
            return [pair.aligned]
    elif isinstance(positions, (list, tuple)) and positions and all(
            isinstance(p, (int, np.integer)) and not isinstance(p, bool) for p in positions):
        by_corrupted = {q: (c, q) for c, q in pair.aligned}
        missing = [p for p in positions if int(p) not in by_corrupted]
        if missing:
            raise ValueError(f"positions {missing} are not patched positions of the corrupted prompt; valid: "
                             f"{sorted(by_corrupted)}")
        return [(by_corrupted[int(p)],) for p in positions]
    raise ValueError(f"positions must be 'each', 'all' or a non-empty list of corrupted positions, got {positions!r}")
