"""Incremental text of one generated sequence, the same on every backend: released piece by piece,
stop strings honoured.

Each token re-decodes every id so far and releases the new suffix, holding back a trailing
U+FFFD (an incomplete character) and any suffix that could still grow into a stop string. So the
pieces always join to ``decode(all ids)`` (up to a stop string, which is cut off with what follows).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


class TextStream:
    """The released text of one sequence.

    Args:
        decode: Token ids -> text (decoded together, e.g. ``model.prompts.decode``).
        stop: Strings that end the text when they appear (not included).
    """

    def __init__(self, decode: Callable[[list[int]], str], stop: Sequence[str] = ()):
        self.decode, self.stop = decode, tuple(stop)
        self.ids: list[int] = []
        self.text = ""  # what has been released
        self.stopped = False  # a stop string was found

    def add(self, token: int) -> str:
        """Take one token; returns the text released with it (may be empty)."""
        self.ids.append(token)
        full = self.decode(self.ids)
        sent = len(self.text)
        hits = [i for i in (full.find(s, sent) for s in self.stop) if i >= 0]
        if hits:
            self.stopped = True
            return self._release(full[sent:min(hits)])
        end = len(full)
        while end > sent and full[end - 1] == "\ufffd":
            end -= 1
        end -= self._partial_stop(full[:end], sent)
        return self._release(full[sent:end])

    def flush(self) -> str:
        """The text not yet released, at the end of the sequence."""
        if self.stopped:
            return ""
        return self._release(self.decode(self.ids)[len(self.text):])

    def _partial_stop(self, text: str, sent: int) -> int:
        """Length of the longest suffix of ``text`` (after ``sent``) that starts a stop string."""
        longest = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(text) - sent), longest, -1):
                if text.endswith(s[:k]):
                    longest = k
                    break
        return longest

    def _release(self, piece: str) -> str:
        self.text += piece
        return piece
