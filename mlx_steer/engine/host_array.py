"""What users hand in as vectors (numpy, lists, scalars, mlx or torch arrays) as numpy copies,
refusing what a cast would silently change: complex (drops the imaginary part), booleans and text."""

from __future__ import annotations

import numpy as np


class NotRealError(TypeError, ValueError):
    """A value that is not real-valued numbers (complex, booleans, text). A TypeError that
    ``except ValueError`` catches too, like the other bad-input errors."""


def host_array(value: object, *, what: str, dtype: type | np.dtype | str = np.float32) -> np.ndarray:
    """``value`` as a ``dtype`` numpy copy (overflow shows up as inf for the caller to report).

    Raises:
        NotRealError: complex, boolean or text values.
        ValueError: not numeric (ragged lists, objects).
    """
    _check_real(value, what)
    if hasattr(value, "detach"):  # torch tensor, without importing torch
        t = value.detach().cpu()
        value = t.float().numpy() if str(t.dtype) == "torch.bfloat16" else t.numpy()
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            return np.array(value, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be a numeric array, got {type(value).__name__}") from exc


def _check_real(value: object, what: str) -> None:
    dtype = getattr(value, "dtype", None)
    if dtype is None:  # a list or scalar: let numpy infer what it holds
        try:
            dtype = np.asarray(value).dtype
        except (TypeError, ValueError):
            return  # ragged or odd: the conversion reports it
    name = str(dtype)
    kind = dtype.kind if isinstance(dtype, np.dtype) else ""
    if kind == "c" or "complex" in name:
        raise NotRealError(f"{what} must be real, got complex values ({name})")
    if kind == "b" or name.endswith("bool"):
        raise NotRealError(f"{what} must be a real-valued array, got booleans ({name})")
    if kind and kind in "SUV":
        raise NotRealError(f"{what} must be a numeric array, got text ({name})")


def as_vector(value: object, *, what: str, ndim: tuple[int, ...] = (1,)) -> np.ndarray:
    """A finite float32 numpy copy of ``value`` (numpy, mlx, torch or list).

    Raises:
        TypeError: complex, boolean or text values (a real-valued array is needed).
        ValueError: not numeric, wrong number of dims, empty, or non-finite values.
    """
    arr = host_array(value, what=what, dtype=np.float32)
    if arr.ndim not in ndim:
        raise ValueError(f"{what} must have {' or '.join(map(str, ndim))} dims, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{what} is empty (shape {arr.shape})")
    if not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(f"{what} has {bad} non-finite values (NaN or inf); steering needs finite values")
    arr.setflags(write=False)
    return arr
