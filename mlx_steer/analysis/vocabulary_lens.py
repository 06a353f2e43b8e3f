"""What a direction writes to the vocabulary: the tokens whose logits it raises and lowers most
through the unembedding (optionally after the final norm, a logit-lens read)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .vector_inputs import pick

if TYPE_CHECKING:
    from ..engine.paths import Site
    from ..engine.model import Steerable


@dataclass(frozen=True)
class TokenReport:
    """Tokens a direction promotes and demotes through the unembedding.

    Attributes:
        boosted: ``(token, id, logit)`` with the highest logits, best first.
        suppressed: ``(token, id, logit)`` with the lowest logits, lowest first.
        site: The site the direction came from (None for a raw array).
        final_norm: Whether the final norm was applied before the unembedding.
    """

    boosted: tuple[tuple[str, int, float], ...]
    suppressed: tuple[tuple[str, int, float], ...]
    site: str | None = None
    final_norm: bool = False

    def to_text(self) -> str:
        """Two aligned columns: boosted and suppressed tokens with their ids and logits."""
        w = max(len(repr(t)) for t, _, _ in self.boosted + self.suppressed)
        lines = [f"{'boosted':<{w + 19}}suppressed"]
        for (a, ia, sa), (b, ib, sb) in zip(self.boosted, self.suppressed):
            lines.append(f"{repr(a):<{w}} {ia:>6} {sa:+9.3f}  {repr(b):<{w}} {ib:>6} {sb:+9.3f}")
        return "\n".join(lines)


def top_tokens(
    model: Steerable, vector: object, *, site: str | Site | None = None, k: int = 10,
    final_norm: bool = False,
) -> TokenReport:
    """The ``k`` tokens whose logits a direction raises most and lowers most (unembedding only).

    Args:
        model: A steerable model of either backend.
        vector: A raw (D,) direction, or a SteeringVector (``site`` picks the direction; optional
            when it has one).
        site: The SteeringVector's site to read the direction from.
        k: Tokens per list.
        final_norm: Apply the final norm first (a logit-lens read of the direction).

    Returns:
        A :class:`TokenReport`.

    Raises:
        ValueError: ``k`` not a positive int, or no direction at ``site``.
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    key, d = pick(model, vector, site)
    logits = np.asarray(model.unembed(d[None], final_norm=final_norm), dtype=np.float32)[0]
    n = tokenizer_size(model.tokenizer)
    if n is not None:  # padded vocabularies have rows no token decodes to
        logits = logits[: min(n, logits.shape[0])]
    order = np.argsort(-logits, kind="stable")
    k = min(k, logits.shape[0])

    def rows(ids: np.ndarray) -> tuple[tuple[str, int, float], ...]:
        return tuple((model.tokenizer.decode([int(i)]), int(i), float(logits[i])) for i in ids)

    return TokenReport(rows(order[:k]), rows(order[::-1][:k]), key, final_norm)


def tokenizer_size(tok: Any) -> int | None:
    """Tokens the tokenizer knows (added ones included); None if it cannot say."""
    try:
        return len(tok)
    except TypeError:  # an older mlx-lm TokenizerWrapper has no __len__; its vocab is public
        pass
    try:
        return len(tok.get_vocab())
    except (AttributeError, TypeError):
        return None
