"""Which generated tokens a request's steering covered, and its monitors split by span: both
resolved offline over the finished sequence (prompt + generated ids) with
:func:`~mlx_steer.engine.span_locate.locate`, whose masks are those the model applied while it ran.

A generated token counts as steered when its own position is among the positions of at least
one steering entry (an entry gated by ``when`` counts only when its condition was met). A monitor's projection for token ``i`` is read from the
activation that produced it, at the position before the token's own; the split puts it in the
span that position falls in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..analysis.phases import generation_loops, span_masks, span_means
from ..engine import spans
from ..engine.positions import Positions
from ..engine.span_book import TokenFacts
from ..engine.span_locate import locate

#: The spans a monitor's projections are split by.
MONITOR_SPANS = {"reasoning": spans.reasoning(), "answer": spans.answer()}


@dataclass(frozen=True)
class SteeredSpans:
    """A planned request's steering positions, and the tokenizer facts to resolve them.

    Attributes:
        entries: Per steering entry, its positions and whether a ``when`` condition gates it.
        facts: The served tokenizer's :class:`TokenFacts` (shared by the planner's requests).
    """

    entries: tuple[tuple[Positions, bool], ...]
    facts: TokenFacts

    def steered(self, prompt: Sequence[int], generated: Sequence[int],
                conditions: Sequence[dict[str, Any]] | None = None) -> list[bool]:
        """One bool per generated token: whether any entry's positions hold it.

        Args:
            prompt: The prompt's ids.
            generated: The generated ids, in order.
            conditions: The response's ``conditions`` (``{"steering": i, "condition_met": bool}``).
        """
        met = {c["steering"]: bool(c["condition_met"]) for c in conditions or ()}
        ids = [*prompt, *generated]
        n, P = len(generated), len(prompt)
        out = np.zeros(n, dtype=bool)
        for i, (pos, gated) in enumerate(self.entries):
            if gated and not met.get(i, False):
                continue
            out |= locate(pos, ids, facts=self.facts, prompt_len=P)[P:]
        return out.tolist()

    def monitor_split(self, prompt: Sequence[int], generated: Sequence[int],
                      projections: dict[str, list[float | None]]) -> dict[str, dict[str, dict[str, Any]]]:
        """``{vector: {"reasoning" | "answer": {"tokens": k, "mean": m}}}``: each monitor's projections
        split by the span the activation they were read from falls in (``mean`` None when ``k`` is 0)."""
        P, n = len(prompt), len(generated)
        masks = span_masks(MONITOR_SPANS, [*prompt, *generated], tokenizer=None, prompt_len=P, facts=self.facts)
        read_at = np.arange(P - 1, P - 1 + n)  # token i's projection comes from position P + i - 1
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for vector, values in projections.items():
            arr = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
            read = np.isfinite(arr)
            means = span_means(arr[read], read_at[read], masks)
            out[vector] = {name: {"tokens": int(mask[read_at[read]].sum()),
                                  "mean": None if np.isnan(means[name]) else float(means[name])}
                           for name, mask in masks.items()}
        return out

    def loops(self, prompt: Sequence[int], generated: Sequence[int]) -> list[dict[str, Any]]:
        """The generation's repetition loops (:func:`~mlx_steer.analysis.loops.find_loops`'
        defaults), each ``{"start", "stop", "ngram", "repeats", "span"}`` with ``start``/``stop``
        indexing the generated tokens and ``span`` the one of :data:`MONITOR_SPANS` holding most
        of it (None: neither)."""
        loops = generation_loops(prompt, generated, spans=MONITOR_SPANS, facts=self.facts)
        return [{"start": lp.start - len(prompt), "stop": lp.stop - len(prompt), "ngram": list(lp.ngram),
                 "repeats": lp.repeats, "span": lp.span} for lp in loops]
