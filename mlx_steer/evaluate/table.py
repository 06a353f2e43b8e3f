"""The result of an evaluation: one row per (vector, layer, strength) cell, as CSV, JSON, text and a
plot, and :meth:`EvalTable.best`, the cell to steer with under a fluency budget."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["MEASURES", "EvalRow", "EvalTable"]

# what a row can measure; None where the evaluation did not measure it
MEASURES = ("ab_probability", "behaviour", "perplexity", "fluency", "distinct_1", "distinct_2",
            "control_ab_probability", "selectivity", "loop_fraction")
_LABELS = {"ab_probability": "p(matching answer)", "behaviour": "judge score", "perplexity": "perplexity",
           "fluency": "fluency (unsteered ppl / ppl)", "distinct_1": "distinct-1", "distinct_2": "distinct-2",
           "control_ab_probability": "p(matching) on the control items",
           "selectivity": "selectivity (|target move| - |control move|)",
           "loop_fraction": "generations with a repetition loop"}
_STYLES: dict[str, Literal["-", ":", "--"]] = {"steering": "-", "random": ":", "flipped": "--"}


@dataclass(frozen=True)
class EvalRow:
    """One cell's scores.

    Attributes:
        vector: ``steering``, or a control: ``random`` (a seeded direction of the same norm) or
            ``flipped`` (the vector negated).
        layer: The layer (or site path) steered.
        strength: The multiplier (0: the unsteered model).
        ab_probability: Mean over the A/B items of p(matching answer) / (p(matching) + p(not matching)).
        behaviour: Mean judge score of the generated texts.
        perplexity: Perplexity of the generated texts under the unsteered model.
        fluency: The unsteered texts' perplexity over this cell's (1: as fluent as unsteered; lower is worse).
        distinct_1: Distinct word unigrams over all of them, over the cell's texts.
        distinct_2: The same for bigrams.
        control_ab_probability: ``ab_probability`` on the control items (an unrelated behaviour).
        selectivity: How much more the cell moves the target behaviour than the control one, against the
            unsteered cell: ``|ab_probability - unsteered| - |control_ab_probability - unsteered control|``
            (0 for the unsteered cell; > 0 where the steering moves what it is meant to more than what it is not).
        loop_fraction: The fraction of the cell's generations holding a repetition loop
            (:func:`~mlx_steer.analysis.loops.find_loops` with its defaults).
    """

    vector: str
    layer: int | str
    strength: float
    ab_probability: float | None = None
    behaviour: float | None = None
    perplexity: float | None = None
    fluency: float | None = None
    distinct_1: float | None = None
    distinct_2: float | None = None
    control_ab_probability: float | None = None
    selectivity: float | None = None
    loop_fraction: float | None = None

    def value(self, measure: str) -> float | None:
        return getattr(self, measure)


@dataclass(frozen=True)
class EvalTable:
    """The rows of an evaluation (vector-major, then layer, then strength), what they measured, and
    the cells' generated texts.

    Attributes:
        rows: The cells.
        measures: The columns the evaluation measured, among :data:`MEASURES`.
        info: Settings and counts (model, items, prompts, seed...), as strings.
        texts: Per cell ``(vector, layer, strength)``, its generated texts (open-ended only).
    """

    rows: tuple[EvalRow, ...]
    measures: tuple[str, ...]
    info: Mapping[str, str] = field(default_factory=dict)
    texts: Mapping[tuple, tuple[str, ...]] = field(default_factory=dict)

    @property
    def layers(self) -> list:
        return list(dict.fromkeys(r.layer for r in self.rows))

    @property
    def strengths(self) -> list[float]:
        return list(dict.fromkeys(r.strength for r in self.rows))

    @property
    def vectors(self) -> list[str]:
        return list(dict.fromkeys(r.vector for r in self.rows))

    def cell(self, layer: int | str, strength: float, vector: str = "steering") -> EvalRow:
        """The row of one cell.

        Raises:
            KeyError: no such cell (naming what the table has).
        """
        for r in self.rows:
            if r.layer == layer and r.strength == strength and r.vector == vector:
                return r
        raise KeyError(f"no cell ({vector}, layer {layer!r}, strength {strength:g}); the table has vectors "
                       f"{self.vectors}, layers {self.layers}, strengths {self.strengths}")

    def curve(self, measure: str, layer: int | str, vector: str = "steering") -> tuple[list[float], list[float]]:
        """(strengths, values) of ``measure`` at one layer, in strength order."""
        self._check(measure)
        pts = sorted((r.strength, r.value(measure)) for r in self.rows if r.layer == layer and r.vector == vector)
        return [s for s, _ in pts], [math.nan if v is None else float(v) for _, v in pts]

    def best(self, *, measure: str | None = None, maximize: bool = True, min_fluency: float | None = None,
             max_perplexity: float | None = None, min_distinct: float | None = None,
             vector: str = "steering") -> EvalRow:
        """The cell with the highest (``maximize=False``: lowest) ``measure`` among those within the
        budget; ties go to the smaller |strength|, then the earlier layer.

        Args:
            measure: ``ab_probability`` or ``behaviour`` (default: the one the table has; A/B if both).
            maximize: Raise the behaviour (False: lower it).
            min_fluency: Keep cells whose fluency (unsteered perplexity / perplexity) is at least this.
            max_perplexity: Keep cells whose perplexity is at most this.
            min_distinct: Keep cells whose distinct-2 is at least this.
            vector: Which vector's cells to choose among (default the steering vector's).

        Raises:
            ValueError: the table lacks the measure or a budget's column, or no cell is within the budget.
        """
        if measure is None:
            measure = next((m for m in ("ab_probability", "behaviour") if m in self.measures), None)
            if measure is None:
                raise ValueError(f"this table has no behaviour measure to choose by; it has {list(self.measures)}")
        self._check(measure)
        budget = [("fluency", min_fluency, 1), ("perplexity", max_perplexity, -1), ("distinct_2", min_distinct, 1)]
        for column, bound, _ in budget:
            if bound is not None and column not in self.measures:
                raise ValueError(f"a {column} budget needs an evaluation that measures {column} "
                                 f"(open-ended generation, prompts=...); this table has {list(self.measures)}")
        ok = []
        for r in self.rows:
            v = r.value(measure)
            if r.vector != vector or v is None or not math.isfinite(v):
                continue
            within = all(bound is None or ((x := r.value(col)) is not None and math.isfinite(x) and sign * (x - bound) >= 0)
                         for col, bound, sign in budget)
            if within:
                ok.append(r)
        if not ok:
            limits = ", ".join(f"{n}={b}" for n, b in (("min_fluency", min_fluency), ("max_perplexity", max_perplexity),
                                                       ("min_distinct", min_distinct)) if b is not None)
            raise ValueError(f"no {vector} cell is within the budget ({limits or 'none'}) with a finite {measure}")
        order = {layer: i for i, layer in enumerate(self.layers)}
        sign = 1.0 if maximize else -1.0
        return min(ok, key=lambda r: (-sign * float(r.value(measure) or 0.0), abs(r.strength), order[r.layer]))

    # -- writing -----------------------------------------------------------------------------
    def columns(self) -> list[str]:
        return ["vector", "layer", "strength", *self.measures]

    def to_csv(self, path: str | Path | None = None) -> str:
        """The rows as CSV (the measured columns; an unmeasurable cell, e.g. NaN, is written ``nan``).
        Written to ``path`` too when given."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(self.columns())
        for r in self.rows:
            w.writerow([r.vector, r.layer, repr(r.strength), *(repr(r.value(m)) for m in self.measures)])
        text = buf.getvalue()
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    def to_json(self, path: str | Path | None = None) -> str:
        """Rows, measures, info and texts as JSON (NaN as null); written to ``path`` too when given."""
        def clean(x: Any) -> Any:
            return None if isinstance(x, float) and not math.isfinite(x) else x

        doc = {"measures": list(self.measures), "info": dict(self.info),
               "rows": [{k: clean(v) for k, v in dataclasses.asdict(r).items()
                         if k in ("vector", "layer", "strength") or k in self.measures} for r in self.rows],
               "texts": [{"vector": k[0], "layer": k[1], "strength": k[2], "texts": list(v)}
                         for k, v in self.texts.items()]}
        text = json.dumps(doc, indent=1)
        if path is not None:
            Path(path).write_text(text + "\n", encoding="utf-8")
        return text

    @classmethod
    def from_json(cls, path: str | Path) -> EvalTable:
        """Read what :meth:`to_json` wrote (null back to NaN for measured columns).

        Raises:
            ValueError: not an evaluation table.
        """
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(doc, dict) or "rows" not in doc or "measures" not in doc:
            raise ValueError(f"{path} is not an evaluation table (no 'rows' and 'measures')")
        measures = tuple(doc["measures"])
        rows = tuple(EvalRow(row["vector"], row["layer"], row["strength"],
                             **{m: (math.nan if row.get(m) is None else float(row[m])) for m in measures})
                     for row in doc["rows"])
        texts = {(t["vector"], t["layer"], t["strength"]): tuple(t["texts"]) for t in doc.get("texts", [])}
        return cls(rows, measures, dict(doc.get("info", {})), texts)

    def to_text(self) -> str:
        """The table, aligned."""
        head = self.columns()
        body = [[r.vector, str(r.layer), f"{r.strength:g}", *(_fmt(r.value(m)) for m in self.measures)] for r in self.rows]
        w = [max(len(x) for x in col) for col in zip(head, *body)]
        return "\n".join("  ".join(c.rjust(n) for c, n in zip(line, w)) for line in [head, *body])

    # -- plotting ----------------------------------------------------------------------------
    def figure(self, *, title: str | None = None, full_scale: bool = True) -> Figure:
        """Behaviour against strength, one line per layer (controls dotted and dashed), one panel per
        behaviour measure; fluency on a second axis where it was measured. ``full_scale`` draws the A/B
        probability on 0..1 as CAA does (False: zoomed to the data).

        Raises:
            ImportError: matplotlib is missing (``pip install matplotlib``).
        """
        try:
            from matplotlib.figure import Figure
            from matplotlib.lines import Line2D
        except ImportError as exc:
            raise ImportError("evaluation plots need matplotlib: pip install matplotlib") from exc
        panels: list[str] = [m for m in ("ab_probability", "behaviour") if m in self.measures] or [self.measures[0]]
        fig = Figure(figsize=(6.4 * len(panels), 4.2), layout="constrained")
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        colours = {layer: f"C{i % 10}" for i, layer in enumerate(self.layers)}
        for ax, measure in zip(axes, panels):
            for vector in self.vectors:
                for layer in self.layers:
                    xs, ys = self.curve(measure, layer, vector)
                    ax.plot(xs, ys, _STYLES.get(vector, "-"), color=colours[layer], marker="o", markersize=3,
                            label=f"layer {layer}" if vector == "steering" else None,
                            alpha=1.0 if vector == "steering" else 0.6)
            handles, _ = ax.get_legend_handles_labels()
            handles += [Line2D([], [], linestyle=_STYLES[v], color="grey", label=f"{v} control")
                        for v in self.vectors if v != "steering"]
            if measure == "ab_probability":  # CAA's scale: the whole probability range, chance marked
                ax.axhline(0.5, color="grey", linewidth=0.5)
                if full_scale:
                    ax.set_ylim(0.0, 1.0)
            calibrated = self.info.get("units") == "calibrated"
            ax.set_xlabel("strength (calibrated units: 1 = the KL budget)" if calibrated else "strength (multiplier)")
            ax.set_ylabel(_LABELS[measure])
            if "fluency" in self.measures and measure == "behaviour":
                twin = ax.twinx()
                for layer in self.layers:
                    xs, ys = self.curve("fluency", layer)
                    twin.plot(xs, ys, "-.", color=colours[layer], linewidth=0.8, alpha=0.5)
                twin.set_ylabel("fluency (dash-dot), unsteered = 1")
            ax.legend(handles=handles, fontsize=7, ncol=2)
        if title:
            fig.suptitle("\n".join(textwrap.wrap(title, 80)), fontsize=9)
        return fig

    def plot(self, path: str | Path, *, title: str | None = None, full_scale: bool = True) -> Path:
        """Write :meth:`figure` to ``path`` (PNG, SVG, PDF by the suffix)."""
        path = Path(path)
        self.figure(title=title, full_scale=full_scale).savefig(path)
        return path

    def _check(self, measure: str) -> None:
        if measure not in self.measures:
            raise ValueError(f"this table has no {measure!r}; it measured {list(self.measures)}"
                             if measure in MEASURES else f"unknown measure {measure!r}; valid: {', '.join(MEASURES)}")


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"
