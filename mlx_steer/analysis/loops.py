"""Repetition loops in a token sequence (:func:`find_loops`): an n-gram that keeps coming back, the
degenerate repetition a model falls into when steered too hard or left to ramble.

A loop is an n-gram repeated at least ``min_repeats`` times, each repeat starting at most ``window``
tokens after the one before. Repeats are counted without overlap (``a a a a a a`` holds three
``a a``, not five), so a loop covers at least ``n * min_repeats`` tokens whatever its period.
Overlapping loops (the rotations of one repeated block, ``b c d a`` inside ``a b c d a b c d ...``)
are merged into one.

Defaults (``n=4, window=64, min_repeats=3``): four tokens back three times within a short distance
is what a loop looks like and what fluent text almost never does (a phrase of four tokens recurs
once now and then, rarely twice in a row); a loop whose period is up to 64 tokens (a repeated
sentence or two) repeats its n-grams on every cycle and is flagged after three.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

__all__ = ["Loop", "find_loops", "label_loops", "text_loops"]


@dataclass(frozen=True)
class Loop:
    """One repetition loop.

    Attributes:
        start: Index of the first token of the first repeat.
        stop: One past the last token of the last repeat (merged loops: of the last one's).
        ngram: The repeated n-gram (of merged loops, the one repeated most, then the earliest).
        repeats: How many times ``ngram`` occurs in the loop, without overlap.
        span: Where it occurred (:func:`label_loops`): the name of the span holding most of its
            tokens; None when unlabelled or in none.
    """

    start: int
    stop: int
    ngram: tuple[int, ...]
    repeats: int
    span: str | None = None

    def __len__(self) -> int:
        return self.stop - self.start

    def shifted(self, offset: int) -> Loop:
        """The same loop with positions moved by ``offset`` (e.g. generated-token indices to absolute positions)."""
        return replace(self, start=self.start + offset, stop=self.stop + offset)


def find_loops(tokens: Sequence[int] | np.ndarray, *, n: int = 4, window: int = 64, min_repeats: int = 3) -> list[Loop]:
    """The repetition loops of one token sequence (one row), in order of position.

    Args:
        tokens: Token ids, 1-D. For a batch, call it per row.
        n: Length of the repeated n-gram (>= 1).
        window: Most tokens from one repeat's start to the next's (>= n: non-overlapping repeats
            are at least n apart).
        min_repeats: Fewest repeats that make a loop (>= 2).

    Returns:
        The loops, sorted by ``start``; empty for a sequence shorter than ``n * min_repeats``.

    Raises:
        ValueError: tokens not 1-D integers, or an option out of its range (naming it and the range).
    """
    _check_int("n", n, 1)
    _check_int("min_repeats", min_repeats, 2)
    _check_int("window", window, n, hint=f" (n={n}: repeats that do not overlap are at least n apart)")
    ids = np.asarray(tokens)
    if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
        raise ValueError(f"tokens must be a 1-D sequence of token ids, got an array of shape {ids.shape} "
                         f"and dtype {ids.dtype}; call find_loops once per row")
    seq = [int(t) for t in ids]
    starts: dict[tuple[int, ...], list[int]] = {}
    for i in range(len(seq) - n + 1):
        starts.setdefault(tuple(seq[i: i + n]), []).append(i)
    found = []
    for gram, at in starts.items():
        chain = [at[0]]
        for s in at[1:]:
            if s < chain[-1] + n:  # overlaps the repeat before it
                continue
            if s - chain[-1] > window:
                found += _chain_loop(chain, gram, min_repeats)
                chain = []
            chain.append(s)
        found += _chain_loop(chain, gram, min_repeats)
    return _merge(sorted(found, key=lambda lp: lp.start))


def label_loops(loops: Sequence[Loop], masks: Mapping[str, np.ndarray]) -> list[Loop]:
    """``loops``, each with ``span`` set to the name of the mask selecting most of its tokens
    (ties: the earlier name in ``masks``; None where no mask selects any of them).

    Args:
        loops: Loops whose positions index the masks.
        masks: Name -> boolean mask over the same positions (e.g. from
            :func:`mlx_steer.engine.span_locate.locate`).

    Raises:
        ValueError: a mask is not 1-D or too short for a loop.
    """
    for name, mask in masks.items():
        if np.ndim(mask) != 1:
            raise ValueError(f"mask {name!r} must be 1-D, got shape {np.shape(mask)}")
        if loops and len(mask) < max(lp.stop for lp in loops):
            raise ValueError(f"mask {name!r} covers {len(mask)} positions; the loops reach position "
                             f"{max(lp.stop for lp in loops) - 1}")
    out = []
    for lp in loops:
        counts = [(int(np.count_nonzero(np.asarray(m, dtype=bool)[lp.start: lp.stop])), name) for name, m in masks.items()]
        best = max(counts, key=lambda c: c[0], default=(0, None))  # max keeps the first of equals
        out.append(replace(lp, span=best[1] if best[0] else None))
    return out


def text_loops(text: str, *, tokenizer: Any, n: int = 4, window: int = 64, min_repeats: int = 3) -> list[tuple[Loop, str]]:
    """The loops of ``text`` as ``tokenizer`` encodes it (no special tokens added), each with its
    n-gram decoded."""
    ids = list(tokenizer.encode(text, add_special_tokens=False))
    return [(lp, tokenizer.decode(list(lp.ngram))) for lp in find_loops(ids, n=n, window=window, min_repeats=min_repeats)]


def _chain_loop(chain: list[int], gram: tuple[int, ...], min_repeats: int) -> list[Loop]:
    return [Loop(chain[0], chain[-1] + len(gram), gram, len(chain))] if len(chain) >= min_repeats else []


def _merge(loops: list[Loop]) -> list[Loop]:
    """Overlapping loops (sorted by start) as one: their union, named by the most repeated n-gram."""
    out: list[Loop] = []
    for lp in loops:
        if out and lp.start < out[-1].stop:
            prev = out[-1]
            keep = lp if lp.repeats > prev.repeats else prev  # equal repeats: the earlier one
            out[-1] = Loop(prev.start, max(prev.stop, lp.stop), keep.ngram, keep.repeats)
        else:
            out.append(lp)
    return out


def _check_int(name: str, value: object, low: int, *, hint: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an int >= {low}{hint}, got {value!r}")
