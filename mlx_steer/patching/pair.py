"""A clean and a corrupted prompt as a patching sweep reads them: their token ids, which clean
position feeds which corrupted position, and the metric's per-row values."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..engine.gradients import Metric
    from ..engine.model import Steerable

__all__ = ["PromptPair", "metric_rows", "prompt_pair", "single_token"]


@dataclass(frozen=True)
class PromptPair:
    """Attributes:
        clean: The clean prompt's token ids.
        corrupted: The corrupted prompt's token ids.
        aligned: ``(clean position, corrupted position)`` pairs a sweep patches, in corrupted order.
        labels: The corrupted prompt's tokens as text, one per position.
    """

    clean: list[int]
    corrupted: list[int]
    aligned: tuple[tuple[int, int], ...]
    labels: tuple[str, ...]


def prompt_pair(model: Steerable, clean: str | Sequence[int], corrupted: str | Sequence[int], *,
                aligned: Sequence[tuple[int, int]] | None = None, chat: bool = False) -> PromptPair:
    """Tokenize and align a prompt pair.

    Args:
        aligned: ``(clean position, corrupted position)`` pairs to patch; required when the prompts
            tokenize to different lengths (default: every position with itself).

    Raises:
        ValueError: different lengths without ``aligned``, or a pair out of range or repeated.
    """
    c = model.encode(clean, chat=chat) if isinstance(clean, str) else model.prompts.encode_batch([clean])[0]
    r = model.encode(corrupted, chat=chat) if isinstance(corrupted, str) else model.prompts.encode_batch([corrupted])[0]
    if aligned is None:
        if len(c) != len(r):
            raise ValueError(f"the clean prompt has {len(c)} tokens and the corrupted one {len(r)}; make them the "
                             "same length or give aligned=[(clean position, corrupted position), ...]")
        pairs = tuple((i, i) for i in range(len(r)))
    else:
        pairs = tuple(_pair(p, len(c), len(r)) for p in aligned)
        if not pairs:
            raise ValueError("aligned is empty; give at least one (clean position, corrupted position) pair")
        seen = [q for _, q in pairs]
        if len(set(seen)) != len(seen):
            raise ValueError(f"aligned patches a corrupted position twice: {sorted({q for q in seen if seen.count(q) > 1})}")
        pairs = tuple(sorted(pairs, key=lambda p: p[1]))
    labels = tuple(model.prompts.decode([t]) for t in r)
    return PromptPair(list(c), list(r), pairs, labels)


def _pair(p: object, n_clean: int, n_corrupted: int) -> tuple[int, int]:
    if (not isinstance(p, (tuple, list)) or len(p) != 2
            or any(isinstance(x, bool) or not isinstance(x, (int, np.integer)) for x in p)):
        raise ValueError(f"aligned entries must be (clean position, corrupted position) int pairs, got {p!r}")
    a, b = int(p[0]), int(p[1])
    if not 0 <= a < n_clean or not 0 <= b < n_corrupted:
        raise ValueError(f"aligned pair {p!r} out of range; valid: clean 0..{n_clean - 1}, corrupted 0..{n_corrupted - 1}")
    return a, b


def single_token(model: Steerable, text: str | int, what: str) -> int:
    """The token id of ``text`` (a string that is one token, e.g. ``" Paris"``) or an id.

    Raises:
        ValueError: text that is not exactly one token (naming its tokens), or an id out of range.
    """
    if isinstance(text, (int, np.integer)) and not isinstance(text, bool):
        ids = model.prompts.encode_batch([[int(text)]])[0]
        return ids[0]
    if not isinstance(text, str) or not text:
        raise ValueError(f"{what} must be a non-empty string or a token id, got {text!r}")
    ids = model.prompts.tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        pieces = [model.prompts.decode([i]) for i in ids]
        raise ValueError(f"{what} {text!r} is {len(ids)} tokens {pieces}; the metric needs a single token "
                         "(try a leading space, or another word)")
    return int(ids[0])


def metric_rows(model: Steerable, metric: Metric, logits: Any, rows: int) -> np.ndarray:
    """The metric's (rows,) float64 values on a batch's logits.

    Raises:
        ValueError: a metric that does not give one finite value per row.
    """
    value = metric(logits)
    xp = model.xp
    shape = tuple(value.shape) if xp.is_array(value) else None
    if shape not in ((rows,), () if rows == 1 else None):
        got = f"shape {shape}" if shape is not None else type(value).__name__
        raise ValueError(f"the metric must return one value per row ({rows},) as a {xp.array_type}, got {got}")
    out = model.to_numpy(value).astype(np.float64).reshape(rows)
    if not np.all(np.isfinite(out)):
        raise ValueError(f"the metric is not finite: {out.tolist()}")
    return out
