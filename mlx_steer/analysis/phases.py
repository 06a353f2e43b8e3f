"""Readings of a finished generation split by phase: the mean of per-position values (a monitor's
projections, a recording's activations) over the positions each span selects, and its loops
labelled with the span they occurred in.

A value read at absolute position ``p`` belongs to a span when the span selects ``p`` (the rule of
:mod:`mlx_steer.engine.spans`, resolved offline by :func:`~mlx_steer.engine.span_locate.locate`):
the same positions a steering intervention with that selector would act on. A monitor reads token
``i``'s projection at position ``prompt_len - 1 + i``, so ``"answer"`` (generated positions outside
the reasoning) leaves out the first projection, read at the last prompt position.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..engine.span_book import TokenFacts
from ..engine.span_locate import locate
from .loops import Loop, find_loops, label_loops

__all__ = ["generation_loops", "span_masks", "span_means"]


def span_masks(selectors: Mapping[str, object], tokens: Sequence[int] | np.ndarray, *, tokenizer: Any,
               prompt_len: int, facts: TokenFacts | None = None) -> dict[str, np.ndarray]:
    """Name -> boolean mask over the positions of ``tokens`` (the prompt, then what was generated)
    that each selector selects (``facts``: the tokenizer's :class:`TokenFacts`, kept across calls,
    instead of ``tokenizer``).

    Raises:
        ValueError: a bad selector (naming it and the valid forms), or ``prompt_len`` outside 0..len(tokens).
    """
    if isinstance(prompt_len, bool) or not isinstance(prompt_len, (int, np.integer)) or not 0 <= prompt_len <= len(tokens):
        raise ValueError(f"prompt_len must be an int in 0..{len(tokens)} (the sequence's length), got {prompt_len!r}")
    if facts is None and tokenizer is not None:  # neither: locate names the selector needing one
        facts = TokenFacts(tokenizer)
    return {name: locate(sel, tokens, facts=facts, prompt_len=int(prompt_len)) for name, sel in selectors.items()}


def span_means(values: np.ndarray, positions: Sequence[int] | np.ndarray,
               masks: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Name -> mean of ``values[k]`` over the ``k`` whose position ``positions[k]`` the mask selects
    (shape ``values.shape[1:]``; NaN where it selects none of them).

    Args:
        values: (K, ...) readings, e.g. a monitor's (K,) projections or (K, D) recorded activations.
        positions: (K,) absolute position of each reading.
        masks: Name -> boolean mask over absolute positions (see :func:`span_masks`).

    Raises:
        ValueError: ``positions`` does not match ``values``, or falls outside a mask.
    """
    vals = np.asarray(values)
    pos = np.asarray(positions, dtype=np.int64)
    if pos.shape != vals.shape[:1]:
        raise ValueError(f"positions has shape {pos.shape}; values has {vals.shape[0] if vals.ndim else 0} readings")
    out = {}
    for name, mask in masks.items():
        m = np.asarray(mask, dtype=bool)
        if pos.size and (pos.min() < 0 or pos.max() >= m.shape[0]):
            raise ValueError(f"positions {pos.min()}..{pos.max()} fall outside mask {name!r} (0..{m.shape[0] - 1})")
        chosen = vals[m[pos]]
        out[name] = (chosen.astype(np.float64).mean(axis=0) if len(chosen)
                     else np.full(vals.shape[1:], np.nan))
    return out


def generation_loops(prompt: Sequence[int], generated: Sequence[int], *, tokenizer: Any = None,
                     spans: Mapping[str, object] | None = None, n: int = 4, window: int = 64,
                     min_repeats: int = 3, facts: TokenFacts | None = None) -> list[Loop]:
    """The loops of ``generated`` (see :func:`~mlx_steer.analysis.loops.find_loops`), at absolute
    positions (``len(prompt) + i`` for generated token ``i``), each labelled with the span of
    ``spans`` holding most of its tokens (needs ``tokenizer`` or its ``facts``)."""
    loops = [lp.shifted(len(prompt)) for lp in find_loops(list(generated), n=n, window=window, min_repeats=min_repeats)]
    if not spans:
        return loops
    masks = span_masks(spans, list(prompt) + list(generated), tokenizer=tokenizer, prompt_len=len(prompt), facts=facts)
    return label_loops(loops, masks)
