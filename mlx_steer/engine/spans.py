"""Span selectors: positions chosen by markers in each row's own tokens, usable wherever positions
are (interventions, recordings, monitors, conditions, the server's ``positions``).

    from mlx_steer import spans

    spans.between("<think>", "</think>")            # inside the reasoning
    ~spans.between("<tool_call>", "</tool_call>")   # never inside a tool call
    spans.after("Answer:")                          # everything after a marker
    spans.answer()                                  # generated tokens outside the reasoning
    spans.between("<think>", "</think>", from_token=200)   # a budget: from the span's 200th token
    Positions("generated") & ~spans.special()       # combinations: & | ~

The rules, the same in a prompt, while generating, per row of a batch and across turns:

- A position's membership depends only on the tokens before it. A span begins at the token after
  its opening marker completes and ends with the token that completes its closing marker (the
  closing marker's tokens are inside; the opening marker's are not). A span that opens while
  generating is steered from the next forward on.
- Markers are text, matched on the decoded text of the committed tokens (so a marker split over
  several tokens is found), or token ids, matched on the ids.
- Spans do not nest: an opening marker inside an open span, or a closing marker outside one (a
  closing marker before any opening one), changes nothing. An unclosed span lasts to the end; a
  marker that never appears selects nothing (``before`` it: everything).
- ``from_token=n`` selects the span's tokens from its ``n``-th (0-based) on, counted afresh each
  time the span opens.
- ``special`` reads each position's own token: a decode step computes that part of the mask on the
  device, from the token it runs on (it does not wait for it on the host).
- Positions whose tokens the model never saw (a prompt cache filled elsewhere, input embeddings)
  count as tokens that match no marker.
"""

from __future__ import annotations

from .positions import Positions
from .span_json import after_node, answer_node, between_node, reasoning_node
from .span_nodes import Not, Special

__all__ = ["after", "answer", "before", "between", "outside", "reasoning", "special"]


def between(open: str | int | list[int], close: str | int | list[int], *, from_token: int = 0) -> Positions:
    """Positions inside ``open`` … ``close`` (from the span's ``from_token``-th token on)."""
    return Positions("span", span=between_node(open, close, from_token=from_token))


def outside(open: str | int | list[int], close: str | int | list[int]) -> Positions:
    """Positions not inside ``open`` … ``close``: ``~between(open, close)``."""
    return Positions("span", span=Not(between_node(open, close)))


def after(marker: str | int | list[int], *, from_token: int = 0) -> Positions:
    """Positions after the first time ``marker`` completes."""
    return Positions("span", span=after_node(marker, from_token=from_token))


def before(marker: str | int | list[int]) -> Positions:
    """Positions up to the token that completes ``marker`` (all of them when it never does)."""
    return Positions("span", span=Not(after_node(marker)))


def reasoning(*, open: str | int | list[int] | None = None, close: str | int | list[int] | None = None,
              from_token: int = 0) -> Positions:
    """The model's reasoning: between the markers named, else those of the tokenizer's conventions
    (single ``<think>``/``</think>`` tokens and similar pairs, or gpt-oss's analysis channel); empty
    where the tokenizer has none."""
    return Positions("span", span=reasoning_node(open, close, from_token=from_token))


def answer(*, open: str | int | list[int] | None = None, close: str | int | list[int] | None = None) -> Positions:
    """Generated tokens outside the reasoning (all generated tokens for a model that does not reason)."""
    return Positions("span", span=answer_node(Positions("generated"), open, close))


def special() -> Positions:
    """Positions holding one of the tokenizer's special tokens (``~special()``: all others)."""
    return Positions("span", span=Special())
