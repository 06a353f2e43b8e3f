"""Where a condition should cut (CAST's grid search): from prompts that should and should not trigger a
behaviour, the site, comparison and threshold whose condition separates them best (F1 on the
positive prompts), with the whole table it searched."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..engine import interventions as iv
from ..engine.conditions import MEASURES, READS

__all__ = ["ThresholdRow", "ThresholdSearch", "condition_values", "find_threshold"]


@dataclass(frozen=True)
class ThresholdRow:
    """One candidate: ``value compare threshold`` at ``site``, scored on the example prompts."""

    site: str
    compare: str
    threshold: float
    precision: float
    recall: float
    f1: float
    accuracy: float


@dataclass(frozen=True)
class ThresholdSearch:
    """The best row (highest F1, then accuracy; the first of equals) and every row searched."""

    best: ThresholdRow
    rows: list[ThresholdRow]
    directions: dict[str, np.ndarray]
    read: str
    measure: str

    def condition(self, *, name: str = "condition") -> Any:
        """The best row as a condition for ``intervention.when(...)``."""
        b = self.best
        return iv.condition(self.directions[b.site], site=b.site, threshold=b.threshold, compare=b.compare,
                            read=self.read, measure=self.measure, name=name)

    def to_text(self, top: int = 10) -> str:
        rows = sorted(self.rows, key=lambda r: (-r.f1, -r.accuracy))[:top]
        lines = [f"{'site':<24} cmp {'threshold':>10} {'precision':>9} {'recall':>6} {'f1':>6} {'acc':>6}"]
        lines += [f"{r.site:<24} {r.compare:>3} {r.threshold:>10.4f} {r.precision:>9.3f} {r.recall:>6.3f} {r.f1:>6.3f} "
                  f"{r.accuracy:>6.3f}" for r in rows]
        return "\n".join(lines)


def condition_values(model: Any, prompts: Sequence[str] | Sequence[Sequence[int]], *, site: str, direction: Any,
                     read: str = "mean", measure: str = "cosine", chat: bool = False, batch_size: int = 16) -> np.ndarray:
    """Each prompt's value of the condition at ``site`` along ``direction``: what ``condition(...)``
    compares with its threshold (float64, one per prompt)."""
    leaf = iv.condition(direction, site=site, threshold=0.0, read=read, measure=measure)
    key = model.resolve(site).key
    out = []
    for start in range(0, len(prompts), batch_size):
        batch = list(prompts[start : start + batch_size])
        tr = model.run(batch, record=[key], record_positions="all" if read == "mean" else "last",
                       reduce="mean", logits=False, chat=chat)
        acts = model.to_numpy(tr.activations[key]).astype(np.float64)  # (B, D): mean, or the last token
        out += [leaf.value(a, 1.0, a) for a in acts]
    return np.array(out, dtype=np.float64)


def find_threshold(model: Any, positive: Sequence[str], negative: Sequence[str], *, directions: Any,
                   sites: Sequence[str] | None = None, read: str = "mean", measure: str = "cosine",
                   chat: bool = False, batch_size: int = 16) -> ThresholdSearch:
    """Search sites × comparisons × thresholds for the condition that best tells ``positive`` prompts
    (should trigger) from ``negative`` ones; thresholds are the midpoints between neighbouring values.

    Args:
        model: The steerable model.
        positive: Prompts that should trigger the behaviour.
        negative: Prompts that should not.
        directions: A SteeringVector (its sites, or ``sites`` of them) or ``{site: direction}``.
        sites: Which of the directions' sites to search (default: all).
        read: ``"mean"`` or ``"last"``, as for :func:`~mlx_steer.engine.conditions.condition`.
        measure: ``"cosine"`` or ``"projection"``, likewise.
        chat: Wrap each prompt as a chat user turn (as the condition will see it).

    Raises:
        ValueError: no prompts of a kind, an unknown read or measure, a site without a direction.
    """
    if not positive or not negative:
        raise ValueError("find_threshold needs positive and negative example prompts")
    if read not in READS or measure not in MEASURES:
        raise ValueError(f"read must be one of {READS} and measure one of {MEASURES}, got {read!r}, {measure!r}")
    # keyed by resolved site: a SteeringVector's paths read at its hook point (``path:input`` for input vectors)
    point = getattr(directions, "hook_point", "output")
    table = {model.resolve(s if point == "output" else f"{s}:{point}").key: d
             for s, d in dict(getattr(directions, "directions", directions)).items()}
    chosen = list(table) if sites is None else [model.resolve(s).key for s in sites]
    missing = [s for s in chosen if s not in table]
    if missing:
        raise ValueError(f"no direction for site(s) {missing}; have: {', '.join(table)}")
    labels = np.array([True] * len(positive) + [False] * len(negative))
    rows: list[ThresholdRow] = []
    for s in chosen:
        values = condition_values(model, [*positive, *negative], site=s, direction=table[s], read=read,
                                  measure=measure, chat=chat, batch_size=batch_size)
        u = np.unique(values)
        cuts = (u[:-1] + u[1:]) / 2 if len(u) > 1 else u
        for compare in (">", "<"):
            for t in cuts:
                pred = values > t if compare == ">" else values < t
                tp = int((pred & labels).sum())
                precision = tp / max(int(pred.sum()), 1)
                recall = tp / int(labels.sum())
                f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
                rows.append(ThresholdRow(s, compare, float(t), precision, recall, f1,
                                         float((pred == labels).mean())))
    best = max(enumerate(rows), key=lambda ir: (ir[1].f1, ir[1].accuracy, -ir[0]))[1]
    return ThresholdSearch(best, rows, {s: np.asarray(table[s], dtype=np.float32) for s in chosen}, read, measure)
