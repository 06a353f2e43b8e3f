"""Streamed text of generated tokens, the same on every backend: each segment is what decoding
all tokens so far adds, so the segments join to the tokens decoded together."""

from __future__ import annotations

from collections.abc import Callable, Sequence

REPLACEMENT = "\ufffd"


class TextStream:
    """Feed tokens with :meth:`add`; each call returns the new text. A trailing incomplete UTF-8
    character (decoded as U+FFFD) is held back until the next token completes it, or the end.

    Args:
        decode: Token ids -> text (the tokenizer's ``decode``).
    """

    def __init__(self, decode: Callable[[Sequence[int]], str]):
        self.decode, self.emitted = decode, ""
        self.ids: list[int] = []

    def add(self, token: int, *, final: bool = False) -> str:
        self.ids.append(int(token))
        return self._segment(final)

    def flush(self) -> str:
        """The text still held back (at the end of generation)."""
        return self._segment(True)

    def _segment(self, final: bool) -> str:
        text = self.decode(self.ids) if self.ids else ""
        if not final:
            text = text.rstrip(REPLACEMENT)
        if not text.startswith(self.emitted):  # a later token changed earlier text: emit from where it differs
            common = 0
            while common < min(len(text), len(self.emitted)) and text[common] == self.emitted[common]:
                common += 1
            text = self.emitted + text[common:]
        seg, self.emitted = text[len(self.emitted):], text
        return seg
