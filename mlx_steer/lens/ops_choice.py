"""Which :class:`~mlx_steer.lens.ops.LensOps` a model's backend gets (its own module: the
implementations import the protocol's helpers)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..engine.model import Steerable
    from .ops import LensOps

__all__ = ["ops_for"]


def ops_for(model: Steerable) -> LensOps:
    """The lens operations of ``model``'s backend."""
    if model.xp.array_type == "torch.Tensor":
        from .torch_ops import TorchLensOps

        return TorchLensOps()
    from .mlx_ops import MLXLensOps

    return MLXLensOps()
