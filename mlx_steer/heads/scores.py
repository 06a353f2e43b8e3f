"""Head scores per layer × head, read from attention patterns (:func:`attention_patterns`):

- **previous-token**: the mean attention from each position ``i >= 1`` to ``i - 1``;
- **induction** (TransformerLens' definition): on ``batch`` sequences of ``length`` random tokens
  repeated twice (after BOS when the tokenizer has one), the mean attention from each token of the
  second copy to the token right after its earlier occurrence, ``length - 1`` positions back;
- **sink**: the mean attention from each position ``i >= 1`` to position 0 (the first token), or to
  the earlier positions that hold a chosen token id.

Each returns a :class:`HeadScoreTable` (sortable, ``top(k)``, CSV/JSON, a layers × heads heatmap).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from .patterns import AttentionPatterns, attention_patterns
from .scores_table import KINDS, HeadScore, HeadScoreTable

if TYPE_CHECKING:
    from ..engine.model import Steerable

__all__ = ["head_scores", "induction_scores", "previous_token_scores", "repeated_random_tokens", "sink_scores"]

Prompts = str | Sequence[str] | Sequence[Sequence[int]]


def repeated_random_tokens(model: Steerable, *, length: int = 50, batch: int = 8, seed: int = 0,
                           bos: bool = True) -> list[list[int]]:
    """``batch`` sequences of ``length`` random token ids repeated twice, each after the tokenizer's
    BOS when ``bos`` and it has one. Ids are drawn uniformly from the vocabulary less its special
    tokens, independently per position (a token may occur twice within one copy).

    Raises:
        ValueError: ``length`` < 2 or ``batch`` < 1 (not integers), a negative seed, or a vocabulary
            with fewer than 2 ordinary tokens.
    """
    for name, value, low in (("length", length, 2), ("batch", batch, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    tok = model.tokenizer
    sizes = [n for n in (model.vocab_size, _tokenizer_size(tok)) if n is not None]
    V = min(sizes) if sizes else None  # an embedding padded past the tokenizer has rows no text makes
    if V is None:
        raise ValueError("the model's vocabulary size is unknown: give prompts as token ids instead")
    special = {int(i) for i in (getattr(tok, "all_special_ids", None) or [])}
    pool = np.array([i for i in range(V) if i not in special], dtype=np.int64)
    if len(pool) < 2:
        raise ValueError(f"the vocabulary has {len(pool)} ordinary tokens; random sequences need at least 2")
    rng = np.random.default_rng(seed)
    half = pool[rng.integers(0, len(pool), size=(batch, length))]
    bos_id = getattr(tok, "bos_token_id", None) if bos else None
    head = [] if bos_id is None else [int(bos_id)]
    return [head + row.tolist() + row.tolist() for row in half]


def induction_scores(model: Steerable, *, length: int = 50, batch: int = 8, seed: int = 0, bos: bool = True,
                     layers: int | Sequence[int] | None = None) -> HeadScoreTable:
    """Induction score of each head on repeated random tokens (see :func:`repeated_random_tokens`).

    Args:
        model: A model of either backend.
        length: Random tokens per copy (the sequence is ``2 * length`` tokens, plus BOS).
        batch: Sequences averaged over.
        seed: Seed of the random tokens.
        bos: Start each sequence with the tokenizer's BOS (when it has one).
        layers: Decoder layer indices (negative: from the end); None: every layer.

    Returns:
        A table of kind ``induction``: each head's mean attention from the second copy's tokens
        to the token after their earlier occurrence.

    Raises:
        ValueError: bad options (named), or a sequence longer than the model takes.
    """
    seqs = repeated_random_tokens(model, length=length, batch=batch, seed=seed, bos=bos)
    start = len(seqs[0]) - length  # the second copy's first position
    pats = attention_patterns(model, seqs, layers=layers)
    q = np.arange(start, len(seqs[0]))
    scores = {i: pats[i][:, :, q, q - (length - 1)].mean(axis=(0, 2)) for i in pats.layers}
    info = {"model": str(model.model_id), "length": str(length), "batch": str(batch), "seed": str(seed),
            "bos": str(len(seqs[0]) == 2 * length + 1)}
    return _table("induction", scores, info)


def previous_token_scores(model: Steerable, prompts: Prompts | None = None, *,
                          layers: int | Sequence[int] | None = None, chat: bool = False, length: int = 50,
                          batch: int = 8, seed: int = 0) -> HeadScoreTable:
    """Previous-token score of each head: the mean attention from position ``i`` to ``i - 1`` over
    every position ``i >= 1`` of every prompt.

    Args:
        model: A model of either backend.
        prompts: A string, strings or lists of token ids; None: the repeated random tokens of
            :func:`induction_scores` (``length``, ``batch``, ``seed``).
        layers: Decoder layer indices; None: every layer.
        chat: Wrap each prompt as a chat user turn.

    Raises:
        ValueError: bad prompts or options, or a prompt of one token (it has no previous token).
    """
    tokens, info = _tokens(model, prompts, chat=chat, length=length, batch=batch, seed=seed)
    short = [r for r, t in enumerate(tokens) if len(t) < 2]
    if short:
        raise ValueError(f"prompt {short[0]} is {len(tokens[short[0]])} token long; previous-token scores need "
                         "prompts of at least 2 tokens")
    pats = attention_patterns(model, tokens, layers=layers)
    return _table("previous", _per_query(pats, lambda r, n: (np.arange(1, n), np.arange(0, n - 1))), info)


def sink_scores(model: Steerable, prompts: Prompts | None = None, *, token: int | None = None,
                layers: int | Sequence[int] | None = None, chat: bool = False, length: int = 50, batch: int = 8,
                seed: int = 0) -> HeadScoreTable:
    """Attention-sink score of each head: the mean attention from every position ``i >= 1`` to
    position 0, or with ``token``, the attention summed over the earlier positions holding that
    token id, averaged over the positions after its first occurrence.

    Args:
        model: A model of either backend.
        prompts: As for :func:`previous_token_scores` (None: the repeated random tokens).
        token: A token id to score attention to, instead of position 0.
        layers: Decoder layer indices; None: every layer.
        chat: Wrap each prompt as a chat user turn.

    Raises:
        ValueError: bad prompts or options, ``token`` not an id of the vocabulary or in no prompt
            (before its last position), or prompts of one token.
    """
    tokens, info = _tokens(model, prompts, chat=chat, length=length, batch=batch, seed=seed)
    if token is None:
        if all(len(t) < 2 for t in tokens):
            raise ValueError("every prompt is 1 token long; sink scores need a position after the first")
        pats = attention_patterns(model, tokens, layers=layers)
        return _table("sink", _per_query(pats, lambda r, n: (np.arange(1, n), np.zeros(n - 1, dtype=np.int64))),
                      info | {"to": "position 0"})
    V = model.vocab_size
    if isinstance(token, bool) or not isinstance(token, int) or token < 0 or (V is not None and token >= V):
        raise ValueError(f"token {token!r} is not a token id; valid: 0..{V - 1 if V else 'vocabulary size - 1'}")
    firsts = [t.index(token) if token in t[:-1] else None for t in tokens]
    if all(f is None for f in firsts):
        raise ValueError(f"token {token} ({model.prompts.decode([token])!r}) occurs in no prompt before its "
                         "last position; nothing attends to it")
    pats = attention_patterns(model, tokens, layers=layers)
    sums: dict[int, np.ndarray] = {}
    for i in pats.layers:
        parts = []
        for r, (t, f) in enumerate(zip(tokens, firsts)):
            if f is not None:
                keys = np.asarray(t) == token
                parts.append(pats.row(r, i)[:, f + 1:, keys].sum(-1))  # (H, queries after it)
        sums[i] = np.concatenate(parts, axis=1).mean(axis=1)
    return _table("sink", sums, info | {"to": f"token {token}"})


def head_scores(model: Steerable, kind: str, prompts: Prompts | None = None, *,
                layers: int | Sequence[int] | None = None, length: int = 50, batch: int = 8, seed: int = 0,
                token: int | None = None, chat: bool = False) -> HeadScoreTable:
    """One of the scores by name: ``induction`` (random tokens only: ``prompts`` must be None),
    ``previous`` or ``sink``; the options are those of each function.

    Raises:
        ValueError: an unknown ``kind`` (naming the valid ones), or options the kind does not take.
    """
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} unknown; valid: {', '.join(KINDS)}")
    if kind == "induction":
        if prompts is not None or token is not None or chat:
            raise ValueError("induction scores are read on repeated random tokens: drop prompts, token and chat")
        return induction_scores(model, length=length, batch=batch, seed=seed, layers=layers)
    if kind == "previous":
        if token is not None:
            raise ValueError("token applies to sink scores only")
        return previous_token_scores(model, prompts, layers=layers, chat=chat, length=length, batch=batch, seed=seed)
    return sink_scores(model, prompts, token=token, layers=layers, chat=chat, length=length, batch=batch, seed=seed)


# -- helpers -------------------------------------------------------------------------------------
def _tokens(model: Steerable, prompts: Prompts | None, *, chat: bool, length: int, batch: int,
            seed: int) -> tuple[list[list[int]], dict[str, str]]:
    info = {"model": str(model.model_id)}
    if prompts is None:
        seqs = repeated_random_tokens(model, length=length, batch=batch, seed=seed)
        return seqs, info | {"prompts": "repeated random tokens", "length": str(length), "batch": str(batch),
                             "seed": str(seed)}
    tokens = model.prompts.encode_batch(prompts, chat=chat)
    return tokens, info | {"prompts": str(len(tokens)), "chat": str(chat)}


def _per_query(pats: AttentionPatterns, pick) -> dict[int, np.ndarray]:
    """Per layer, (H,) the mean over every row's queries of ``pattern[h, q, k]`` for the
    ``(q, k)`` index arrays ``pick(row, length)`` gives."""
    out = {}
    for i in pats.layers:
        parts = []
        for r, n in enumerate(pats.lengths):
            q, k = pick(r, n)
            parts.append(pats.row(r, i)[:, q, k])
        out[i] = np.concatenate(parts, axis=1).mean(axis=1)
    return out


def _table(kind: str, scores: dict[int, np.ndarray], info: dict[str, str]) -> HeadScoreTable:
    rows = tuple(HeadScore(kind, layer, h, float(s)) for layer in sorted(scores) for h, s in enumerate(scores[layer]))
    return HeadScoreTable(rows, kind, info)


def _tokenizer_size(tok: object) -> int | None:
    try:
        return len(tok)  # type: ignore[arg-type]
    except TypeError:
        return None
