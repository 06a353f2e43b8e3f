"""Where a span selector falls in a whole token sequence, resolved offline (no model run).

The rules are those the model applies while it runs (a position reads only the tokens before it),
so the mask of a finished sequence is the mask each position had when it was computed: monitors,
loop reports, the server and ``evaluate`` use it to split a finished generation by span.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .positions import Positions, as_positions
from .span_book import SpanBook, TokenFacts


class _HostOps:
    """The one array operation the book needs offline: tokens are already numpy."""

    def ids_to_numpy(self, x: Any) -> np.ndarray:
        return np.asarray(x)

    def schedule(self, xs: list[Any]) -> None:
        """Nothing to compute: the tokens are on the host."""


def locate(selector: object, tokens: Sequence[int] | np.ndarray, *, tokenizer: Any = None,
           prompt_len: int | None = None, facts: TokenFacts | None = None) -> np.ndarray:
    """Boolean (n,) mask: which of the ``n`` positions of ``tokens`` ``selector`` selects.

    Args:
        selector: Any position selector (``as_positions`` forms, span selectors included).
        tokens: The sequence: the prompt, then what was generated.
        tokenizer: The model's tokenizer (for text markers, special tokens, reasoning markers).
        prompt_len: Where the prompt ends (``generated``, ``last`` and ``answer`` need it;
            default: the whole sequence is the prompt).
        facts: A :class:`TokenFacts` to reuse across calls (instead of ``tokenizer``).
    """
    sel = as_positions(selector)
    ids = np.asarray(tokens, dtype=np.int64).reshape(1, -1)
    n = ids.shape[1]
    plen = np.array([n if prompt_len is None else int(prompt_len)], dtype=np.int64)
    pos = np.arange(n, dtype=np.int64).reshape(1, -1)
    if sel.kind != "span":
        return sel.mask(pos, plen)[0]
    assert sel.span is not None
    if facts is None:
        if tokenizer is None:
            raise ValueError(f"span selector {sel} needs the tokenizer to resolve")
        facts = TokenFacts(tokenizer)
    book = SpanBook(facts, _HostOps())  # type: ignore[arg-type]
    book.begin(pos, np.zeros(1, dtype=np.int64), ids, None, None)
    return book.mask(sel.span, pos, lambda p: Positions.mask(p, pos, plen))[0]
