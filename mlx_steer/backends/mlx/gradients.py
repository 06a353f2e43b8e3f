"""The MLX backend's :meth:`~mlx_steer.engine.protocols.Backend.differentiate`: ``mx.value_and_grad``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import mlx.core as mx
import numpy as np

__all__ = ["differentiate"]


def differentiate(fn: Callable[[list[mx.array]], tuple[mx.array, Any]],
                  inputs: Sequence[np.ndarray]) -> tuple[mx.array, Any, list[np.ndarray | None]]:
    """``fn(arrays) -> (scalar, aux)`` on ``inputs`` as float32 arrays; returns the scalar, ``aux`` and
    d scalar / d each input as float32 host arrays."""
    arrays = [mx.array(np.asarray(x, dtype=np.float32)) for x in inputs]

    def wrapped(*xs: mx.array) -> tuple[mx.array, Any]:
        return fn(list(xs))

    (value, aux), grads = mx.value_and_grad(wrapped, argnums=list(range(len(arrays))))(*arrays)
    if isinstance(grads, mx.array):  # one input: MLX gives the array itself
        grads = (grads,)
    mx.eval(value, aux, grads)
    return value, aux, [np.array(g.astype(mx.float32)) for g in grads]
