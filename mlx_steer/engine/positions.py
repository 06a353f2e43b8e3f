"""Position selectors: which absolute token positions an intervention or a recording touches.

Positions are absolute token indices counted from the first real token of each sequence. Both
backends compute, per forward, an integer array ``pos`` of shape (B, L) (negative for left
padding) from the KV-cache offset, and the prompt length of each row; a selector turns them into
a boolean mask. Everything here is numpy: the mask is computed on the host, so a decode step pays
for a comparison of a (B, 1) array and never syncs the device.

``last`` is the last prompt token and, during generation, every new token: each of those is "the
last position" when it is computed, which makes cached generation equal a full recomputation.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .span_book import SpanBook, TokenFacts, anchor_of
from .span_json import SPAN_KEYS, SPAN_NAMES, named_node, parse_span
from .span_nodes import And, Index, Node, Not, Or

if TYPE_CHECKING:
    from .arrays import ArrayOps
    from .layout import Layout

NAMED = ("all", "last", "prompt", "generated")


@dataclass(frozen=True)
class Positions:
    """A position selector. Build with :func:`as_positions` or the class methods.

    Selectors combine with ``&``, ``|`` and ``~`` (e.g. ``Positions("generated") & ~spans.special()``);
    span selectors (:mod:`mlx_steer.engine.spans`) are resolved per row from the tokens.

    Attributes:
        kind: One of ``all, last, last_n, prompt, generated, first_generated, indices, window, span``.
        indices: Absolute indices for ``indices``.
        start: Window start (inclusive), or ``n`` for ``first_generated`` and ``last_n``.
        stop: Window stop (exclusive).
        span: The span expression for ``span``.
    """

    kind: str = "all"
    indices: tuple[int, ...] = ()
    start: int = 0
    stop: int = 0
    span: Node | None = None

    def __and__(self, other: object) -> Positions:
        return Positions("span", span=And((_node(self), _node(as_positions(other)))))

    def __or__(self, other: object) -> Positions:
        return Positions("span", span=Or((_node(self), _node(as_positions(other)))))

    def __invert__(self) -> Positions:
        return Positions("span", span=Not(_node(self)))

    @classmethod
    def window(cls, start: int, stop: int) -> Positions:
        """Absolute positions ``start <= p < stop``."""
        start, stop = _nonneg(start, "window start"), _nonneg(stop, "window stop")
        if stop <= start:
            raise ValueError(f"empty window [{start}, {stop}); stop must be > start")
        return cls("window", start=start, stop=stop)

    @classmethod
    def first_generated(cls, n: int) -> Positions:
        """The first ``n`` generated tokens (absolute positions prompt_len .. prompt_len+n-1)."""
        return cls("first_generated", start=_nonneg(n, "first_generated n"))

    @classmethod
    def last_n(cls, n: int) -> Positions:
        """The last ``n`` prompt tokens of each row (and, while generating, every new token):
        ``last`` widened to the ``n`` positions before the next (``last_n(1)`` is ``last``)."""
        n = _nonneg(n, "last_n n")
        if n < 1:
            raise ValueError(f"last_n needs n >= 1, got {n}")
        return cls("last_n", start=n)

    @property
    def max_index(self) -> int | None:
        """Largest absolute index this selector names explicitly (None when relative)."""
        if self.kind == "indices":
            return max(self.indices)
        if self.kind == "window":
            return self.stop - 1
        return None

    def mask(self, pos: np.ndarray, prompt_len: np.ndarray, prompt_start: np.ndarray | int = 0) -> np.ndarray:
        """Boolean (B, L) mask for absolute positions ``pos`` (B, L), given where each row's prompt
        of this call ends (``prompt_len``, absolute, (B,)) and starts (``prompt_start``: 0, or
        the cache offset when a KV cache is reused across turns)."""
        real = pos >= 0
        plen = np.asarray(prompt_len).reshape(-1, 1)
        k = self.kind
        if k == "all":
            return real
        if k == "last":
            return real & (pos >= plen - 1)
        if k == "last_n":
            return real & (pos >= plen - self.start)
        if k == "prompt":
            return real & (pos < plen) & (pos >= np.asarray(prompt_start).reshape(-1, 1))
        if k == "generated":
            return pos >= plen
        if k == "first_generated":
            return (pos >= plen) & (pos < plen + self.start)
        if k == "indices":
            return real & np.isin(pos, self.indices)
        if k == "span":
            raise ValueError(f"span selector {self} is resolved from each row's tokens, not from positions alone")
        return (pos >= self.start) & (pos < self.stop)

    def __str__(self) -> str:
        if self.kind == "span":
            return str(self.span)
        if self.kind == "indices":
            return "indices(" + ",".join(map(str, self.indices)) + ")"
        if self.kind == "window":
            return f"window({self.start},{self.stop})"
        if self.kind in ("first_generated", "last_n"):
            return f"{self.kind}({self.start})"
        return self.kind


@dataclass(frozen=True)
class Selection:
    """How to gather the selected positions of a (B, L, D) activation, planned on the host.

    kind: ``none``; ``range`` (h[:, start:stop]); ``columns`` (h[:, cols], same for every row);
    ``per_row`` (row b takes columns idx[b], k per row); ``masked`` (h[:, cols] with unselected
    entries zeroed by ``keep``, when rows select different numbers of positions).
    """

    kind: str
    start: int = 0
    stop: int = 0
    cols: np.ndarray | None = None
    idx: np.ndarray | None = None
    keep: np.ndarray | None = None


def plan_selection(host: np.ndarray) -> Selection:
    """Plan the gather for a boolean (B, L) host mask."""
    if not host.any():
        return Selection("none")
    if (host == host[:1]).all():
        cols = np.flatnonzero(host[0])
        if cols[-1] - cols[0] + 1 == cols.size:
            return Selection("range", start=int(cols[0]), stop=int(cols[-1]) + 1)
        return Selection("columns", cols=cols)
    counts = host.sum(axis=1)
    if (counts == counts[0]).all():
        return Selection("per_row", idx=np.stack([np.flatnonzero(r) for r in host]))
    cols = np.flatnonzero(host.any(axis=0))
    return Selection("masked", cols=cols, keep=host[:, cols])


class PositionState:
    """Absolute positions and row keys of the current forward, and its memoized masks.

    ``pos`` is (B, L) int64, negative at left padding; ``prompt_len`` is (B,); ``rows`` is (B,)
    int64 row keys (the prompt's index in a batch, a sequence's uid in continuous batching).
    Each backend's position tracker calls :meth:`begin` before every forward.
    """

    def __init__(self, xp: ArrayOps, *, tokenizer: Any = None) -> None:
        self.xp, self.tokenizer = xp, tokenizer
        self.book: SpanBook | None = None  # made when a span selector is first used
        self._tokens: Any = None  # the current forward's input tokens (device), None for embeddings
        self._anchor: Any = None  # a weak reference to its KV cache
        self.pos = np.zeros((1, 0), dtype=np.int64)
        self.prompt_len = np.zeros(1, dtype=np.int64)  # where each row's prompt ends (absolute)
        self.prompt_start = np.zeros(1, dtype=np.int64)  # where it starts: past turns come before
        self.rows = np.zeros(1, dtype=np.int64)
        self.layouts: list[Layout] = []  # pushed by the model's own trace/generate calls
        self._masks: dict[tuple, object] = {}

    def begin(self, offsets: np.ndarray, length: int, cache: object = None, tokens: Any = None) -> None:
        """Start a forward of ``length`` tokens whose first token sits at ``offsets`` (B,);
        ``tokens`` (B, L) are its input ids (None when it runs on embeddings)."""
        B = offsets.shape[0]
        self.pos = offsets.reshape(-1, 1) + np.arange(length, dtype=np.int64)
        if self.layouts:
            self.prompt_start, self.prompt_len, self.rows = self.layouts[-1].rows_of(B, cache, offsets)
        else:  # a raw call outside trace/generate: each forward's tokens are "the prompt"
            self.prompt_start = np.maximum(offsets, 0)
            self.prompt_len = self.pos[:, -1] + 1 if length else offsets
            self.rows = np.arange(B, dtype=np.int64)
        self._masks = {}
        self._tokens, self._anchor = tokens, _weak(anchor_of(cache))
        if self.book is not None:
            self._begin_book(self.book)

    def _begin_book(self, book: SpanBook) -> None:
        table = getattr(self.layouts[-1], "span_rows", None) if self.layouts else None
        book.begin(self.pos, self.rows, self._tokens, table, None if self._anchor is None else self._anchor())

    def _device_span_mask(self, sel: Positions, rows: frozenset[int] | None, like: object) -> object:
        """A decode step's span mask computed on the device when the span reads the step's own token
        (None: the host mask serves)."""
        assert sel.span is not None
        m = self._span_book().device_mask(sel.span, self.pos, self._index_mask, like=like)
        if m is None or rows is None:
            return m
        keep = np.isin(self.rows, list(rows))[:, None, None]
        return m if keep.all() else self.xp.logical("and", m, self.xp.mask(keep, like=like))

    def track_spans(self, selectors: Iterable[Positions]) -> None:
        """Start following every row's tokens now if any of ``selectors`` is a span selector: a
        selector first asked for in a later forward (a gate deciding after the prompt) needs the
        tokens of the forwards before it."""
        if self.book is None and any(s.kind == "span" for s in selectors):
            self.book = self._new_book()  # fed from the next forward on

    def _span_book(self) -> SpanBook:
        if self.book is None:  # first asked inside a forward: it starts with this one
            self.book = self._new_book()
            self._begin_book(self.book)
        return self.book

    def _new_book(self) -> SpanBook:
        if self.tokenizer is None:
            raise ValueError("span selectors need the model's tokenizer; this model has none")
        return SpanBook(TokenFacts(self.tokenizer), self.xp)

    @contextlib.contextmanager
    def laid_out(self, layout: Layout) -> Iterator[None]:
        """Within the block, forwards are laid out as ``layout`` says (lengths, padding, row keys):
        the engine's and a backend's own calls tell the position tracker what they run."""
        self.layouts.append(layout)
        try:
            yield
        finally:
            self.layouts.remove(layout)

    @property
    def padding(self) -> np.ndarray | None:
        """Left padding of the current batch as the engine laid it out (None for raw calls)."""
        return self.layouts[-1].padding if self.layouts else None

    def _index_mask(self, sel: Positions) -> np.ndarray:
        return sel.mask(self.pos, self.prompt_len, self.prompt_start)

    def host_mask(self, sel: Positions, rows: frozenset[int] | None = None) -> np.ndarray:
        """Boolean (B, L): positions ``sel`` of the rows whose key is in ``rows`` (all when None)."""
        if sel.kind == "span":
            assert sel.span is not None
            m = self._span_book().mask(sel.span, self.pos, self._index_mask)
        else:
            m = self._index_mask(sel)
        if rows is not None:
            m = m & np.isin(self.rows, list(rows))[:, None]
        return m

    def mask(self, sel: Positions, rows: frozenset[int] | None, *, like: object) -> object:
        """True (all selected), False (none) or a (B, L, 1) boolean device array."""
        k = (sel, rows)
        m = self._masks.get(k)
        if m is None and sel.kind == "span":
            m = self._device_span_mask(sel, rows, like)
            if m is not None:
                self._masks[k] = m
        if m is None:
            host = self.host_mask(sel, rows)
            m = True if host.all() else False if not host.any() else self.xp.mask(host[..., None], like=like)
            self._masks[k] = m
        return m


def _weak(anchor: object) -> Any:
    try:
        return None if anchor is None else weakref.ref(anchor)
    except TypeError:  # not weakly referable: its rows are kept with the uncached ones
        return None


def _node(p: Positions) -> Node:
    if p.kind == "span":
        assert p.span is not None
        return p.span
    return Index(p)


def _nonneg(value: object, what: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{what} must be an int, got {value!r}")
    if value < 0:
        raise ValueError(
            f"{what} {value} is negative; positions are absolute indices >= 0 "
            "(use 'last' for the final token)"
        )
    return int(value)


def as_positions(spec: object) -> Positions:
    """Parse a user selector.

    Args:
        spec: ``"all" | "last" | "prompt" | "generated"``, an int, a list/tuple of ints, a
            ``slice(start, stop)`` or ``range``, a :class:`Positions`, ``"special" | "reasoning" |
            "answer"``, ``{"first_generated": n}``, ``{"start": a, "stop": b}``, or a span object
            (:mod:`mlx_steer.engine.span_json`).

    Raises:
        ValueError: naming the bad selector and the valid forms.
    """
    if isinstance(spec, Positions):
        return spec
    if isinstance(spec, str):
        if spec in NAMED:
            return Positions(spec)
        if spec in SPAN_NAMES:
            return Positions("span", span=named_node(spec, Positions("generated")))
        raise ValueError(
            f"unknown position selector {spec!r}; valid: {', '.join(NAMED + SPAN_NAMES)}, an int, a list of "
            "ints, slice(start, stop), Positions.window(a, b), Positions.first_generated(n), a span "
            f"object with one of the keys {', '.join(SPAN_KEYS)}"
        )
    if isinstance(spec, dict):
        if set(spec) == {"first_generated"}:
            return Positions.first_generated(spec["first_generated"])
        if set(spec) == {"start", "stop"}:
            return Positions.window(spec["start"], spec["stop"])
        return Positions("span", span=parse_span(spec, leaf=as_positions, generated=Positions("generated")))
    if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        return Positions("indices", indices=(_nonneg(spec, "position index"),))
    if isinstance(spec, slice):
        if spec.step not in (None, 1):
            raise ValueError(f"position slice step must be 1, got {spec.step}")
        return Positions.window(0 if spec.start is None else spec.start, spec.stop)
    if isinstance(spec, range):
        if spec.step != 1:
            raise ValueError(f"position range step must be 1, got {spec.step}")
        return Positions.window(spec.start, spec.stop)
    if isinstance(spec, (list, tuple, np.ndarray)):
        values = [_nonneg(v, "position index") for v in np.asarray(spec).reshape(-1).tolist()]
        if not values:
            raise ValueError("empty list of position indices")
        return Positions("indices", indices=tuple(sorted(set(values))))
    raise ValueError(f"cannot use {spec!r} as positions; valid: {', '.join(NAMED + SPAN_NAMES)}, int, list, "
                     "slice, a span object (see mlx_steer.engine.span_json)")


def check_reachable(positions: Positions, limit: int, *, what: str) -> None:
    """Reject explicit indices that can never be reached (``limit`` positions exist)."""
    top = positions.max_index
    if top is not None and top >= limit:
        raise ValueError(
            f"position index {top} out of range for {what} of {limit} tokens; valid: 0..{limit - 1}"
        )
