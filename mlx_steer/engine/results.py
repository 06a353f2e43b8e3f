"""What the model's calls return: a forward's :class:`Trace`, a batch's :class:`BatchResult`, and
one generated token of a batch row (:class:`RowStep`, as a backend's batch loop reports it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .activations import Activations

__all__ = ["BatchResult", "RowStep", "Trace"]


class Trace:
    """Result of ``model.trace`` / ``model.run``: activations, logits and the token layout."""

    def __init__(self, activations: Activations, logits: Any, tokens: list[list[int]]):
        self.activations = activations  # what the forward's recorders collected, by site
        self.logits = logits
        self.tokens = tokens
        self.lengths = [len(t) for t in tokens]
        self.padding = [max(self.lengths) - n for n in self.lengths]


@dataclass
class BatchResult:
    """What :meth:`Steerable.batch_generate` returns, one entry per prompt, in prompt order.

    Attributes:
        texts: The generated text of each row (its tokens decoded together).
        token_ids: The generated token ids of each row (EOS excluded).
        finish_reasons: ``"stop"`` (EOS) or ``"length"`` per row.
        conditions: Per row, each conditional intervention's decision on that row's prompt
            (``{"met": bool, "values": {condition name: value}}``; empty without conditions).
    """

    texts: list[str]
    token_ids: list[list[int]]
    finish_reasons: list[str]
    conditions: list[list[dict[str, Any]]] = field(default_factory=list)


@dataclass
class RowStep:
    """One generated token of one batch row, as a backend's batch loop reports it."""

    row: int
    token: int
    finish_reason: str | None = None
