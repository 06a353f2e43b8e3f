"""Compile backend-neutral interventions into torch tensor ops (mirrors ``mlx_steer.mlx_ops``).

Every op is ``op(h, state) -> h`` where ``state`` is the current forward's
:class:`~mlx_steer.torch_backend.hooks.ForwardState`. Vectors become tensors in the activation
dtype on the model's device at install; a forward in another dtype or device casts once and
caches. Unselected positions go through ``torch.where`` untouched, so they stay bit-identical.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from .. import interventions as iv

Op = Callable[[torch.Tensor, "object"], torch.Tensor]


class _Cast:
    """A tensor kept per (dtype, device), cast once."""

    def __init__(self, value: np.ndarray, dtype: torch.dtype, device: torch.device):
        self._base = torch.from_numpy(np.array(value, dtype=np.float32))
        self._by_key = {(dtype, device): self._base.to(device=device, dtype=dtype)}

    def get(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        t = self._by_key.get((dtype, device))
        if t is None:
            t = self._by_key[(dtype, device)] = self._base.to(device=device, dtype=dtype)
        return t


def _check_dim(h: torch.Tensor, d: int, site: str) -> None:
    if h.shape[-1] != d:
        raise ValueError(f"vector of size {d} does not fit site {site!r} whose activations have size {h.shape[-1]}")


def _masked(h: torch.Tensor, new: Callable[[], torch.Tensor], mask: object) -> torch.Tensor:
    if mask is False:
        return h
    if mask is True:
        return new()
    return torch.where(mask, new(), h)  # type: ignore[arg-type]


class AddOp:
    def __init__(self, spec: iv.AddVector, dtype: torch.dtype, device: torch.device, site: str):
        self.sel, self.site = spec.positions, site
        self.v = _Cast(spec.vector * np.float32(spec.scale), dtype, device)
        self.d, self.n = spec.vector.shape[-1], spec.vector.shape[0]

    def __call__(self, h: torch.Tensor, state) -> torch.Tensor:
        _check_dim(h, self.d, self.site)
        v = self.v.get(h.dtype, h.device)
        return _masked(h, lambda: h + v, state.mask(self.sel))


class FrontAlignedAddOp(AddOp):
    """Adds row p of an (n, D) tensor at absolute position p < n."""

    @property
    def front_aligned_rows(self) -> int:
        return self.n

    def __call__(self, h: torch.Tensor, state) -> torch.Tensor:
        _check_dim(h, self.d, self.site)
        delta = self.v.get(h.dtype, h.device)
        pos = state.pos
        valid = (pos >= 0) & (pos < self.n)
        if not valid.any():
            return h
        rows = torch.from_numpy(np.clip(pos, 0, self.n - 1)).to(h.device)
        mask = True if valid.all() else torch.from_numpy(valid[..., None].copy()).to(h.device)
        return _masked(h, lambda: h + delta[rows], mask)


class ScaleOp:
    def __init__(self, spec: iv.Scale):
        self.sel, self.f = spec.positions, spec.factor

    def __call__(self, h: torch.Tensor, state) -> torch.Tensor:
        return _masked(h, lambda: h * self.f, state.mask(self.sel))


class SetOp:
    def __init__(self, spec: iv.Set, dtype: torch.dtype, device: torch.device, site: str):
        self.sel, self.site = spec.positions, site
        self.value = _Cast(spec.value, dtype, device)
        self.d = spec.value.shape[-1]

    def __call__(self, h: torch.Tensor, state) -> torch.Tensor:
        if self.d != 1:
            _check_dim(h, self.d, self.site)
        value = self.value.get(h.dtype, h.device)
        return _masked(h, lambda: value.expand(h.shape).contiguous(), state.mask(self.sel))


class AblateHeadsOp:
    def __init__(self, spec: iv.AblateHeads, n_heads: int, dtype: torch.dtype, device: torch.device):
        self.sel, self.n_heads = spec.positions, n_heads
        keep = np.ones((n_heads, 1), dtype=np.float32)
        keep[list(spec.heads)] = 0.0
        self.keep = _Cast(keep, dtype, device)

    def __call__(self, h: torch.Tensor, state) -> torch.Tensor:
        B, L, D = h.shape
        keep = self.keep.get(h.dtype, h.device)

        def ablated() -> torch.Tensor:
            return (h.reshape(B, L, self.n_heads, D // self.n_heads) * keep).reshape(B, L, D)

        return _masked(h, ablated, state.mask(self.sel))


class ProjectOutOp:
    def __init__(self, spec: iv.ProjectOut, device: torch.device, site: str):
        self.sel, self.site = spec.positions, site
        self.u = _Cast(spec.direction, torch.float32, device)  # the projection is computed in fp32

    def __call__(self, h: torch.Tensor, state) -> torch.Tensor:
        u = self.u.get(torch.float32, h.device)
        _check_dim(h, u.shape[0], self.site)

        def projected() -> torch.Tensor:
            hf = h.float()
            return (hf - (hf @ u)[..., None] * u).to(h.dtype)

        return _masked(h, projected, state.mask(self.sel))


class CustomOp:
    def __init__(self, spec: iv.Custom, site: str):
        self.sel, self.fn, self.site = spec.positions, spec.fn, site

    def __call__(self, h: torch.Tensor, state) -> torch.Tensor:
        mask = state.mask(self.sel)
        if mask is False:
            return h
        out = self.fn(h)
        if not isinstance(out, torch.Tensor) or out.shape != h.shape:
            got = tuple(out.shape) if hasattr(out, "shape") else type(out).__name__
            raise ValueError(
                f"custom intervention at {self.site!r} must return a torch.Tensor of shape {tuple(h.shape)}, got {got}"
            )
        out = out.to(h.dtype)
        return out if mask is True else torch.where(mask, out, h)


def compile_op(
    spec: iv.Intervention, *, site: str, dim: int | None, n_heads: int | None,
    dtype: torch.dtype, device: torch.device,
) -> Op:
    """Validate ``spec`` against the site and return its op. Raises ValueError on a mismatch."""
    if isinstance(spec, iv.AddVector):
        _check_size(spec.vector.shape[-1], dim, site, "steering vector")
        cls = FrontAlignedAddOp if spec.front_aligned else AddOp
        return cls(spec, dtype, device, site)
    if isinstance(spec, iv.Scale):
        return ScaleOp(spec)
    if isinstance(spec, iv.Set):
        if spec.value.shape[-1] != 1:
            _check_size(spec.value.shape[-1], dim, site, "set value")
        return SetOp(spec, dtype, device, site)
    if isinstance(spec, iv.AblateHeads):
        if n_heads is None or dim is None or dim % n_heads:
            raise ValueError(
                f"ablate_heads needs an attention output projection's input, e.g. "
                f"'layers.0.self_attn.o_proj:input'; site {site!r} has size {dim} and the model {n_heads} heads"
            )
        if max(spec.heads) >= n_heads:
            raise ValueError(f"head {max(spec.heads)} out of range for {n_heads} heads; valid: 0..{n_heads - 1}")
        return AblateHeadsOp(spec, n_heads, dtype, device)
    if isinstance(spec, iv.ProjectOut):
        _check_size(spec.direction.shape[0], dim, site, "direction")
        return ProjectOutOp(spec, device, site)
    if isinstance(spec, iv.Custom):
        return CustomOp(spec, site)
    raise ValueError(f"unsupported intervention {spec!r}")


def _check_size(size: int, dim: int | None, site: str, what: str) -> None:
    if dim is not None and size != dim:
        raise ValueError(f"{what} has size {size} but site {site!r} has size {dim}")
