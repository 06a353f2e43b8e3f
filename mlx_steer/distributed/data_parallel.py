"""What every data-parallel job does: refuse a model sharded over the ranks, take this rank's
share of the work, and make the ranks fail together.

A rank that raises while the others wait in an all-reduce would leave them waiting forever, so
each rank catches its error, the ranks all-reduce a header that says how many failed (with any
numbers they must agree on), and only then does every rank raise: its own error, or one naming
how many other ranks failed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .group import Group
from .partition import split_by_length

__all__ = ["agree", "check_unsharded", "my_share"]


def check_unsharded(model: Any, what: str) -> None:
    """Raise ValueError when ``model`` is sharded over the ranks (they run every forward together,
    so they cannot split the prompts of ``what``)."""
    if getattr(model, "distributed", None) is not None:
        raise ValueError(f"the model is sharded over the ranks ({model.distributed}), so every rank must run "
                         f"every prompt; run {what} with group=LocalGroup() (or no group) instead of sharing prompts")


def my_share(costs: Sequence[int], group: Group) -> list[int]:
    """The indices of the items (of cost ``costs``, e.g. token counts) this rank handles,
    balanced by cost (see :func:`~mlx_steer.distributed.partition.split_by_length`)."""
    return split_by_length(costs, group.size)[group.rank]


def agree(group: Group, failure: BaseException | None, values: Sequence[float], *, what: str) -> np.ndarray:
    """All-reduce ``[failed?, *values]``; raise this rank's ``failure`` or, when another rank
    failed, a RuntimeError; else return the summed ``values``."""
    header = group.all_sum(np.array([float(failure is not None), *map(float, values)]))
    if failure is not None:
        raise failure
    if header[0]:
        raise RuntimeError(f"{int(header[0])} other rank(s) failed during {what}; see their errors")
    return header[1:]
