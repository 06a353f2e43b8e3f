"""The array functions a backend gives the engine (:class:`ArrayOps`), and the names of its types."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

Array = Any  # the backend's array type (mx.array, torch.Tensor)
Undo = Callable[[], None]


class ArrayOps(Protocol):
    """The array functions intervention ops and recorders need (shapes are (B, L, D))."""

    array_type: str  # the array type's name in messages: "mx.array", "torch.Tensor"

    def key(self, like: Array) -> object:
        """Cache key for arrays made to match ``like`` (its dtype, and device where there is one)."""

    def constant(self, value: np.ndarray, *, like: Array) -> Array:
        """``value`` as an array with ``like``'s dtype (and device)."""

    def constant_f32(self, value: np.ndarray, *, like: Array) -> Array:
        """``value`` as a float32 array (on ``like``'s device)."""

    def mask(self, host: np.ndarray, *, like: Array) -> Array:
        """A boolean host array as a device array (on ``like``'s device)."""

    def index(self, host: np.ndarray, *, like: Array) -> Array:
        """An integer host array as a device index array (on ``like``'s device)."""

    def where(self, mask: Array, a: Array, b: Array) -> Array: ...

    def token_mask(self, tokens: Array, ids: np.ndarray, *, like: Array) -> Array:
        """(B, L, 1) boolean: which of ``tokens`` (B, L) are among ``ids``, computed where the tokens
        are (a decode step's token is not read on the host)."""

    def logical(self, op: str, a: Array, b: Array | None = None) -> Array:
        """``"and"`` / ``"or"`` of two boolean arrays, ``"not"`` of one."""

    def astype(self, x: Array, like: Array) -> Array:
        """``x`` in ``like``'s dtype."""

    def float32(self, x: Array) -> Array: ...

    def zeros_like(self, x: Array) -> Array: ...

    def broadcast_to(self, x: Array, shape: Sequence[int]) -> Array: ...

    def take_along_rows(self, h: Array, idx: np.ndarray) -> Array:
        """(B, L, D) -> (B, k, D): row b takes positions ``idx[b]``."""

    def copy(self, x: Array) -> Array:
        """A contiguous copy that owns just its own memory (no view of a larger buffer)."""

    def concatenate(self, xs: list[Array], axis: int) -> Array: ...

    def weighted_sum(self, h: Array, weights: np.ndarray) -> Array:
        """float32 (B, D) sum over positions of ``h`` (B, L, D) weighted by host ``weights`` (B, L)."""

    def divide_rows(self, x: Array, counts: np.ndarray) -> Array:
        """(B, D) / host counts (B,)."""

    def is_array(self, x: object) -> bool: ...

    def to_numpy(self, x: Array) -> np.ndarray:
        """A float32 numpy copy."""

    def ids_to_numpy(self, x: Array) -> np.ndarray:
        """Token ids as a numpy array, read as they are: no new computation is queued behind the
        work in flight (a lazy backend then waits for ``x`` only, not for the step being computed)."""

    def schedule(self, xs: list[Array]) -> None:
        """Start computing ``xs`` (a lazy backend) without waiting; eager backends do nothing."""

    def nonfinite(self, x: Array) -> Array:
        """A scalar flag: whether ``x`` holds NaN or +inf (-inf marks masked tokens). Lazy where
        the backend is: schedule it, read it with :meth:`truth` later."""

    def truth(self, flag: Array) -> bool:
        """Read a scalar flag (syncs)."""

    def kth_largest(self, x: Array, k: int) -> Array:
        """(..., 1): the k-th largest value along the last axis (a TopK SAE's cut)."""
