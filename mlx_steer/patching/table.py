"""The result of a patching sweep: one row per (method, site, position) cell, as CSV, JSON, text, a
(sites × positions) grid and a heatmap (sites down, positions across with their tokens, colour the
fraction recovered, drawn on a bare matplotlib ``Figure``); with both methods, their agreement
(Pearson over cells)."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["METHODS", "PatchRow", "PatchTable", "draw", "draw_heads"]

METHODS = ("activation", "attribution")
_HEAD_LABEL = re.compile(r"L(\d+)H(\d+)")


@dataclass(frozen=True)
class PatchRow:
    """One cell.

    Attributes:
        method: ``activation`` (the clean value patched in, the metric measured) or ``attribution``
            (the linear estimate ``(clean - corrupted) · grad`` at the corrupted run).
        site: The resolved site key.
        label: The site's short name (``resid 3``).
        position: The corrupted prompt's position patched; None when every aligned position was
            patched at once.
        token: The corrupted prompt's token there (``*`` for all positions).
        metric: The patched run's metric (attribution: corrupted metric + the estimated effect).
        fraction: ``(metric - corrupted) / (clean - corrupted)``: 1 is everything recovered, 0 nothing
            (NaN when the clean and corrupted metrics are equal).
    """

    method: str
    site: str
    label: str
    position: int | None
    token: str
    metric: float
    fraction: float


@dataclass(frozen=True)
class PatchTable:
    """The cells of a sweep (method, then site, then position), and the metric on the unpatched runs.

    Attributes:
        rows: The cells.
        clean_metric: The metric on the clean prompt.
        corrupted_metric: The metric on the corrupted prompt.
        info: Settings (model, prompts, metric, sites), as strings.
    """

    rows: tuple[PatchRow, ...]
    clean_metric: float
    corrupted_metric: float
    info: Mapping[str, str] = field(default_factory=dict)

    @property
    def methods(self) -> list[str]:
        return list(dict.fromkeys(r.method for r in self.rows))

    @property
    def labels(self) -> list[str]:
        return list(dict.fromkeys(r.label for r in self.rows))

    @property
    def positions(self) -> list[int | None]:
        return list(dict.fromkeys(r.position for r in self.rows))

    def cell(self, label: str, position: int | None, method: str = "activation") -> PatchRow:
        """The row of one cell (``label`` a site label or key).

        Raises:
            KeyError: no such cell (naming what the table has).
        """
        for r in self.rows:
            if (r.label == label or r.site == label) and r.position == position and r.method == method:
                return r
        raise KeyError(f"no cell ({method}, {label!r}, position {position}); the table has methods {self.methods}, "
                       f"sites {self.labels}, positions {self.positions}")

    def grid(self, method: str = "activation", value: str = "fraction") -> np.ndarray:
        """(sites, positions) float64 ``fraction`` (or ``metric``) of one method, in table order."""
        if method not in self.methods:
            raise ValueError(f"method {method!r} is not in this table; it has {self.methods}")
        if value not in ("fraction", "metric"):
            raise ValueError(f"value {value!r} unknown; valid: fraction, metric")
        labels, positions = self.labels, self.positions
        out = np.full((len(labels), len(positions)), np.nan)
        for r in self.rows:
            if r.method == method:
                out[labels.index(r.label), positions.index(r.position)] = getattr(r, value)
        return out

    def heads_grid(self, method: str = "activation", position: int | None = None,
                   value: str = "fraction") -> np.ndarray:
        """(layers, heads) float64 of the head cells (``sites="heads"``, labels ``L{layer}H{head}``)
        at one ``position`` (None: the cells that patched every position at once); NaN where absent.

        Raises:
            ValueError: no head cells of that method at that position.
        """
        found = {}
        for r in self.rows:
            m = _HEAD_LABEL.fullmatch(r.label)
            if m and r.method == method and r.position == position:
                found[int(m[1]), int(m[2])] = getattr(r, value)
        if not found:
            raise ValueError(f"no head cells ({method}, position {position}); patch with sites='heads'; the table "
                             f"has methods {self.methods}, positions {self.positions}")
        out = np.full((max(k[0] for k in found) + 1, max(k[1] for k in found) + 1), np.nan)
        for (layer, head), v in found.items():
            out[layer, head] = v
        return out

    def heads_heatmap(self, method: str = "activation", position: int | None = None,
                      path: str | Path | None = None) -> Figure:
        """Layers × heads heatmap of the fraction recovered at ``position``; saved to ``path`` when given."""
        where = "every position" if position is None else f"position {position}"
        return draw_heads(self.heads_grid(method, position), title=f"{method} patching per head, {where}",
                          label="fraction recovered", path=path)

    @property
    def correlation(self) -> float | None:
        """Pearson correlation of the attribution estimates with the real patching over the cells
        (None unless both methods are in the table; NaN when either is constant)."""
        if set(self.methods) != set(METHODS):
            return None
        a = self.grid("activation", "metric").ravel()
        b = self.grid("attribution", "metric").ravel()
        if a.std() == 0 or b.std() == 0:
            return math.nan
        return float(np.corrcoef(a, b)[0, 1])

    # -- output --------------------------------------------------------------------------------
    def to_dicts(self) -> list[dict]:
        return [dataclasses.asdict(r) for r in self.rows]

    def to_csv(self, path: str | Path | None = None) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=[f.name for f in dataclasses.fields(PatchRow)], lineterminator="\n")
        w.writeheader()
        w.writerows(self.to_dicts())
        text = buf.getvalue()
        if path is not None:
            Path(path).write_text(text)
        return text

    def to_json(self, path: str | Path | None = None) -> str:
        corr = self.correlation
        doc = {"clean_metric": self.clean_metric, "corrupted_metric": self.corrupted_metric,
               "correlation": None if corr is None or math.isnan(corr) else corr, "info": dict(self.info),
               "rows": [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}
                        for d in self.to_dicts()]}
        text = json.dumps(doc, indent=2)
        if path is not None:
            Path(path).write_text(text)
        return text

    def to_text(self) -> str:
        """Per method, a grid of fractions recovered: sites down, positions (with tokens) across."""
        tokens = {r.position: r.token for r in self.rows}
        lines = [f"clean metric {self.clean_metric:.4f}, corrupted {self.corrupted_metric:.4f}"]
        for method in self.methods:
            grid = self.grid(method)
            heads = [f"{'all' if p is None else p}:{tokens[p].strip()[:6] or repr(tokens[p])[1:-1][:6]}"
                     for p in self.positions]
            width = max(8, *(len(h) for h in heads))
            name = max(len(label) for label in self.labels)
            lines.append(f"\n{method} patching: fraction recovered")
            lines.append(" " * name + " " + " ".join(h.rjust(width) for h in heads))
            for label, row in zip(self.labels, grid):
                lines.append(label.ljust(name) + " " + " ".join(f"{v:{width}.3f}" for v in row))
        corr = self.correlation
        if corr is not None:
            lines.append(f"\nattribution vs activation patching: Pearson r = {corr:.3f} over {grid.size} cells")
        return "\n".join(lines)

    def heatmap(self, method: str = "activation", path: str | Path | None = None) -> Figure:
        """Sites × positions heatmap of the fraction recovered, token labels on the x axis; written
        to ``path`` (PNG) when given."""
        return draw(self, method, path)


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


def draw_heads(grid: np.ndarray, *, title: str, label: str, path: str | Path | None = None,
               symmetric_to: float | None = None) -> Figure:
    """A (layers, heads) grid as a heatmap (layers down, heads across), colour centred on 0 and
    bounded by ``symmetric_to`` (default: the largest magnitude, at least 1); saved to ``path``."""
    from matplotlib.figure import Figure

    L, H = grid.shape
    fig = Figure(figsize=(max(4.0, 1.5 + 0.45 * H), max(3.0, 1.0 + 0.3 * L)), layout="constrained")
    ax = fig.add_subplot()
    finite = grid[np.isfinite(grid)]
    bound = symmetric_to or (max(1.0, float(np.abs(finite).max())) if finite.size else 1.0)
    im = ax.imshow(grid, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto")
    ax.set_xticks(range(H), [str(h) for h in range(H)], fontsize=8)
    ax.set_yticks(range(L), [str(i) for i in range(L)], fontsize=8)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label=label)
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
