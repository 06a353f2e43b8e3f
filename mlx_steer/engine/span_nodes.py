"""The nodes of a span selector: markers' spans, special tokens, index selectors, and their
combinations. Frozen and hashable (a forward memoizes masks by selector); evaluated per row by
:class:`~mlx_steer.engine.span_book.SpanBook`. Build them with :mod:`mlx_steer.engine.spans`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .span_markers import Marker


class IndexSelector(Protocol):
    """An index-based selector (a :class:`~mlx_steer.engine.positions.Positions`)."""

    def mask(self, pos: np.ndarray, prompt_len: np.ndarray, prompt_start: np.ndarray | int = 0) -> np.ndarray: ...


class Node:
    """A span selector node."""


@dataclass(frozen=True)
class Between(Node):
    """Inside ``open`` … ``close`` (``close=None``: everything after ``open``), from the span's
    ``from_token``-th token on (0: all of it)."""

    open: Marker
    close: Marker | None
    from_token: int = 0

    def __str__(self) -> str:
        tail = f", from_token={self.from_token}" if self.from_token else ""
        if self.close is None:
            return f"after({self.open}{tail})"
        return f"between({self.open}, {self.close}{tail})"


@dataclass(frozen=True)
class Reasoning(Node):
    """The model's reasoning, between the markers its tokenizer's conventions name (see
    :func:`~mlx_steer.engine.span_book.reasoning_markers`); empty where it has none."""

    from_token: int = 0

    def __str__(self) -> str:
        return f"reasoning(from_token={self.from_token})" if self.from_token else "reasoning"


@dataclass(frozen=True)
class Special(Node):
    """Positions holding one of the tokenizer's special tokens (reads each position's own token)."""

    def __str__(self) -> str:
        return "special"


@dataclass(frozen=True)
class Index(Node):
    """An index selector (``generated``, a window ...) inside a combination."""

    positions: IndexSelector

    def __str__(self) -> str:
        return str(self.positions)


@dataclass(frozen=True)
class Not(Node):
    inner: Node

    def __str__(self) -> str:
        return f"~{self.inner}"


@dataclass(frozen=True)
class And(Node):
    parts: tuple[Node, ...]

    def __str__(self) -> str:
        return "(" + " & ".join(map(str, self.parts)) + ")"


@dataclass(frozen=True)
class Or(Node):
    parts: tuple[Node, ...]

    def __str__(self) -> str:
        return "(" + " | ".join(map(str, self.parts)) + ")"


def needs_current_tokens(node: Node) -> bool:
    """Whether the node reads each position's own token (a decode step then waits for it)."""
    if isinstance(node, Special):
        return True
    if isinstance(node, Not):
        return needs_current_tokens(node.inner)
    if isinstance(node, (And, Or)):
        return any(needs_current_tokens(p) for p in node.parts)
    return False
