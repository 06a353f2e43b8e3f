"""What a backend provides: the typed protocols the shared engine is written against.

The engine (site plans, intervention ops, recording, positions, the Steerable API) is written
once over these. A backend is a folder under ``mlx_steer/backends/`` implementing them; backends
never import each other.
"""

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

    def schedule(self, xs: list[Array]) -> None:
        """Start computing ``xs`` (a lazy backend) without waiting; eager backends do nothing."""

    def nonfinite(self, x: Array) -> Array:
        """A scalar flag: whether ``x`` holds NaN or +inf (-inf marks masked tokens). Lazy where
        the backend is: schedule it, read it with :meth:`truth` later."""

    def truth(self, flag: Array) -> bool:
        """Read a scalar flag (syncs)."""


class ModelBackend(Protocol):
    """What a steerable model must provide beyond :class:`ArrayOps` (see ``Steerable``)."""

    xp: ArrayOps
    modules: dict[str, Any]
    layer_paths: list[str]
    hidden_size: int

    def site_dim(self, path: str, point: str) -> int | None:
        """Activation size at a site when it is known before running (None otherwise)."""

    def site_heads(self, path: str, point: str) -> int | None:
        """Number of concatenated attention heads at a site (None where heads are not concatenated)."""

    def attach(self, path: str, point: str, fn: Callable[[Array], Array]) -> Undo:
        """Run ``fn`` on a module's input or output; returns what undoes it."""

    def attach_tracker(self) -> Undo:
        """Install what computes each forward's absolute positions; returns what undoes it."""

    def bypass(self, path: str, fn: Callable[[Array], Array]) -> Undo:
        """Until undone, a call of the module at ``path`` returns ``fn(hidden)`` (``hidden``: its
        first argument) without running the module; returns what undoes it."""
