"""MLX array functions for the shared engine (:class:`mlx_steer.engine.arrays.ArrayOps`)."""

from __future__ import annotations

from collections.abc import Sequence

import mlx.core as mx
import numpy as np


class MLXArrays:
    """``ArrayOps`` over ``mx.array`` (one device: the default stream's)."""

    array_type = "mx.array"

    def key(self, like: mx.array) -> object:
        return like.dtype

    def constant(self, value: np.ndarray, *, like: mx.array) -> mx.array:
        return mx.array(value).astype(like.dtype)

    def constant_f32(self, value: np.ndarray, *, like: mx.array) -> mx.array:
        return mx.array(value, dtype=mx.float32)

    def mask(self, host: np.ndarray, *, like: mx.array) -> mx.array:
        return mx.array(host)

    def index(self, host: np.ndarray, *, like: mx.array) -> mx.array:
        return mx.array(host)

    def where(self, mask: mx.array, a: mx.array, b: mx.array) -> mx.array:
        return mx.where(mask, a, b)

    def token_mask(self, tokens: mx.array, ids: np.ndarray, *, like: mx.array) -> mx.array:
        t = tokens.reshape(tokens.shape[0] if tokens.ndim == 2 else 1, -1)
        return (t[..., None] == mx.array(ids.astype(np.int32))).any(axis=-1, keepdims=True)

    def logical(self, op: str, a: mx.array, b: mx.array | None = None) -> mx.array:
        if op == "not":
            return mx.logical_not(a)
        assert b is not None
        return mx.logical_and(a, b) if op == "and" else mx.logical_or(a, b)

    def astype(self, x: mx.array, like: mx.array) -> mx.array:
        return x.astype(like.dtype)

    def float32(self, x: mx.array) -> mx.array:
        return x.astype(mx.float32)

    def zeros_like(self, x: mx.array) -> mx.array:
        return mx.zeros_like(x)

    def broadcast_to(self, x: mx.array, shape: Sequence[int]) -> mx.array:
        return mx.broadcast_to(x, tuple(shape))

    def take_along_rows(self, h: mx.array, idx: np.ndarray) -> mx.array:
        return mx.take_along_axis(h, mx.array(idx)[..., None], axis=1)

    def copy(self, x: mx.array) -> mx.array:
        # A slice, even a contiguous one, keeps its whole source buffer alive once evaluated; an
        # explicit copy owns just its own bytes.
        return mx.contiguous(x)

    def concatenate(self, xs: list[mx.array], axis: int) -> mx.array:
        return mx.concatenate(xs, axis=axis)

    def weighted_sum(self, h: mx.array, weights: np.ndarray) -> mx.array:
        return (h.astype(mx.float32) * mx.array(weights)[..., None]).sum(axis=1)

    def divide_rows(self, x: mx.array, counts: np.ndarray) -> mx.array:
        return x / mx.array(counts.astype(np.float32))[:, None]

    def is_array(self, x: object) -> bool:
        return isinstance(x, mx.array)

    def to_numpy(self, x: mx.array) -> np.ndarray:
        return np.array(x.astype(mx.float32))

    def ids_to_numpy(self, x: mx.array) -> np.ndarray:
        return np.array(x)

    def schedule(self, xs: list[mx.array]) -> None:
        # async_eval: a blocking eval would wait behind the step mlx-lm has in flight and lose
        # its compute/graph-building overlap
        mx.async_eval(xs)

    def nonfinite(self, x: mx.array) -> mx.array:
        return mx.any(mx.isnan(x) | (x == mx.inf))

    def truth(self, flag: mx.array) -> bool:
        return bool(flag.item())

    def kth_largest(self, x: mx.array, k: int) -> mx.array:
        return mx.topk(x, k, axis=-1).min(axis=-1, keepdims=True)


XP = MLXArrays()
