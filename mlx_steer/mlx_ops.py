"""Compile backend-neutral interventions into MLX array ops.

Every op is ``op(h, state) -> h`` where ``state`` is the current forward's
:class:`~mlx_steer.mlx_hooks.ForwardState`. Vectors become MLX arrays in the activation dtype at
install; if a forward arrives in another dtype the cast is made once and cached. Unselected
positions go through ``mx.where`` untouched, so they stay bit-identical.
"""

from __future__ import annotations

from typing import Callable

import mlx.core as mx
import numpy as np

from . import interventions as iv

Op = Callable[[mx.array, "object"], mx.array]


class _Cast:
    """An array kept per dtype, cast once."""

    def __init__(self, value: np.ndarray, dtype: mx.Dtype):
        self._by_dtype = {dtype: mx.array(value).astype(dtype)}

    def get(self, dtype: mx.Dtype) -> mx.array:
        arr = self._by_dtype.get(dtype)
        if arr is None:
            arr = self._by_dtype[dtype] = next(iter(self._by_dtype.values())).astype(dtype)
        return arr


def _check_dim(h: mx.array, d: int, site: str) -> None:
    if h.shape[-1] != d:
        raise ValueError(f"vector of size {d} does not fit site {site!r} whose activations have size {h.shape[-1]}")


def _masked(h: mx.array, new: Callable[[], mx.array], mask: object) -> mx.array:
    if mask is False:
        return h
    if mask is True:
        return new()
    return mx.where(mask, new(), h)


class AddOp:
    def __init__(self, spec: iv.AddVector, dtype: mx.Dtype, site: str):
        self.sel, self.site = spec.positions, site
        self.v = _Cast(spec.vector * np.float32(spec.scale), dtype)
        self.d, self.n = spec.vector.shape[-1], spec.vector.shape[0]

    def __call__(self, h: mx.array, state) -> mx.array:
        _check_dim(h, self.d, self.site)
        v = self.v.get(h.dtype)
        return _masked(h, lambda: h + v, state.mask(self.sel))


class FrontAlignedAddOp(AddOp):
    """Adds row p of an (n, D) tensor at absolute position p < n."""

    @property
    def front_aligned_rows(self) -> int:
        return self.n

    def __call__(self, h: mx.array, state) -> mx.array:
        _check_dim(h, self.d, self.site)
        delta = self.v.get(h.dtype)
        n = delta.shape[0]
        pos = state.pos
        valid = (pos >= 0) & (pos < n)
        if not valid.any():
            return h
        add = delta[mx.array(np.clip(pos, 0, n - 1))]
        return _masked(h, lambda: h + add, True if valid.all() else mx.array(valid)[..., None])


class ScaleOp:
    def __init__(self, spec: iv.Scale):
        self.sel, self.f = spec.positions, spec.factor

    def __call__(self, h: mx.array, state) -> mx.array:
        return _masked(h, lambda: h * self.f, state.mask(self.sel))


class SetOp:
    def __init__(self, spec: iv.Set, dtype: mx.Dtype, site: str):
        self.sel, self.site = spec.positions, site
        self.value = _Cast(spec.value, dtype)
        self.d = spec.value.shape[-1]

    def __call__(self, h: mx.array, state) -> mx.array:
        if self.d != 1:
            _check_dim(h, self.d, self.site)
        value = self.value.get(h.dtype)
        return _masked(h, lambda: mx.broadcast_to(value, h.shape), state.mask(self.sel))


class AblateHeadsOp:
    def __init__(self, spec: iv.AblateHeads, n_heads: int, dtype: mx.Dtype):
        self.sel, self.n_heads = spec.positions, n_heads
        keep = np.ones((n_heads, 1), dtype=np.float32)
        keep[list(spec.heads)] = 0.0
        self.keep = _Cast(keep, dtype)

    def __call__(self, h: mx.array, state) -> mx.array:
        B, L, D = h.shape
        keep = self.keep.get(h.dtype)

        def ablated() -> mx.array:
            return (h.reshape(B, L, self.n_heads, D // self.n_heads) * keep).reshape(B, L, D)

        return _masked(h, ablated, state.mask(self.sel))


class ProjectOutOp:
    def __init__(self, spec: iv.ProjectOut, site: str):
        self.sel, self.site = spec.positions, site
        self.u = mx.array(spec.direction)  # float32: the projection is computed in fp32

    def __call__(self, h: mx.array, state) -> mx.array:
        _check_dim(h, self.u.shape[0], self.site)

        def projected() -> mx.array:
            hf = h.astype(mx.float32)
            return (hf - (hf @ self.u)[..., None] * self.u).astype(h.dtype)

        return _masked(h, projected, state.mask(self.sel))


class CustomOp:
    def __init__(self, spec: iv.Custom, site: str):
        self.sel, self.fn, self.site = spec.positions, spec.fn, site

    def __call__(self, h: mx.array, state) -> mx.array:
        mask = state.mask(self.sel)
        if mask is False:
            return h
        out = self.fn(h)
        if not isinstance(out, mx.array) or out.shape != h.shape:
            got = getattr(out, "shape", type(out).__name__)
            raise ValueError(f"custom intervention at {self.site!r} must return an mx.array of shape {h.shape}, got {got}")
        out = out.astype(h.dtype)
        return out if mask is True else mx.where(mask, out, h)


def compile_op(spec: iv.Intervention, *, site: str, dim: int | None, n_heads: int | None, dtype: mx.Dtype) -> Op:
    """Validate ``spec`` against the site and return its op. Raises ValueError on a mismatch."""
    if isinstance(spec, iv.AddVector):
        _check_size(spec.vector.shape[-1], dim, site, "steering vector")
        return FrontAlignedAddOp(spec, dtype, site) if spec.front_aligned else AddOp(spec, dtype, site)
    if isinstance(spec, iv.Scale):
        return ScaleOp(spec)
    if isinstance(spec, iv.Set):
        if spec.value.shape[-1] != 1:
            _check_size(spec.value.shape[-1], dim, site, "set value")
        return SetOp(spec, dtype, site)
    if isinstance(spec, iv.AblateHeads):
        if n_heads is None or dim is None or dim % n_heads:
            raise ValueError(
                f"ablate_heads needs an attention output projection's input, e.g. "
                f"'layers.0.self_attn.o_proj:input'; site {site!r} has size {dim} and the model {n_heads} heads"
            )
        if max(spec.heads) >= n_heads:
            raise ValueError(f"head {max(spec.heads)} out of range for {n_heads} heads; valid: 0..{n_heads - 1}")
        return AblateHeadsOp(spec, n_heads, dtype)
    if isinstance(spec, iv.ProjectOut):
        _check_size(spec.direction.shape[0], dim, site, "direction")
        return ProjectOutOp(spec, site)
    if isinstance(spec, iv.Custom):
        return CustomOp(spec, site)
    raise ValueError(f"unsupported intervention {spec!r}")


def _check_size(size: int, dim: int | None, site: str, what: str) -> None:
    if dim is not None and size != dim:
        raise ValueError(f"{what} has size {size} but site {site!r} has size {dim}")
