"""parallel_directions: data-parallel extraction, each rank reading a share of the prompts.

Ranks split the prompts (pairs, for ``pca``) balanced by token length, read their share in
batches exactly as one process would, and all-reduce :class:`ContrastMoments` per site: two sums,
one of whether any rank failed (so every rank raises together instead of waiting forever on a
rank that died, see :func:`~mlx_steer.distributed.data_parallel.together`) and one of the sums. Traffic is O(sites × D)
for ``mean_diff`` and O(sites × D²) for ``pca``, whatever the number of prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .group import Group
from .moments import REDUCIBLE, ContrastMoments
from .data_parallel import check_unsharded, my_share, together

__all__ = ["parallel_directions"]


def parallel_directions(
    model: Any, name: str, pos: Sequence[str], neg: Sequence[str], keys: list[str], *, group: Group,
    read: str | int, batch_size: int, enc: dict, progress: bool | None,
) -> dict[str, np.ndarray]:
    """The ``name`` direction per site key, from this rank's share of the prompts and an all-reduce.

    Raises:
        ValueError: a method that does not reduce to sums (it names the method), a model sharded
            over the ranks, fewer prompts (pairs) than ranks, or what single-process extraction raises.
        RuntimeError: another rank failed (its own error is on its stderr).
    """
    from ..extraction.reader import ActivationReader

    check_unsharded(model, "extract")
    if name not in REDUCIBLE:
        raise ValueError(
            f"method {name!r} needs every activation row in one process, and data-parallel extraction "
            f"only all-reduces sums; over {group.size} ranks use one of {', '.join(REDUCIBLE)}, "
            "or extract in one process (group=LocalGroup())"
        )
    paired = name == "pca"
    tok = [len(model.encode(p, **enc)) for p in list(pos) + list(neg)]
    if paired:
        mine = my_share([tok[i] + tok[len(pos) + i] for i in range(len(pos))], group)
        my_pos, my_neg = [pos[i] for i in mine], [neg[i] for i in mine]
    else:
        mine = my_share(tok, group)
        my_pos = [pos[i] for i in mine if i < len(pos)]
        my_neg = [neg[i - len(pos)] for i in mine if i >= len(pos)]
    show = progress if group.rank == 0 else False
    reader = ActivationReader(model, keys, read, batch_size, enc, show, n_total=len(pos) + len(neg),
                              n_local=len(my_pos) + len(my_neg))

    def moments() -> dict[str, ContrastMoments]:
        try:
            acts = reader(my_pos + my_neg)
        finally:
            reader.close()
        return {k: ContrastMoments.of(a[: len(my_pos)], a[len(my_pos):], paired=paired) for k, a in acts.items()}

    local = together(group, moments, what="data-parallel extraction")
    dims = [len(local[k].sum_pos) for k in keys]
    total = group.all_sum(np.concatenate([local[k].pack() for k in keys]))
    out, at = {}, 0
    for k, dim in zip(keys, dims):
        size = ContrastMoments.packed_size(dim, paired=paired)
        out[k] = ContrastMoments.unpack(total[at : at + size], dim, paired=paired).direction(name)
        at += size
    return out
