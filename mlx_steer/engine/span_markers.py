"""Markers that open and close spans, matched on a row's committed tokens as they arrive.

A marker is text (matched on the decoded text of each committed token, so a marker the tokenizer
splits into several tokens, or merges with its neighbours, is still found) or a sequence of token
ids (matched on the ids). A match *completes* at the token holding its last character or id;
everything a span does is keyed to that token.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Marker:
    """Text (``text``) or token ids (``ids``): exactly one is set."""

    text: str | None = None
    ids: tuple[int, ...] = ()

    def __str__(self) -> str:
        return repr(self.text) if self.text is not None else "[" + ",".join(map(str, self.ids)) + "]"

    @property
    def length(self) -> int:
        return len(self.text) if self.text is not None else len(self.ids)


def as_marker(value: object, *, what: str = "marker") -> Marker:
    """A marker from text (non-empty string), a token id, or a non-empty list of token ids.

    Raises:
        ValueError: naming the value and the valid forms.
    """
    if isinstance(value, Marker):
        return value
    if isinstance(value, str):
        if not value:
            raise ValueError(f"{what} is an empty string; a marker is non-empty text or token ids")
        return Marker(text=value)
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = [value]
    if isinstance(value, (list, tuple, np.ndarray)):
        ids = list(np.asarray(value).reshape(-1).tolist()) if isinstance(value, np.ndarray) else list(value)
        bad = [v for v in ids if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0]
        if ids and not bad:
            return Marker(ids=tuple(int(v) for v in ids))
    raise ValueError(f"{what} {value!r} is not a marker; valid: non-empty text (e.g. '</think>'), "
                     "a token id, or a non-empty list of token ids")


class MarkerMatcher:
    """Finds where a marker completes in a stream fed one token at a time.

    ``feed(token)`` returns the offsets, within that token's own text (or 0 for an id marker), at
    which the marker completes; usually none, at most a few.
    """

    def __init__(self, marker: Marker, text_of: Callable[[int], str]):
        self.marker, self.text_of = marker, text_of
        self._tail: str | tuple[int, ...] = "" if marker.text is not None else ()

    def feed(self, token: int) -> list[int]:
        if self.marker.text is not None:
            return self._feed_text(self.text_of(token) if token >= 0 else "")
        return self._feed_ids(token)

    def _feed_text(self, piece: str) -> list[int]:
        m = self.marker.text
        assert m is not None and isinstance(self._tail, str)
        buf = self._tail + piece
        ends, i = [], buf.find(m)
        while i >= 0:  # every match ends inside ``piece``: the tail is shorter than the marker
            ends.append(i + len(m) - len(self._tail))
            i = buf.find(m, i + 1)
        self._tail = buf[max(0, len(buf) - (len(m) - 1)):] if len(m) > 1 else ""
        return ends

    def _feed_ids(self, token: int) -> list[int]:
        m = self.marker.ids
        assert isinstance(self._tail, tuple)
        buf = self._tail + (token,)
        hit = len(buf) >= len(m) and buf[-len(m):] == m
        self._tail = buf[max(0, len(buf) - (len(m) - 1)):] if len(m) > 1 else ()
        return [0] if hit else []


class SpanTrace:
    """Per position, whether it lies inside a span and how many span tokens came before it.

    Position ``p``'s membership depends only on the tokens before it: a span starts at the token
    after its opening marker completes and ends with the token that completes its closing marker
    (a closing marker's tokens are inside the span; they cannot be known as a marker before its
    last token). Spans do not nest: an opening marker inside an open span, and a closing marker
    outside one, change nothing. ``close=None`` never closes (everything after the marker).
    """

    def __init__(self, open: Marker, close: Marker | None, text_of: Callable[[int], str]):
        self.open = MarkerMatcher(open, text_of)
        self.close = None if close is None else MarkerMatcher(close, text_of)
        self.inside = [False]  # inside[p]: position p is in a span (p = 0 .. processed)
        self.count = [0]  # count[p]: tokens of the current span before p

    @property
    def processed(self) -> int:
        return len(self.inside) - 1

    def advance(self, tokens: Sequence[int]) -> None:
        """Read ``tokens``, the committed tokens at positions ``processed``, ``processed + 1``, ..."""
        for t in tokens:
            was, n = self.inside[-1], self.count[-1]
            events = [(end, 1) for end in self.open.feed(t)]
            if self.close is not None:
                events += [(end, 0) for end in self.close.feed(t)]
            now, restarted = was, False
            # in text order; where both complete at one character, the closing marker counts first
            for _, opens in sorted(events):
                if opens and not now:
                    now, restarted = True, True
                elif not opens and now:
                    now = False
            self.inside.append(now)
            self.count.append(0 if restarted or not now else n + 1)
