"""The torch backend: the :class:`mlx_steer.SteerableModel` API on Hugging Face transformers models.

Also importable as ``mlx_steer.torch_backend``.

    from mlx_steer.torch_backend import load
    from mlx_steer import interventions as iv

    model = load("path/to/hf-folder", device="cuda", dtype="bfloat16")
    with model.trace(["I think"], record=["layers.4"],
                     interventions={"layers.4": iv.add_vector(v, scale=4.0)}) as tr:
        pass
    tr.activations["layers.4"]          # torch (B, L, D)

Sites, positions, interventions and recording mean what they mean on MLX (see DESIGN.md), so
vectors and results are portable. ``import mlx_steer`` never imports torch; this package does.
"""

from __future__ import annotations

from typing import Any

from ...engine.model import BatchResult, Hooks, Trace
from .backend import TorchBackend
from .generation import GenerationResponse
from .model import TorchSteerableModel

__all__ = ["BatchResult", "GenerationResponse", "Hooks", "TorchBackend", "TorchSteerableModel", "Trace", "load"]


def load(path: str, *, device: Any = None, dtype: Any = None, **kwargs: Any) -> TorchSteerableModel:
    """Load a local Hugging Face folder (or a cached hub id) as a :class:`TorchSteerableModel`.

    Args:
        path: Model folder or repo id (passed to ``from_pretrained``).
        device: ``"cpu"``, ``"cuda"``, a ``torch.device``... (default: CPU).
        dtype: ``torch.float32``, ``"bfloat16"``... (default: the checkpoint's dtype).
        kwargs: Other ``AutoModelForCausalLM.from_pretrained`` options (``attn_implementation``...).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."), None) or dtype
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r}; valid: float32, float16, bfloat16 or a torch.dtype")
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype if dtype is not None else "auto", **kwargs)
    model.eval()
    if device is not None:
        model.to(device)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    return TorchSteerableModel(model, tokenizer, model_id=str(path))
