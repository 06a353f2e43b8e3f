"""record_dataset: one activation row per prompt at some sites, over a whole list of prompts.

The prompts are read in padded batches (one row each, at the position ``read`` names), on one
process or shared over ranks (``mlx.launch``/``torchrun``, or ``group=``). Over ranks each reads
its share, balanced by token length; with ``reduce="mean"`` they all-reduce per-site sums (sites
× D numbers, whatever the number of prompts), without it the rows themselves (N × D per site:
every rank gets them all).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .reader import ActivationReader, read_options

if TYPE_CHECKING:
    from ..distributed.group import Group

__all__ = ["REDUCES", "record_dataset", "save_recording"]

REDUCES = ("mean",)


def record_dataset(
    model: Any,
    prompts: Sequence[str],
    *,
    sites: Sequence[str] | str,
    read: str | int = "last",
    reduce: str | None = None,
    batch_size: int = 16,
    chat: bool = False,
    system: str | None = None,
    assistant_prefix: str | None = None,
    progress: bool | None = None,
    group: Group | None = None,
) -> dict[str, np.ndarray]:
    """Activations at ``sites`` for every prompt, one row per prompt.

    Args:
        model: A steerable model of either backend.
        prompts: The dataset: a list of strings.
        sites: Sites to read, e.g. ``["layers.8", "layers.8.mlp"]`` (hook points may differ).
        read: ``last`` token, ``mean`` over the prompt, an absolute index, or ``assistant_start``
            (with ``chat``: the first position of the assistant turn).
        reduce: None for every row; ``"mean"`` for their mean over the prompts.
        batch_size: Prompts per forward (grouped by token length; left-padded).
        chat: Wrap each prompt as a user turn with the tokenizer's chat template.
        system: A system message (with ``chat``).
        assistant_prefix: Text appended after the generation prompt (with ``chat``).
        progress: Show a progress bar (default: when there are more than 4 batches; over several
            ranks rank 0 shows it, counting every rank's prompts).
        group: Ranks to share the prompts with (see :mod:`mlx_steer.distributed`). Default: the
            group this process was launched into, if any; ``LocalGroup()`` forces one process.
            Every rank returns the whole result, equal to the single-process one.

    Returns:
        ``{site key: array}`` (the canonical site: ``model.layers.8``, ``model.layers.8:input``): (N, D) rows in the order of ``prompts``, or the (D,) float32 mean
        over the prompts (summed in float64) with ``reduce="mean"``.

    Raises:
        ValueError: no prompts or sites, an unknown ``read``/``reduce``, chat options without
            ``chat``, a read index past a prompt, fewer prompts than ranks, or a model sharded
            over the ranks (its ranks run every forward together).
        RuntimeError: another rank failed (its own error is on its stderr).
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise ValueError("record_dataset needs at least one prompt")
    if reduce is not None and reduce not in REDUCES:
        raise ValueError(f"unknown reduce {reduce!r}; valid: None (every row) or {', '.join(map(repr, REDUCES))}")
    enc = read_options(read, chat=chat, system=system, assistant_prefix=assistant_prefix)
    resolved = [model.resolve(s) for s in ([sites] if isinstance(sites, str) else list(sites))]
    if not resolved:
        raise ValueError("no sites given; e.g. sites=['layers.8']")
    keys = list(dict.fromkeys(s.key for s in resolved))  # a site named twice is read once
    if group is None:
        from ..distributed.group import launched_group

        group = launched_group(model)
    if group is not None and group.size > 1:
        rows = _shared(model, prompts, keys, group, read=read, reduce=reduce, batch_size=batch_size, enc=enc,
                       progress=progress)
    else:
        reader = ActivationReader(model, keys, read, batch_size, enc, progress, n_total=len(prompts), desc="recording")
        try:
            acts = reader(prompts)
        finally:
            reader.close()
        rows = {k: _mean(a) for k, a in acts.items()} if reduce == "mean" else acts
    return {k: rows[k] for k in keys}


def _mean(rows: np.ndarray) -> np.ndarray:
    return (rows.astype(np.float64).sum(axis=0) / len(rows)).astype(np.float32)


def _shared(model: Any, prompts: list[str], keys: list[str], group: Group, *, read: str | int, reduce: str | None,
            batch_size: int, enc: dict, progress: bool | None) -> dict[str, np.ndarray]:
    """This rank reads its share; the ranks all-reduce sums (``mean``) or the rows (zeros elsewhere)."""
    from ..distributed.data_parallel import check_unsharded, my_share, together

    check_unsharded(model, "record_dataset")
    mine = my_share([len(model.encode(p, **enc)) for p in prompts], group)
    reader = ActivationReader(model, keys, read, batch_size, enc, progress if group.rank == 0 else False,
                              n_total=len(prompts), n_local=len(mine), desc="recording")

    def rows() -> dict[str, np.ndarray]:
        try:
            return reader([prompts[i] for i in mine])
        finally:
            reader.close()

    local = together(group, rows, what="data-parallel recording")
    if reduce == "mean":
        sums = group.all_sum(np.concatenate([local[k].astype(np.float64).sum(axis=0) for k in keys]))
        dims = np.cumsum([0] + [local[k].shape[-1] for k in keys])
        return {k: (sums[a:b] / len(prompts)).astype(np.float32) for k, a, b in zip(keys, dims[:-1], dims[1:])}
    out = {}
    for k in keys:  # each row comes from one rank; the others add zeros, so the sum is exact
        table = np.zeros((len(prompts),) + local[k].shape[1:], dtype=local[k].dtype)
        table[mine] = local[k]
        out[k] = group.all_sum(table)
    return out


def save_recording(acts: Mapping[str, np.ndarray], path: str | os.PathLike, *,
                   metadata: Mapping[str, str] | None = None) -> Path:
    """Write :func:`record_dataset`'s result to a safetensors file (one tensor per site key,
    replacing ``path`` atomically); ``metadata`` goes into the file's header as strings.
    Read it back with ``safetensors.numpy.load_file``."""
    from safetensors.numpy import save_file

    from ..vectors.vector_file import replace_atomically

    tensors = {k: np.ascontiguousarray(v) for k, v in acts.items()}
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    return replace_atomically(Path(path), lambda tmp: save_file(tensors, tmp, metadata=meta))
