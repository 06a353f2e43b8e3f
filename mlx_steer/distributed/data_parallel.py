"""What every data-parallel job does: refuse a model sharded over the ranks, take this rank's
share of the work, and make the ranks fail together.

A rank that raises while the others wait in an all-reduce would leave them waiting forever, so
each rank catches its error, the ranks all-reduce how many failed, and only then does every rank
raise: its own error, or one naming how many other ranks failed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from .group import Group
from .partition import split_by_length

T = TypeVar("T")

__all__ = ["check_unsharded", "my_share", "together"]


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


def together(group: Group, work: Callable[[], T], *, what: str) -> T:
    """``work()`` on this rank, then one all-reduce of whether it failed: every rank raises when
    any did (its own error, or a RuntimeError naming how many others failed); else the result."""
    failure: Exception | None = None
    try:
        result = work()
    except Exception as exc:  # re-raised below, after the other ranks learn of it
        failure = exc
    failed = group.all_sum(np.array([float(failure is not None)]))[0]
    if failure is not None:
        raise failure
    if failed:
        raise RuntimeError(f"{int(failed)} other rank(s) failed during {what}; see their errors")
    return result  # set: had work() raised, this rank raised above
