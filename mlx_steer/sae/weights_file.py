"""An SAE's ``sae_weights.safetensors`` read as float32 numpy, whatever float type it was saved in (bf16,
common on the hub, has no numpy type: its bits are widened by hand, which is exact), and refused by name
when it is truncated, holds a non-float tensor, or holds NaN or inf."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["FLOAT_TYPES", "read_weights"]

# safetensors dtype -> the little-endian numpy type of its bytes (BF16: the upper half of a float32)
FLOAT_TYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2"}


def read_weights(path: Path, names: list[str]) -> dict[str, np.ndarray]:
    """Tensors ``names`` of the safetensors file ``path``, as float32 numpy arrays.

    Raises:
        ValueError: naming the file and the tensor: a file that is not valid safetensors (truncated,
            corrupt header), a tensor missing, of a type other than F64/F32/F16/BF16, or holding NaN or inf.
    """
    from safetensors import SafetensorError, deserialize

    try:
        tensors = dict(deserialize(path.read_bytes()))
    except SafetensorError as exc:
        raise ValueError(f"{path} is not a valid safetensors file (truncated or corrupt?): {exc}") from None
    absent = [n for n in names if n not in tensors]
    if absent:
        raise ValueError(f"{path} lacks {', '.join(absent)}; it holds {', '.join(sorted(tensors)) or 'no tensors'}")
    return {n: _as_float32(path, n, tensors[n]) for n in names}


def _as_float32(path: Path, name: str, spec: dict) -> np.ndarray:
    dtype, shape, data = spec["dtype"], tuple(spec["shape"]), spec["data"]
    if dtype not in FLOAT_TYPES:
        raise ValueError(f"{path}: tensor {name} has type {dtype}; valid: {', '.join(FLOAT_TYPES)}")
    raw = np.frombuffer(data, dtype=FLOAT_TYPES[dtype])
    if int(np.prod(shape, dtype=np.int64)) != raw.size:
        raise ValueError(f"{path}: tensor {name} has shape {list(shape)} but {raw.size} values")
    if dtype == "BF16":
        out = (raw.astype(np.uint32) << 16).view(np.float32)
    else:
        with np.errstate(over="ignore"):  # an F64 beyond float32's range becomes inf, refused below
            out = raw.astype(np.float32)
    bad = int(out.size - np.isfinite(out).sum())
    if bad:
        raise ValueError(f"{path}: tensor {name} holds {bad} NaN or inf value(s) (as float32); valid: finite numbers")
    return out.reshape(shape)
