"""The logit lens (nostalgebraist 2020) and the tuned lens's view: each layer's residual, at each
position of each prompt, read through the model's final norm and unembedding (after a tuned
translator when given), as a :class:`~mlx_steer.lens.table.LensTable` of top tokens, target
probabilities and ranks, and KL to the model's own next-token distribution.

Prompts are run in batches (left-padded); positions count from each prompt's first real token. The
last layer's read is checked against the model's logits on every batch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..analysis.vocabulary_lens import tokenizer_size
from .ops import model_dtype
from .ops_choice import ops_for
from .readout import check_last_layer, readout_of
from .table import LensRow, LensTable

if TYPE_CHECKING:
    from ..engine.model import Steerable
    from .tuned_lens import TunedLens

__all__ = ["check_layers", "logit_lens", "target_id"]

Target = str | int


def check_layers(model: Steerable, layers: Sequence[int] | None) -> list[int]:
    """Layer indices (negative from the end) as 0-based indices, in the given order.

    Raises:
        ValueError: a layer out of range (naming the valid range) or not an int.
    """
    n = model.num_layers
    if layers is None:
        return list(range(n))
    out = []
    for layer in layers:
        if not isinstance(layer, (int, np.integer)) or isinstance(layer, bool) or not -n <= layer < n:
            raise ValueError(f"layer {layer!r} out of range for a {n}-layer model; valid: {-n}..{n - 1}")
        out.append(int(layer) % n)
    if not out:
        raise ValueError(f"no layers given; valid: {-n}..{n - 1}")
    return list(dict.fromkeys(out))


def target_id(model: Steerable, target: Target) -> int:
    """The token id of a target: an id, or a text that is exactly one token (no special tokens).

    Raises:
        ValueError: an id out of the vocabulary, or a text of zero or several tokens (naming them).
    """
    V = model.vocab_size or tokenizer_size(model.tokenizer)
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        if V is not None and not 0 <= int(target) < V:
            raise ValueError(f"target token id {target} out of range; valid: 0..{V - 1}")
        return int(target)
    if not isinstance(target, str):
        raise ValueError(f"a target is a token's text or id, got {type(target).__name__}")
    ids = list(model.tokenizer.encode(target, add_special_tokens=False))
    if len(ids) != 1:
        pieces = [model.tokenizer.decode([i]) for i in ids]
        raise ValueError(f"target {target!r} is {len(ids)} tokens {pieces} ({ids}); a lens target must be one "
                         "token: give one of those pieces or its id (mind the leading space: ' Paris')")
    return int(ids[0])


def _targets(model: Steerable, targets: Target | Sequence[Target] | None, n: int) -> list[int | None]:
    if targets is None:
        return [None] * n
    if isinstance(targets, (str, int, np.integer)):
        return [target_id(model, targets)] * n
    targets = list(targets)
    if len(targets) != n:
        raise ValueError(f"{len(targets)} targets for {n} prompts; give one target, or one per prompt")
    return [target_id(model, t) for t in targets]


def _positions(positions: object, length: int, prompt: int) -> list[int]:
    if positions == "all":
        return list(range(length))
    if positions == "last":
        return [length - 1]
    items = [positions] if isinstance(positions, (int, np.integer)) else positions
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence) or not items:
        raise ValueError(f"positions must be 'all', 'last', an int or a list of ints, got {positions!r}")
    out = []
    for i in items:
        if not isinstance(i, (int, np.integer)) or isinstance(i, bool) or not -length <= i < length:
            raise ValueError(f"position {i!r} out of range for prompt {prompt} of {length} tokens; "
                             f"valid: {-length}..{length - 1}")
        out.append(int(i) % length)
    return list(dict.fromkeys(out))


def logit_lens(
    model: Steerable, prompts: str | Sequence[str] | Sequence[Sequence[int]], *,
    targets: Target | Sequence[Target] | None = None, layers: Sequence[int] | None = None,
    positions: object = "all", top_k: int = 5, stage: str = "output", tuned: TunedLens | None = None,
    chat: bool = False, batch_size: int = 8,
) -> LensTable:
    """Read every chosen layer's residual through the model's final norm and unembedding.

    Args:
        model: A steerable model of either backend (not changed).
        prompts: A string, a list of strings, or lists of token ids.
        targets: A token (text of exactly one token, or an id) whose probability and rank each cell
            reports: one for every prompt, or one per prompt. Several-token texts are refused.
        layers: Decoder layers to read (negative from the end; default all).
        positions: ``"all"``, ``"last"``, or an index / list of indices (negative from the end),
            counted from each prompt's first real token.
        top_k: Top tokens kept per cell.
        stage: ``"output"`` reads each layer's output (the residual after it), ``"input"`` what enters it.
        tuned: Tuned-lens translators (:class:`~mlx_steer.lens.tuned_lens.TunedLens`) applied to each
            layer's output first; None is the logit lens.
        chat: Wrap each prompt as a user turn with the chat template.
        batch_size: Prompts per forward.

    Returns:
        A :class:`~mlx_steer.lens.table.LensTable`.

    Raises:
        ValueError: bad layers, positions, targets, ``top_k`` or ``stage``; translators for another
            model, or with ``stage="input"``; a model whose logits the lens cannot reproduce.
    """
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise ValueError(f"top_k must be a positive int, got {top_k!r}")
    if stage not in ("output", "input"):
        raise ValueError(f"stage {stage!r} unknown; valid: 'output', 'input'")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if tuned is not None:
        tuned.check(model)
        if stage != "output":
            raise ValueError("tuned-lens translators read layer outputs; use stage='output' with tuned=")
    chosen = check_layers(model, layers)
    tokens = model.prompts.encode_batch(prompts, chat=chat)
    tids = _targets(model, targets, len(tokens))
    cells = [_positions(positions, len(t), p) for p, t in enumerate(tokens)]
    ops, ro = ops_for(model), readout_of(model)
    suffix = ":input" if stage == "input" else ""
    sites = {layer: model.resolve(f"{model.layer_paths[layer]}{suffix}").key for layer in chosen}
    last = model.resolve(model.layer_paths[-1]).key
    n_real = tokenizer_size(model.tokenizer)
    rows: list[LensRow] = []
    for start in range(0, len(tokens), batch_size):
        batch = tokens[start : start + batch_size]
        tr = model.run(batch, record=list(dict.fromkeys([*sites.values(), last])))
        logits = model.to_numpy(tr.logits)
        where = [(b, start + b, tr.padding[b] + i) for b in range(len(batch)) for i in cells[start + b]]
        bi, ci = np.array([w[0] for w in where]), np.array([w[2] for w in where])
        final = logits[bi, ci]
        with model.calls("logit_lens"):  # the readout modules run outside a forward: nothing else may run them
            check_last_layer(ops.logits(model, ro, model.to_numpy(tr.activations[last])[bi, ci]), final,
                             dtype_name=str(model_dtype(model)))
            logp_final = _log_softmax(final)
            for layer in chosen:
                h = model.to_numpy(tr.activations[sites[layer]])[bi, ci]
                z = ops.logits(model, ro, h, tuned.translator(layer) if tuned is not None else None)
                rows += _cells(model, z, logp_final, where, tr.padding, layer, batch, tids, top_k, n_real)
    rows.sort(key=lambda r: (r.prompt, chosen.index(r.layer), r.position))
    decode = model.tokenizer.decode
    info = {"model": str(model.model_id), "top_k": str(top_k), "prompts": str(len(tokens))}
    return LensTable(tuple(rows), "tuned" if tuned is not None else "logit", stage,
                     tuple(tuple(decode([t]) for t in toks) for toks in tokens), info)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    m = z.max(axis=-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


def _cells(model: Steerable, z: np.ndarray, logp_final: np.ndarray, where: list[tuple[int, int, int]],
           padding: list[int], layer: int, batch: Sequence[Sequence[int]], tids: list[int | None], k: int,
           n_real: int | None) -> list[LensRow]:
    logq = _log_softmax(z)
    kl = np.sum(np.exp(logp_final) * (logp_final - logq), axis=-1)
    shown = logq[:, : min(n_real, logq.shape[1])] if n_real else logq  # padded rows decode to no token
    top = np.argsort(-shown, axis=-1, kind="stable")[:, :k]
    decode = model.tokenizer.decode
    out = []
    for j, (b, p, col) in enumerate(where):
        ids = [int(i) for i in top[j]]
        t = tids[p]
        rank = None if t is None else int(np.sum(shown[j] > shown[j, t]))
        out.append(LensRow(
            prompt=p, layer=layer, position=col - padding[b], token=decode([int(batch[b][col - padding[b]])]),
            top_tokens=tuple(decode([i]) for i in ids), top_ids=tuple(ids),
            top_probs=tuple(float(np.exp(logq[j, i])) for i in ids),
            target=None if t is None else decode([t]), target_id=t,
            target_prob=None if t is None else float(np.exp(logq[j, t])), target_rank=rank, kl=float(max(kl[j], 0.0))))
    return out
