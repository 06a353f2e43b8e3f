"""The heatmap of a patching table: sites down, positions across (with their tokens), colour the
fraction recovered. Drawn on a bare matplotlib ``Figure`` (no pyplot state)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .table import PatchTable

__all__ = ["draw"]


def draw(table: PatchTable, method: str, path: str | Path | None = None) -> Figure:
    """``table``'s ``method`` grid as a heatmap, saved to ``path`` when given."""
    from matplotlib.figure import Figure

    grid = table.grid(method)
    tokens = {r.position: r.token for r in table.rows}
    xlabels = [f"{'all' if p is None else p} {tokens[p]!r}" for p in table.positions]
    fig = Figure(figsize=(max(6.0, 2.0 + 0.6 * len(xlabels)), max(3.0, 1.5 + 0.3 * len(table.labels))), layout="constrained")
    ax = fig.add_subplot()
    finite = grid[np.isfinite(grid)]
    bound = max(1.0, float(np.abs(finite).max())) if finite.size else 1.0
    im = ax.imshow(grid, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto")
    ax.set_xticks(range(len(xlabels)), xlabels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(table.labels)), table.labels, fontsize=8)
    ax.set_xlabel("corrupted prompt position")
    ax.set_title(f"{method} patching")
    fig.colorbar(im, ax=ax, label="fraction recovered")
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
