"""Group: the few collective operations data-parallel work needs, over numpy arrays.

Both backends' launchers speak it: :class:`MLXGroup` wraps an ``mx.distributed`` group (ring over
TCP or Thunderbolt, MPI; started by ``mlx.launch``), :class:`TorchGroup` the default
``torch.distributed`` process group (gloo; started by ``torchrun``). The algorithms built on it
(:mod:`mlx_steer.distributed.moments`) are written once against the protocol.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["Group", "LocalGroup", "MLXGroup", "TorchGroup", "launched_group"]


@runtime_checkable
class Group(Protocol):
    """Ranks ``0 .. size - 1`` of one job, and an element-wise sum across them.

    Attributes:
        rank: This process's rank.
        size: Number of processes.
        bytes_reduced: Bytes this rank handed to :meth:`all_sum` so far (what it contributed to
            the reductions; the wire traffic of a ring all-reduce is about twice that).
    """

    rank: int
    size: int
    bytes_reduced: int

    def all_sum(self, x: np.ndarray) -> np.ndarray:
        """The element-wise sum of ``x`` over every rank (same shape and dtype on every rank)."""
        ...


class LocalGroup:
    """One process alone (rank 0 of 1): pass ``group=LocalGroup()`` to work single-process under
    a launcher."""

    rank, size = 0, 1

    def __init__(self) -> None:
        self.bytes_reduced = 0

    def all_sum(self, x: np.ndarray) -> np.ndarray:
        return np.array(x, copy=True)

    def __repr__(self) -> str:
        return "LocalGroup()"


class MLXGroup:
    """An ``mx.distributed`` group as a :class:`Group` (sums run on the CPU stream).

    Args:
        group: The ``mx.distributed.Group`` (default: ``mx.distributed.init()``).
    """

    def __init__(self, group: Any = None):
        import mlx.core as mx

        self._mx = mx
        self.group = group if group is not None else mx.distributed.init()
        self.rank, self.size = self.group.rank(), self.group.size()
        self.bytes_reduced = 0

    def all_sum(self, x: np.ndarray) -> np.ndarray:
        mx = self._mx
        a = np.ascontiguousarray(x)
        self.bytes_reduced += a.nbytes
        out = mx.distributed.all_sum(mx.array(a), group=self.group, stream=mx.cpu)
        return np.array(out, copy=True)

    def __repr__(self) -> str:
        return f"MLXGroup(rank={self.rank}, size={self.size})"


class TorchGroup:
    """The default ``torch.distributed`` process group as a :class:`Group` (gloo sums on CPU tensors)."""

    def __init__(self) -> None:
        import torch
        import torch.distributed as dist

        if not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialized; call init_process_group first "
                               "(torchrun sets the environment for it)")
        self._torch, self._dist = torch, dist
        self.rank, self.size = dist.get_rank(), dist.get_world_size()
        self.bytes_reduced = 0

    def all_sum(self, x: np.ndarray) -> np.ndarray:
        a = np.array(x, copy=True, order="C")
        self.bytes_reduced += a.nbytes
        t = self._torch.from_numpy(a)
        self._dist.all_reduce(t, op=self._dist.ReduceOp.SUM)
        return t.numpy()

    def __repr__(self) -> str:
        return f"TorchGroup(rank={self.rank}, size={self.size})"


def launched_group(model: Any = None) -> Group | None:
    """The group this process was launched into, or None when it runs alone.

    ``mlx.launch`` (it sets ``MLX_RANK``) gives an :class:`MLXGroup`; ``torchrun`` (it sets
    ``WORLD_SIZE``) a :class:`TorchGroup`, initializing the gloo process group if nobody has.
    A torch model picks torch's group, an MLX model mx's. A model sharded across the ranks
    (``load(..., distributed=...)``) gives None: its ranks run every forward together.
    """
    if getattr(model, "distributed", None) is not None:
        return None
    is_torch = type(model).__module__.startswith("mlx_steer.backends.torch")
    if is_torch or (model is None and "torch.distributed" in sys.modules):
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return None
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo")
        return TorchGroup() if dist.get_world_size() > 1 else None
    if "MLX_RANK" not in os.environ:
        return None
    group = MLXGroup()
    return group if group.size > 1 else None
