"""Tiling a patching sweep into forwards: each cell needs only the positions from the first one it
patches (the earlier positions' keys and values are the corrupted run's, shared through a cached
prefix) and only the layers from the one it starts at (the input there is the corrupted run's), so a
forward of cells that start at position ``p`` and layer ``l`` costs ``rows x (length - p) x (layers -
l)`` token-layers, plus a fixed cost per forward and per layer run. :func:`tile` groups the cells into
position bands and, within each, layer bands that minimize the total (a dynamic program over both)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Costs", "Tile", "tile"]


@dataclass(frozen=True)
class Costs:
    """The fixed costs, in token-layers (one token through one decoder layer): per forward, and per
    decoder layer a forward runs (its weights read however few tokens pass). The defaults lie between
    a least-squares fit of SmolLM2 forwards on a loaded 2-core CPU (MLX: 0.56 ms per token-layer,
    22 ms per layer run, 57 ms per forward: 38 and 100 token-layers) and a quiet one's ~0.1 s per
    1-token forward; the tiling's total changes by under 5% across that range."""

    forward: float = 100.0
    layer: float = 20.0


@dataclass(frozen=True)
class Tile:
    """Cells run together: from position ``start`` (0: the whole prompt, else after a cached prefix of
    ``start`` tokens) and decoder layer ``layer`` (0: every layer), ``max_rows`` at a time."""

    cells: tuple[int, ...]
    start: int
    layer: int


def tile(spans: Sequence[tuple[int, int]], *, length: int, layers: int, max_rows: int,
         costs: Costs = Costs()) -> list[Tile]:
    """The tiles of the cells whose ``(first position, first layer)`` are ``spans`` (cell ``i`` needs
    positions ``spans[i][0]`` .. ``length - 1`` and layers ``spans[i][1]`` .. ``layers - 1``), in
    order of position band then layer; every cell in exactly one tile.

    Raises:
        ValueError: a span outside the prompt or the model, or ``max_rows`` < 1 (naming it).
    """
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
        raise ValueError(f"max_rows must be a positive int, got {max_rows!r}")
    bad = [s for s in spans if not (0 <= s[0] < length and 0 <= s[1] <= layers)]
    if bad:
        raise ValueError(f"span {bad[0]} outside the prompt or model; valid: positions 0..{length - 1}, "
                         f"layers 0..{layers}")
    positions = sorted({p for p, _ in spans})
    if not positions:
        return []

    def cost(rows: int, start: int, layer: int) -> float:
        forwards = math.ceil(rows / max_rows)
        n = layers - layer
        return n * (rows * (length - start) + forwards * costs.layer) + forwards * costs.forward

    def band(lo: int, hi: int) -> tuple[float, list[tuple[int, list[int]]]]:
        """The best layer bands of the cells at positions[lo..hi] (each run from positions[lo])."""
        start = positions[lo]
        members = [i for i, (p, _) in enumerate(spans) if positions[lo] <= p <= positions[hi]]
        counted = Counter(spans[i][1] for i in members)
        firsts = sorted(counted)
        count = [counted[f] for f in firsts]
        best = [0.0] + [math.inf] * len(firsts)  # best[j]: the first j layer groups tiled
        cut = [0] * (len(firsts) + 1)
        for j in range(1, len(firsts) + 1):
            rows = 0
            for i in range(j, 0, -1):  # one tile of layer groups i-1 .. j-1, run from firsts[i - 1]
                rows += count[i - 1]
                c = best[i - 1] + cost(rows, start, firsts[i - 1])
                if c < best[j]:
                    best[j], cut[j] = c, i - 1
        out: list[tuple[int, list[int]]] = []
        j = len(firsts)
        while j > 0:
            i = cut[j]
            chosen = set(firsts[i:j])
            out.append((firsts[i], [k for k in members if spans[k][1] in chosen]))
            j = i
        return best[-1], out[::-1]

    P = len(positions)
    bands = {(lo, hi): band(lo, hi) for lo in range(P) for hi in range(lo, P)}
    best = [0.0] + [math.inf] * P  # best[j]: the first j positions tiled
    cut = [0] * (P + 1)
    for j in range(1, P + 1):
        for i in range(j):
            c = best[i] + bands[(i, j - 1)][0]
            if c < best[j]:
                best[j], cut[j] = c, i
    tiles: list[Tile] = []
    j = P
    while j > 0:
        i = cut[j]
        tiles[:0] = [Tile(tuple(cells), positions[i], layer) for layer, cells in bands[(i, j - 1)][1]]
        j = i
    return tiles
