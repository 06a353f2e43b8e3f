"""CAA's A/B behaviour probability: the prompt, the vector extracted from the items, and the scoring.

An item is asked as a chat user turn; the assistant's reply starts with ``"("`` and the model's next
token is read: the behaviour probability is ``p(matching letter) / (p(matching) + p(not matching))``
(for A/B items, CAA's ``p(A) / (p(A) + p(B))`` of the matching answer). The letters are scored as
their own tokens after ``"("``. Steering adds at the positions after the user's turn (CAA's "after
the instruction"): in this forward, the ``"("`` only (``positions="last"``).

CAA's vector is read at the answer letter: the item with its matching letter after ``"("`` minus the
item with its other letter, averaged over items (``ab_vector``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..analysis.cell_scoring import steered_layer
from ..extraction.directions import extract
from .grid import Grid
from .items import ABItem, as_items

if TYPE_CHECKING:
    from ..engine.model import Steerable
    from ..vectors.steering_vector import SteeringVector

__all__ = ["ANSWER_PREFIX", "ab_prompt", "ab_scores", "ab_vector"]

ANSWER_PREFIX = "("


def _letter_id(model: Steerable, letter: str) -> int:
    ids = list(model.tokenizer.encode(letter, add_special_tokens=False))
    if len(ids) != 1:
        raise ValueError(f"answer letter {letter!r} is {len(ids)} tokens {ids} in this tokenizer; "
                         "A/B scoring needs each letter to be one token")
    return int(ids[0])


def ab_prompt(model: Steerable, item: ABItem, *, chat: bool = True, system: str | None = None) -> tuple[list[int], int, int]:
    """(prompt ids ending with ``"("``, matching letter id, not-matching letter id) of one item.

    With ``chat`` the question is a user turn and ``"("`` opens the assistant's reply; without it
    (a base model) the prompt is ``"<question>\\n\\nAnswer: ("``.
    """
    if chat:
        ids = model.encode(item.question, chat=True, system=system, assistant_prefix=ANSWER_PREFIX)
    else:
        ids = model.encode(f"{item.question}\n\nAnswer: {ANSWER_PREFIX}")
    return ids, _letter_id(model, item.matching), _letter_id(model, item.not_matching)


def ab_vector(model: Steerable, items: Sequence[ABItem] | Sequence[dict], *, layers: Sequence[int | str],
              chat: bool = True, system: str | None = None, batch_size: int = 16,
              progress: bool | None = None) -> SteeringVector:
    """CAA's steering vector: at each layer, the mean over ``items`` of the activation at the
    matching answer letter minus that at the not-matching one.

    Raises:
        ValueError: no items, a letter that is not one token, no layers.
    """
    rows = [ab_prompt(model, it, chat=chat, system=system) for it in as_items(items)]
    if not layers:
        raise ValueError("ab_vector needs at least one layer")
    sites = [layer if isinstance(layer, str) else f"layers.{layer}" for layer in layers]
    matching: list[Any] = [ids + [m] for ids, m, _ in rows]  # token ids: encode takes them as they are
    other: list[Any] = [ids + [n] for ids, _, n in rows]
    vec = extract(model, matching, other, sites=sites, read="last", batch_size=batch_size, progress=progress)
    return dataclasses.replace(vec, read_positions="answer letter (A/B)")


def ab_scores(model: Steerable, items: Sequence[ABItem], grid: Grid, *, chat: bool = True,
              system: str | None = None, batch_size: int = 32, share_layers: bool = True,
              progress: Callable[[int], Any] | None = None) -> dict[tuple, np.ndarray]:
    """Per distinct cell (``grid.key``), each item's behaviour probability.

    Items go in chunks; a chunk's unsteered forward keeps the input of every steered layer, and
    each steered forward carries the chunk once per cell (one row per item and cell, each row steered
    by its own cell), starting at its lowest steered layer (``run(from_layer=...)``): the layers
    below run once per chunk, not once per cell. A model that cannot skip layers runs them whole.
    """
    rows = [ab_prompt(model, it, chat=chat, system=system) for it in items]
    distinct = grid.distinct()
    specs = {k: grid.interventions(cell) for k, cell in distinct.items() if k != ("unsteered",)}  # built once per cell
    start_of = {k: steered_layer(model, spec) or 0 for k, spec in specs.items()}  # the highest layer it may start at
    steered = sorted(specs, key=start_of.__getitem__)
    starts = sorted({s for s in start_of.values() if s >= 1}) if share_layers else []
    per_chunk = max(1, min(len(rows), batch_size // 4))
    cells_per_forward = max(1, batch_size // per_chunk)
    out: dict[tuple, list[np.ndarray]] = {k: [] for k in distinct}
    whole = not starts
    for c0 in range(0, len(rows), per_chunk):
        chunk = rows[c0: c0 + per_chunk]
        tokens = [ids for ids, _, _ in chunk]
        record = {f"{model.layer_paths[s]}:input": "all" for s in starts} if not whole else None
        base = model.run(tokens, record=record, logits=True)
        out[("unsteered",)].append(_probabilities(model, base.logits, chunk))
        if progress is not None:
            progress(len(chunk))
        for g0 in range(0, len(steered), cells_per_forward):
            keys = steered[g0: g0 + cells_per_forward]
            per_row = [specs[k] for k in keys for _ in chunk]
            start = min(start_of[k] for k in keys)
            tr = None
            if not whole and start in starts:
                hidden = model.xp.concatenate([base.activations[f"{model.layer_paths[start]}:input"]] * len(keys), axis=0)
                try:
                    tr = model.run(tokens * len(keys), interventions=per_row, logits=True, check_finite=False,
                                   from_layer=start, hidden=hidden)
                except (ValueError, RuntimeError, TypeError, IndexError):
                    whole = True  # this model cannot start a forward at a layer: every forward runs whole
            if tr is None:
                tr = model.run(tokens * len(keys), interventions=per_row, logits=True, check_finite=False)
            probs = _probabilities(model, tr.logits, chunk * len(keys))
            for j, k in enumerate(keys):
                out[k].append(probs[j * len(chunk): (j + 1) * len(chunk)])
            if progress is not None:
                progress(len(keys) * len(chunk))
    return {k: np.concatenate(v) for k, v in out.items()}


def _probabilities(model: Steerable, logits: Any, rows: list[tuple[list[int], int, int]]) -> np.ndarray:
    """``p(m) / (p(m) + p(n))`` at each row's last position (float64; NaN where the logits are not finite)."""
    last = model.to_numpy(logits[:, -1]).astype(np.float64)
    idx = np.arange(len(rows))
    match = last[idx, [m for _, m, _ in rows]]
    other = last[idx, [n for _, _, n in rows]]
    with np.errstate(over="ignore", invalid="ignore"):
        return 1.0 / (1.0 + np.exp(other - match))
