"""The result of a head score: one row per (layer, head), as CSV, JSON, text, a (layers × heads)
grid and a heatmap (layers down, heads across, colour the score, drawn by the same helper as the
patching heads heatmaps)."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["KINDS", "HeadScore", "HeadScoreTable", "draw_head_scores"]

KINDS = ("induction", "previous", "sink")


@dataclass(frozen=True)
class HeadScore:
    """One head's score.

    Attributes:
        kind: ``induction``, ``previous`` or ``sink``.
        layer: The decoder layer.
        head: The head (query head) within the layer.
        score: The mean attention weight the score is defined by, in 0..1.
    """

    kind: str
    layer: int
    head: int
    score: float


@dataclass(frozen=True)
class HeadScoreTable:
    """Scores per layer × head, in the order given (layer, then head, unless sorted).

    Attributes:
        rows: One :class:`HeadScore` per head.
        kind: What was scored.
        info: Settings (model, sequences, seed, ...), as strings.
    """

    rows: tuple[HeadScore, ...]
    kind: str
    info: Mapping[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def layers(self) -> list[int]:
        return sorted({r.layer for r in self.rows})

    @property
    def heads(self) -> list[int]:
        return sorted({r.head for r in self.rows})

    def score(self, layer: int, head: int) -> float:
        """One head's score.

        Raises:
            KeyError: no such head in the table (naming the layers and heads it has).
        """
        for r in self.rows:
            if r.layer == layer and r.head == head:
                return r.score
        raise KeyError(f"no head ({layer}, {head}) in this table; it has layers {self.layers}, heads {self.heads}")

    def sorted(self, *, descending: bool = True) -> HeadScoreTable:
        """The rows by score (highest first unless ``descending=False``), ties in layer, head order."""
        order = sorted(self.rows, key=lambda r: ((-r.score if descending else r.score), r.layer, r.head))
        return dataclasses.replace(self, rows=tuple(order))

    def top(self, k: int) -> HeadScoreTable:
        """The ``k`` highest-scoring heads, best first.

        Raises:
            ValueError: ``k`` is not a positive integer.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        return dataclasses.replace(self, rows=self.sorted().rows[:k])

    def grid(self) -> np.ndarray:
        """(layers, heads) float64 scores (NaN where the table has no row), rows as :attr:`layers`."""
        layers, heads = self.layers, self.heads
        out = np.full((len(layers), len(heads)), np.nan)
        for r in self.rows:
            out[layers.index(r.layer), heads.index(r.head)] = r.score
        return out

    # -- output --------------------------------------------------------------------------------
    def to_dicts(self) -> list[dict]:
        return [dataclasses.asdict(r) for r in self.rows]

    def to_csv(self, path: str | Path | None = None) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=[f.name for f in dataclasses.fields(HeadScore)], lineterminator="\n")
        w.writeheader()
        w.writerows(self.to_dicts())
        return _write(buf.getvalue(), path)

    def to_json(self, path: str | Path | None = None) -> str:
        doc = {"kind": self.kind, "info": dict(self.info), "rows": self.to_dicts()}
        return _write(json.dumps(doc, indent=2), path)

    @classmethod
    def from_json(cls, path: str | Path) -> HeadScoreTable:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(tuple(HeadScore(**r) for r in doc["rows"]), doc["kind"], doc.get("info", {}))

    def to_text(self) -> str:
        """One line per row: rank, layer, head, score."""
        lines = [f"{self.kind} scores", "rank  layer  head   score"]
        lines += [f"{i:>4}  {r.layer:>5}  {r.head:>4}  {r.score:.4f}" for i, r in enumerate(self.rows, 1)]
        return "\n".join(lines)

    def heatmap(self, path: str | Path | None = None) -> Figure:
        """Layers × heads heatmap of the scores; written to ``path`` (PNG) when given."""
        return draw_head_scores(self, path)


def draw_head_scores(table: HeadScoreTable, path: str | Path | None = None) -> Figure:
    """``table``'s scores as a heatmap (layers down, heads across; layers and heads not in the
    table blank), drawn by the patching heads heatmap's helper on a 0..1 scale; saved to ``path``."""
    from ..patching.table import draw_heads

    grid = np.full((max(table.layers, default=-1) + 1, max(table.heads, default=-1) + 1), np.nan)
    for r in table.rows:
        grid[r.layer, r.head] = r.score
    return draw_heads(grid, title=f"{table.kind} score per head", label=f"{table.kind} score", path=path,
                      symmetric_to=1.0)


def _write(text: str, path: str | Path | None) -> str:
    if path is not None:
        Path(path).write_text(text, encoding="utf-8")
    return text
