"""The torch backend's :meth:`~mlx_steer.engine.protocols.Backend.differentiate`: autograd, with the
backend's forward run in grad mode for the call."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import torch

__all__ = ["differentiate"]


class GradMode(Protocol):
    """What this needs of the torch backend (typed here: the backend imports this module)."""

    grad_enabled: bool

    @property
    def device(self) -> torch.device: ...


def differentiate(backend: GradMode, fn: Callable[[list[torch.Tensor]], tuple[torch.Tensor, Any]],
                  inputs: Sequence[np.ndarray]) -> tuple[torch.Tensor, Any, list[np.ndarray | None]]:
    """``fn(tensors) -> (scalar, aux)`` on ``inputs`` as float32 leaf tensors; returns the scalar, ``aux``
    and d scalar / d each input as float32 host arrays (None for an input the scalar does not depend
    on: something between them leaves autograd)."""
    device = backend.device
    xs = [torch.tensor(np.asarray(x, dtype=np.float32), device=device, requires_grad=True) for x in inputs]
    backend.grad_enabled = True
    try:
        with torch.enable_grad():
            value, aux = fn(xs)
            grads = (torch.autograd.grad(value, xs, allow_unused=True) if value.requires_grad
                     else (None,) * len(xs))
    finally:
        backend.grad_enabled = False
    return value.detach(), aux, [None if g is None else g.detach().float().cpu().numpy() for g in grads]
