"""Torch tensor functions for the shared engine (:class:`mlx_steer.engine.arrays.ArrayOps`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


class TorchArrays:
    """``ArrayOps`` over ``torch.Tensor``; new tensors go to the device of the one they match."""

    array_type = "torch.Tensor"

    def key(self, like: torch.Tensor) -> object:
        return like.dtype, like.device

    def constant(self, value: np.ndarray, *, like: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.array(value, dtype=np.float32)).to(device=like.device, dtype=like.dtype)

    def constant_f32(self, value: np.ndarray, *, like: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.array(value, dtype=np.float32)).to(like.device)

    def mask(self, host: np.ndarray, *, like: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(host)).to(like.device)

    def index(self, host: np.ndarray, *, like: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(host)).to(like.device)

    def where(self, mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.where(mask, a, b)

    def token_mask(self, tokens: torch.Tensor, ids: np.ndarray, *, like: torch.Tensor) -> torch.Tensor:
        t = tokens.reshape(tokens.shape[0] if tokens.ndim == 2 else 1, -1)
        return torch.isin(t, torch.as_tensor(ids, dtype=t.dtype, device=t.device))[..., None].to(like.device)

    def logical(self, op: str, a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        if op == "not":
            return ~a
        assert b is not None
        return a & b if op == "and" else a | b

    def astype(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return x.to(like.dtype)

    def float32(self, x: torch.Tensor) -> torch.Tensor:
        return x.float()

    def zeros_like(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)

    def broadcast_to(self, x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        return x.expand(*shape).contiguous()

    def take_along_rows(self, h: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
        i = torch.from_numpy(np.ascontiguousarray(idx)).to(h.device)[..., None].expand(-1, -1, h.shape[-1])
        return torch.gather(h, 1, i)

    def copy(self, x: torch.Tensor) -> torch.Tensor:
        # A slice is a view that keeps its whole source alive; a clone owns just its own bytes.
        return x.detach().clone(memory_format=torch.contiguous_format)

    def concatenate(self, xs: list[torch.Tensor], axis: int) -> torch.Tensor:
        return torch.cat(xs, dim=axis)

    def weighted_sum(self, h: torch.Tensor, weights: np.ndarray) -> torch.Tensor:
        w = torch.from_numpy(np.ascontiguousarray(weights, dtype=np.float32)[..., None]).to(h.device)
        return (h.detach().float() * w).sum(dim=1)

    def divide_rows(self, x: torch.Tensor, counts: np.ndarray) -> torch.Tensor:
        return x / torch.from_numpy(counts.astype(np.float32)).to(x.device)[:, None]

    def is_array(self, x: object) -> bool:
        return isinstance(x, torch.Tensor)

    def to_numpy(self, x: torch.Tensor) -> np.ndarray:
        return x.detach().float().cpu().numpy()

    def ids_to_numpy(self, x: torch.Tensor) -> np.ndarray:
        return x.detach().cpu().numpy()

    def schedule(self, xs: list[torch.Tensor]) -> None:
        """Nothing to do: torch computes eagerly."""

    def nonfinite(self, x: torch.Tensor) -> torch.Tensor:
        return (torch.isnan(x) | (x == torch.inf)).any()

    def truth(self, flag: torch.Tensor) -> bool:
        return bool(flag.item())

    def kth_largest(self, x: torch.Tensor, k: int) -> torch.Tensor:
        return torch.topk(x, k, dim=-1).values.min(dim=-1, keepdim=True).values


XP = TorchArrays()
