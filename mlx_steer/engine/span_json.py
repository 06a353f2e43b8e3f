"""Span selectors written as JSON (the server's ``positions`` field, the CLI's ``--positions``).

    "special" | "reasoning" | "answer"
    {"between": [open, close], "from_token": n}     inside open … close (from its n-th token)
    {"after": marker, "from_token": n}              everything after the marker
    {"before": marker}                              everything up to the marker
    {"outside": [open, close]}                      everything not between them
    {"reasoning": [open, close], "from_token": n}   ``reasoning`` with the markers named
    {"answer": [open, close]}                       ``answer`` with the markers named
    {"not": s}, {"and": [s, ...]}, {"or": [s, ...]} combinations of any selectors

A marker is text ("</think>") or token ids ([151668]).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .span_markers import as_marker
from .span_nodes import And, Between, Index, Node, Not, Or, Reasoning, Special

SPAN_NAMES = ("special", "reasoning", "answer")
SPAN_KEYS = ("between", "after", "before", "outside", "reasoning", "answer", "not", "and", "or")


def count(value: object, what: str = "from_token") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be an int >= 0, got {value!r}")
    return value


def between_node(open: object, close: object, *, from_token: int = 0) -> Node:
    return Between(as_marker(open, what="opening marker"), as_marker(close, what="closing marker"),
                   count(from_token))


def after_node(marker: object, *, from_token: int = 0) -> Node:
    return Between(as_marker(marker), None, count(from_token))


def reasoning_node(open: object = None, close: object = None, *, from_token: int = 0) -> Node:
    if open is None and close is None:
        return Reasoning(count(from_token))
    if open is None or close is None:
        raise ValueError(f"name both reasoning markers or neither; got open={open!r}, close={close!r}")
    return between_node(open, close, from_token=from_token)


def answer_node(generated: Any, open: object = None, close: object = None) -> Node:
    """Generated tokens outside the reasoning (``generated`` is the ``generated`` index selector)."""
    return And((Index(generated), Not(reasoning_node(open, close))))


def named_node(name: str, generated: Any) -> Node:
    if name == "special":
        return Special()
    if name == "reasoning":
        return Reasoning()
    return answer_node(generated)


def parse_span(spec: dict, *, leaf: Callable[[object], Any], generated: Any) -> Node:
    """The node a JSON span object names; ``leaf`` parses the index selectors inside combinations.

    Raises:
        ValueError: naming the object and the valid forms.
    """
    keys = set(spec) - {"from_token"}
    if len(keys) != 1 or not keys <= set(SPAN_KEYS):
        raise ValueError(f"a span object has one of the keys {', '.join(SPAN_KEYS)} (plus from_token "
                         f"for between, after and reasoning); got {sorted(spec)}")
    (key,) = keys
    value, n = spec[key], spec.get("from_token", 0)
    if "from_token" in spec and key not in ("between", "after", "reasoning"):
        raise ValueError(f"from_token applies to between, after and reasoning, not {key!r}")
    if key in ("between", "outside", "answer") or (key == "reasoning" and value is not True):
        if not isinstance(value, list) or len(value) != 2:
            raise ValueError(f'"{key}" takes [open, close] (each text or token ids), got {value!r}')
        if key == "between":
            return between_node(*value, from_token=n)
        if key == "outside":
            return Not(between_node(*value))
        if key == "answer":
            return answer_node(generated, *value)
        return reasoning_node(*value, from_token=n)
    if key == "reasoning":
        return reasoning_node(from_token=n)
    if key == "after":
        return after_node(value, from_token=n)
    if key == "before":
        return Not(after_node(value))
    if key == "not":
        return Not(_part(value, leaf))
    if not isinstance(value, list) or not value:
        raise ValueError(f'"{key}" takes a non-empty list of selectors, got {value!r}')
    parts = tuple(_part(v, leaf) for v in value)
    return And(parts) if key == "and" else Or(parts)


def _part(spec: object, leaf: Callable[[object], Any]) -> Node:
    p = leaf(spec)
    return p.span if p.kind == "span" else Index(p)
