"""Compile backend-neutral interventions into array ops, once for every backend.

Every op is ``op(h, state) -> h`` for the current forward's
:class:`~mlx_steer.engine.positions.PositionState`; array work goes through the backend's
:class:`~mlx_steer.engine.arrays.ArrayOps`. Vectors are cast to the activation's dtype (and device)
once and cached. Unselected positions and rows go through ``where`` untouched, so they stay
bit-identical.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from . import interventions as iv
from .arrays import Array, ArrayOps
from .positions import Positions, PositionState


class _Cast:
    """A host array kept as a device array per (dtype, device), cast once."""

    def __init__(self, value: np.ndarray, xp: ArrayOps, *, f32: bool = False):
        self.value, self.xp, self.f32 = np.ascontiguousarray(value, dtype=np.float32), xp, f32
        self._by_key: dict[object, Array] = {}

    def like(self, h: Array) -> Array:
        k = self.xp.key(h)
        arr = self._by_key.get(k)
        if arr is None:
            make = self.xp.constant_f32 if self.f32 else self.xp.constant
            arr = self._by_key[k] = make(self.value, like=h)
        return arr


class Op:
    """One compiled intervention: acts on positions ``sel`` of the rows ``rows`` (all if None)."""

    def __init__(self, spec: iv.Intervention, xp: ArrayOps, site: str):
        self.sel: Positions = spec.positions
        self.rows: frozenset[int] | None = spec.rows
        self.xp, self.site = xp, site

    def __call__(self, h: Array, state: PositionState) -> Array:
        mask = state.mask(self.sel, self.rows, like=h)
        if mask is False:
            return h
        new = self.apply(h, state)
        return new if mask is True else self.xp.where(mask, new, h)

    def apply(self, h: Array, state: PositionState) -> Array:
        raise NotImplementedError

    def check_dim(self, h: Array, d: int) -> None:
        if h.shape[-1] != d:
            raise ValueError(
                f"vector of size {d} does not fit site {self.site!r} whose activations have size {h.shape[-1]}"
            )


class AddOp(Op):
    def __init__(self, spec: iv.AddVector, xp: ArrayOps, site: str):
        super().__init__(spec, xp, site)
        self.v = _Cast(spec.vector * np.float32(spec.scale), xp)
        self.d = spec.vector.shape[-1]

    def apply(self, h: Array, state: PositionState) -> Array:
        self.check_dim(h, self.d)
        return h + self.v.like(h)


class FrontAlignedAddOp(AddOp):
    """Adds row p of an (n, D) tensor at absolute position p < n: the selection is the window
    [0, n) of the op's rows."""

    def __init__(self, spec: iv.AddVector, xp: ArrayOps, site: str):
        super().__init__(spec, xp, site)
        self.sel = Positions.window(0, spec.vector.shape[0])

    def apply(self, h: Array, state: PositionState) -> Array:
        self.check_dim(h, self.d)
        delta = self.v.like(h)
        return h + delta[self.xp.index(np.clip(state.pos, 0, delta.shape[0] - 1), like=h)]


class ScaleOp(Op):
    def __init__(self, spec: iv.Scale, xp: ArrayOps, site: str):
        super().__init__(spec, xp, site)
        self.f = spec.factor

    def apply(self, h: Array, state: PositionState) -> Array:
        return h * self.f


class SetOp(Op):
    def __init__(self, spec: iv.Set, xp: ArrayOps, site: str):
        super().__init__(spec, xp, site)
        self.value = _Cast(spec.value, xp)
        self.d = spec.value.shape[-1]

    def apply(self, h: Array, state: PositionState) -> Array:
        if self.d != 1:
            self.check_dim(h, self.d)
        return self.xp.broadcast_to(self.value.like(h), h.shape)


class AblateHeadsOp(Op):
    def __init__(self, spec: iv.AblateHeads, xp: ArrayOps, site: str, n_heads: int):
        super().__init__(spec, xp, site)
        self.n_heads = n_heads
        keep = np.ones((n_heads, 1), dtype=np.float32)
        keep[list(spec.heads)] = 0.0
        self.keep = _Cast(keep, xp)

    def apply(self, h: Array, state: PositionState) -> Array:
        B, L, D = h.shape
        return (h.reshape(B, L, self.n_heads, D // self.n_heads) * self.keep.like(h)).reshape(B, L, D)


class ProjectOutOp(Op):
    def __init__(self, spec: iv.ProjectOut, xp: ArrayOps, site: str):
        super().__init__(spec, xp, site)
        self.u = _Cast(spec.direction, xp, f32=True)  # the projection is computed in fp32

    def apply(self, h: Array, state: PositionState) -> Array:
        u = self.u.like(h)
        self.check_dim(h, u.shape[0])
        hf = self.xp.float32(h)
        return self.xp.astype(hf - (hf @ u)[..., None] * u, h)


class CapOp(Op):
    def __init__(self, spec: iv.Cap, xp: ArrayOps, site: str):
        super().__init__(spec, xp, site)
        self.u = _Cast(spec.direction, xp, f32=True)  # computed in fp32, as project_out
        self.low, self.high = spec.low, spec.high

    def apply(self, h: Array, state: PositionState) -> Array:
        u = self.u.like(h)
        self.check_dim(h, u.shape[0])
        hf = self.xp.float32(h)
        p = hf @ u
        clipped = p
        if self.high is not None:
            clipped = self.xp.where(clipped > self.high, self.xp.zeros_like(clipped) + self.high, clipped)
        if self.low is not None:
            clipped = self.xp.where(clipped < self.low, self.xp.zeros_like(clipped) + self.low, clipped)
        return self.xp.astype(hf + (clipped - p)[..., None] * u, h)


class FeatureClampOp(Op):
    def __init__(self, spec: iv.FeatureClamp, xp: ArrayOps, site: str):
        super().__init__(spec, xp, site)
        self.enc, self.dec = _Cast(spec.encoder, xp, f32=True), _Cast(spec.decoder, xp, f32=True)
        self.shift = None if spec.input_shift is None else _Cast(spec.input_shift, xp, f32=True)
        self.bias, self.value, self.threshold = spec.bias, spec.value, spec.threshold
        self.topk = None if spec.topk is None else (_Cast(spec.topk[0], xp, f32=True),
                                                    _Cast(spec.topk[1], xp, f32=True), spec.topk[2])

    def apply(self, h: Array, state: PositionState) -> Array:
        dec = self.dec.like(h)
        self.check_dim(h, dec.shape[0])
        x = self.xp.float32(h)
        xin = x if self.shift is None else x - self.shift.like(h)
        pre = xin @ self.enc.like(h) + self.bias  # (B, L): this feature's pre-activation
        on = pre > 0
        if self.threshold is not None:
            on = on & (pre > self.threshold)
        if self.topk is not None:  # active only among the k largest pre-activations
            w, b, k = self.topk
            on = on & (pre >= self.xp.kth_largest(xin @ w.like(h) + b.like(h), k)[..., 0])
        f = self.xp.where(on, pre, self.xp.zeros_like(pre))
        return self.xp.astype(x + (self.value - f)[..., None] * dec, h)


class CustomOp(Op):
    def __init__(self, spec: iv.Custom, xp: ArrayOps, site: str):
        super().__init__(spec, xp, site)
        self.fn: Callable[[Any], Any] = spec.fn

    def apply(self, h: Array, state: PositionState) -> Array:
        out = self.fn(h)
        if not self.xp.is_array(out) or tuple(out.shape) != tuple(h.shape):
            got = tuple(out.shape) if hasattr(out, "shape") else type(out).__name__
            raise ValueError(
                f"custom intervention at {self.site!r} must return a {self.xp.array_type} "
                f"of shape {tuple(h.shape)}, got {got}"
            )
        return self.xp.astype(out, h)


def compile_op(spec: iv.Intervention, *, xp: ArrayOps, site: str, dim: int | None, n_heads: int | None) -> Op:
    """Validate ``spec`` against the site and return its op.

    Args:
        spec: The intervention.
        xp: The backend's array functions.
        site: The site key (for messages).
        dim: The site's activation size when known before running.
        n_heads: Heads concatenated at the site (None where they are not).

    Raises:
        ValueError: a size that does not fit the site, heads out of range, an unknown spec.
    """
    if isinstance(spec, iv.AddVector):
        _check_size(spec.vector.shape[-1], dim, site, "steering vector")
        return (FrontAlignedAddOp if spec.front_aligned else AddOp)(spec, xp, site)
    if isinstance(spec, iv.Scale):
        return ScaleOp(spec, xp, site)
    if isinstance(spec, iv.Set):
        if spec.value.shape[-1] != 1:
            _check_size(spec.value.shape[-1], dim, site, "set value")
        return SetOp(spec, xp, site)
    if isinstance(spec, iv.AblateHeads):
        if n_heads is None or dim is None or dim % n_heads:
            raise ValueError(
                f"ablate_heads needs an attention output projection's input, e.g. "
                f"'layers.0.self_attn.o_proj:input'; site {site!r} has size {dim} and the model {n_heads} heads"
            )
        if max(spec.heads) >= n_heads:
            raise ValueError(f"head {max(spec.heads)} out of range for {n_heads} heads; valid: 0..{n_heads - 1}")
        return AblateHeadsOp(spec, xp, site, n_heads)
    if isinstance(spec, iv.ProjectOut):
        _check_size(spec.direction.shape[0], dim, site, "direction")
        return ProjectOutOp(spec, xp, site)
    if isinstance(spec, iv.Cap):
        _check_size(spec.direction.shape[0], dim, site, "direction")
        return CapOp(spec, xp, site)
    if isinstance(spec, iv.FeatureClamp):
        _check_size(spec.decoder.shape[0], dim, site, "SAE feature")
        return FeatureClampOp(spec, xp, site)
    if isinstance(spec, iv.Custom):
        return CustomOp(spec, xp, site)
    raise ValueError(f"unsupported intervention {spec!r}")


def _check_size(size: int, dim: int | None, site: str, what: str) -> None:
    if dim is not None and size != dim:
        raise ValueError(f"{what} has size {size} but site {site!r} has size {dim}")
