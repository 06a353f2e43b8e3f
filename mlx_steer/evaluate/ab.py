"""CAA's A/B behaviour probability: the vector extracted from the items, and the scoring.

An item is asked as a chat user turn; each answer is the continuation ``"(" + letter`` of the
assistant's reply, scored whole as its log-likelihood (lm-eval's multiple choice, see
:mod:`~mlx_steer.evaluate.continuations`): the behaviour probability is
``p(matching) / (p(matching) + p(not matching))`` of the two continuations. Tokenizers that split
``"("`` from the letter (SmolLM2) give today's ``p(A) / (p(A) + p(B))`` after ``"("`` (the shared
``"("`` cancels); those that merge ``"(A"`` (qwen2) are scored on the tokens they really produce.

Steering (``ab_positions="last"``, CAA's "after the instruction") acts from the last token common
to both answers' sequences onward: the ``"("`` where the letter is split off, the last prompt
token where ``"(A"`` is one token. CAA's vector is read at the last token of each answer's
continuation: the item with its matching answer minus the item with its other answer, averaged
over items (``ab_vector``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..analysis.cell_scoring import steered_layer
from ..engine.positions import Positions, as_positions
from ..engine.shared_prefix import PrefixRefused, refuse_prefix_positions
from ..engine.shared_prefix import shared_prefix as shared_prefix_of
from ..extraction.directions import extract
from .continuations import ANSWER_PREFIX, ABSequences, ab_sequences
from .grid import Grid
from .items import ABItem, as_items

if TYPE_CHECKING:
    from ..engine.model import Steerable
    from ..vectors.steering_vector import SteeringVector

__all__ = ["ANSWER_PREFIX", "ab_prompt", "ab_scores", "ab_vector"]

# A cell's forward from a shared prefix runs one or two tokens per row, not the ~100 of the whole prompt:
# it carries this many times ``batch_size`` rows (its memory per row is a few tokens' activations, one
# layer's gathered prefix keys and values, and the logits at the answer's positions).
SUFFIX_ROWS_PER_ROW = 8


def ab_prompt(model: Steerable, item: ABItem, *, chat: bool = True, system: str | None = None) -> ABSequences:
    """The prompt (the item up to the assistant's reply) and both answers' full token sequences.

    With ``chat`` the question is a user turn and each answer ``"(" + letter`` the start of the
    assistant's reply; without it (a base model) the prompt is ``"<question>\n\nAnswer:"`` and each
    answer ``" (" + letter``.
    """
    return ab_sequences(model, item, chat=chat, system=system)


def ab_vector(model: Steerable, items: Sequence[ABItem] | Sequence[dict], *, layers: Sequence[int | str],
              chat: bool = True, system: str | None = None, batch_size: int = 16,
              progress: bool | None = None) -> SteeringVector:
    """CAA's steering vector: at each layer, the mean over ``items`` of the activation at the last
    token of the matching answer's continuation minus that of the not-matching one.

    Raises:
        ValueError: no items, answers the tokenizer does not tell apart, no layers.
    """
    seqs = [ab_prompt(model, it, chat=chat, system=system) for it in as_items(items)]
    if not layers:
        raise ValueError("ab_vector needs at least one layer")
    sites = [layer if isinstance(layer, str) else f"layers.{layer}" for layer in layers]
    matching: list[Any] = [s.matching for s in seqs]  # token ids: encode takes them as they are
    other: list[Any] = [s.not_matching for s in seqs]
    vec = extract(model, matching, other, sites=sites, read="last", batch_size=batch_size, progress=progress)
    return dataclasses.replace(vec, read_positions="answer letter (A/B)")


def ab_scores(model: Steerable, items: Sequence[ABItem], grid: Grid, *, chat: bool = True,
              system: str | None = None, batch_size: int = 32, share_layers: bool = True,
              shared_prefix: bool = True, progress: Callable[[int], Any] | None = None,
              _all_logits: bool = False) -> dict[tuple, np.ndarray]:
    """Per distinct cell (``grid.key``), each item's behaviour probability.

    Items go in chunks, each item as one forward row (two where its answers' sequences differ
    before their last token, see :class:`~mlx_steer.evaluate.continuations.ABSequences`), logits
    kept only at the positions that predict the continuations (``run(logits=...)``). A chunk's
    unsteered forward keeps the input of every steered layer, and each steered forward carries the
    chunk once per cell (each row steered by its own cell), starting at its lowest steered layer
    (``run(from_layer=...)``): the layers below run once per chunk, not once per cell. A model that
    cannot skip layers runs them whole.

    With ``shared_prefix`` and ``ab_positions="last"`` (steering only from each item's
    ``steer_from`` on), each chunk's items run up to there once with a KV cache, and every cell,
    the unsteered one included, runs only the few tokens after it from that cache
    (:mod:`~mlx_steer.engine.shared_prefix`): the same numbers, one or two tokens per cell instead
    of the whole prompt. Elsewhere (steering that touches the prompt, a model whose cache cannot be
    shared) the forwards run whole as above. ``_all_logits`` (with ``shared_prefix=False,
    share_layers=False``) keeps the full (B, L, V) logits of every forward: the path before logits
    were kept only where read, for benchmarks.
    """
    seqs = [ab_prompt(model, it, chat=chat, system=system) for it in items]
    distinct = grid.distinct()
    specs = {k: grid.interventions(cell) for k, cell in distinct.items() if k != ("unsteered",)}  # built once per cell
    if shared_prefix and not _all_logits and as_positions(grid.positions).kind == "last":
        try:
            return _from_prefixes(model, seqs, specs, grid.positions, batch_size=batch_size, progress=progress)
        except PrefixRefused:
            pass  # this model's cache cannot be shared (refused before any cell ran): run whole forwards
    start_of = {k: steered_layer(model, spec) or 0 for k, spec in specs.items()}  # the highest layer it may start at
    steered = sorted(specs, key=start_of.__getitem__)
    starts = sorted({s for s in start_of.values() if s >= 1}) if share_layers else []
    per_chunk = max(1, min(len(seqs), batch_size // 4))
    tails = _Tails(specs, grid.positions)
    out: dict[tuple, list[np.ndarray]] = {k: [] for k in distinct}
    whole = not starts
    for c0 in range(0, len(seqs), per_chunk):
        chunk = seqs[c0: c0 + per_chunk]
        rows = [r for s in chunk for r in s.rows]
        tail = [len(r) - s.steer_from for s in chunk for r in s.rows]  # steered positions at each row's end
        k = max(len(r) - s.steer_from for s in chunk for r in s.rows)  # logits kept per row: its last k
        at = [[max(0, len(r) - k + j) for j in range(k)] for r in rows]
        cells_per_forward = max(1, batch_size // len(rows))
        record = {f"{model.layer_paths[s]}:input": "all" for s in starts} if not whole else None
        base = model.run(rows, record=record, logits=True if _all_logits else at)
        out[("unsteered",)].append(_probabilities(_last(model, base.logits, k), chunk))
        if progress is not None:
            progress(len(chunk))
        for g0 in range(0, len(steered), cells_per_forward):
            keys = steered[g0: g0 + cells_per_forward]
            per_row = [tails.spec(key, t) for key in keys for t in tail]
            start = min(start_of[key] for key in keys)
            tr = None
            if not whole and start in starts:
                hidden = model.xp.concatenate([base.activations[f"{model.layer_paths[start]}:input"]] * len(keys), axis=0)
                try:
                    tr = model.run(rows * len(keys), interventions=per_row, logits=True if _all_logits else at * len(keys),
                                   check_finite=False, from_layer=start, hidden=hidden)
                except (ValueError, RuntimeError, TypeError, IndexError):
                    whole = True  # this model cannot start a forward at a layer: every forward runs whole
            if tr is None:
                tr = model.run(rows * len(keys), interventions=per_row, logits=True if _all_logits else at * len(keys),
                               check_finite=False)
            logits = _last(model, tr.logits, k)
            for j, key in enumerate(keys):
                out[key].append(_probabilities(logits[j * len(rows): (j + 1) * len(rows)], chunk))
            if progress is not None:
                progress(len(keys) * len(chunk))
    return {key: np.concatenate(v) for key, v in out.items()}


def _from_prefixes(model: Steerable, seqs: list[ABSequences], specs: dict[tuple, dict | None], positions: object,
                   *, batch_size: int, progress: Callable[[int], Any] | None) -> dict[tuple, np.ndarray]:
    """:func:`ab_scores` from shared prefixes: per chunk, each item's tokens before its first steered
    or read position run once; each cell's rows continue them (see :func:`ab_scores`)."""
    tails = _Tails(specs, positions)
    keys_all = list(specs)
    per_chunk = max(1, min(len(seqs), batch_size // 2))
    out: dict[tuple, list[np.ndarray]] = {k: [] for k in [("unsteered",), *keys_all]}
    for spec in specs.values():  # refused here, before any forward: a front-aligned vector, say
        refuse_prefix_positions(model.plan(interventions=spec), np.array([2]), np.array([1]))
    chunks = [seqs[c0: c0 + per_chunk] for c0 in range(0, len(seqs), per_chunk)]
    suffix_rows = batch_size * SUFFIX_ROWS_PER_ROW
    ks = [max(len(r) - s.steer_from for s in chunk for r in s.rows) for chunk in chunks]  # logits kept per row
    # each item's prefix ends before its first steered position and its first read one (both rows share it)
    cuts = [[min(s.steer_from, *(len(r) - k for r in s.rows)) for s in chunk] for chunk, k in zip(chunks, ks)]
    if min(min(c) for c in cuts) < 1:
        raise PrefixRefused("an item's prompt is too short to share")
    for chunk, k, cut in zip(chunks, ks, cuts):
        rows = [r for s in chunk for r in s.rows]
        of = [i for i, s in enumerate(chunk) for _ in s.rows]
        at = [[max(0, len(r) - k + j) for j in range(k)] for r in rows]
        tail = [len(r) - s.steer_from for s in chunk for r in s.rows]
        suffixes = [r[cut[i]:] for i, r in zip(of, rows)]
        cache = shared_prefix_of(model, [s.rows[0][: c] for s, c in zip(chunk, cut)])
        base = cache.run(suffixes, prefix_of=of, logits=at, max_rows=batch_size)
        out[("unsteered",)].append(_probabilities(model.to_numpy(base.logits), chunk))
        if progress is not None:
            progress(len(chunk))
        cells_per_forward = max(1, suffix_rows // len(rows))
        for g0 in range(0, len(keys_all), cells_per_forward):
            keys = keys_all[g0: g0 + cells_per_forward]
            per_row = [tails.spec(key, t) for key in keys for t in tail]
            tr = cache.run(suffixes * len(keys), prefix_of=of * len(keys), interventions=per_row,
                           logits=at * len(keys), check_finite=False, max_rows=max(suffix_rows, len(rows)))
            logits = model.to_numpy(tr.logits)
            for j, key in enumerate(keys):
                out[key].append(_probabilities(logits[j * len(rows): (j + 1) * len(rows)], chunk))
            if progress is not None:
                progress(len(keys) * len(chunk))
    return {key: np.concatenate(v) for key, v in out.items()}


def _last(model: Steerable, logits: Any, k: int) -> np.ndarray:
    """The logits of each row's last ``k`` positions ((B, k, V) kept, or the last k of (B, L, V) left-padded)."""
    return model.to_numpy(logits)[:, -k:]


class _Tails:
    """Each cell's interventions for a row whose last ``t`` positions are steered: with
    ``ab_positions="last"`` a row steers from its answers' last common token to its end, which is
    ``last`` where the row ends there (one row for both answers) and ``last_n(t)`` where it does not."""

    def __init__(self, specs: dict[tuple, dict | None], positions: object):
        self.specs, self.last = specs, as_positions(positions).kind == "last"
        self.made: dict[tuple, dict | None] = {}

    def spec(self, key: tuple, t: int) -> dict | None:
        base = self.specs[key]
        if t == 1 or not self.last or base is None:
            return base
        made = self.made.get((key, t))
        if made is None:
            tail = Positions.last_n(t)
            made = self.made[(key, t)] = {site: dataclasses.replace(i, positions=tail) if i.positions.kind == "last" else i
                                          for site, i in base.items()}
        return made


def _log_softmax(x: np.ndarray) -> np.ndarray:
    """Log-softmax over the last axis in float64 (NaN where the logits are not finite)."""
    x = x.astype(np.float64)
    top = x.max(axis=-1, keepdims=True)
    with np.errstate(over="ignore", invalid="ignore"):
        return x - top - np.log(np.exp(x - top).sum(axis=-1, keepdims=True))


def _probabilities(logits: np.ndarray, chunk: list[ABSequences]) -> np.ndarray:
    """``p(m) / (p(m) + p(n))`` of each item's two continuations, from its rows' logits ((rows, k, V),
    kept at each row's last k positions); float64, NaN where the logits are not finite. The tokens
    both continuations share (the ``"("`` a tokenizer splits off) have the same log-probability in
    both and cancel in the ratio: only the tokens from the first that differs are read."""
    logp = _log_softmax(logits)
    k = logp.shape[1]
    out, r = np.empty(len(chunk)), 0
    for i, s in enumerate(chunk):
        rows = s.rows
        ll = []
        for a, answer in enumerate((s.matching, s.not_matching)):
            row = r + (a if len(rows) == 2 else 0)
            first = len(rows[a if len(rows) == 2 else 0]) - k  # absolute position of the row's first kept column
            ll.append(sum(logp[row, p - 1 - first, answer[p]] for p in range(s.common, len(answer))))
        r += len(rows)
        with np.errstate(over="ignore", invalid="ignore"):
            out[i] = 1.0 / (1.0 + np.exp(ll[1] - ll[0]))
    return out
