"""The torch backend's side of an export: a module's weights as numpy, and a folder
``AutoModelForCausalLM.from_pretrained`` reads (safetensors weights, the config, the tokenizer)."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ...export.edit import Baked, Dense
from .layers import conv1d_types

__all__ = ["dense", "write_model"]


def _is_float(t: torch.Tensor) -> bool:
    return t.dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def dense(module: nn.Module, path: str) -> Dense:
    """``module``'s float32 weights as ``y = W x + b`` (GPT-2's Conv1D and an embedding transposed)."""
    weight = getattr(module, "weight", None)
    if not isinstance(module, (nn.Linear, nn.Embedding, *conv1d_types())):
        raise ValueError(f"{path} is a {type(module).__name__}, not a linear layer or embedding: no weight edit "
                         "equals an intervention on its output")
    if not (isinstance(weight, torch.Tensor) and _is_float(weight) and type(weight) in (torch.Tensor, nn.Parameter)):
        raise ValueError(f"{path} is quantized ({type(module).__name__} with {type(weight).__name__} weights); an edited "
                         "weight re-quantized would change beyond the edit: export from the unquantized model")
    if isinstance(module, nn.Embedding):
        return Dense(weight.detach().float().cpu().numpy().T.copy())
    bias = getattr(module, "bias", None)
    b = None if bias is None else bias.detach().float().cpu().numpy().copy()
    if isinstance(module, nn.Linear):
        return Dense(weight.detach().float().cpu().numpy().copy(), b)
    return Dense(weight.detach().float().cpu().numpy().T.copy(), b)  # Conv1D: (in, out)


def write_model(folder: Path, model: Any, modules: dict[str, Any], tokenizer: Any, baked: Baked, *,
                dtype: str | None) -> None:
    """Write ``model`` with ``baked`` applied into ``folder`` (the model itself is not changed)."""
    from safetensors.torch import save_file

    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}  # no shared storage
    for path, new in baked.modules.items():
        module = modules[path]
        old = state[f"{path}.weight"]
        table = new.weight if isinstance(module, nn.Linear) else new.weight.T  # Embedding, Conv1D: (rows, out)
        state[f"{path}.weight"] = torch.from_numpy(np.ascontiguousarray(table)).to(old.dtype)
        if new.bias is not None:
            state[f"{path}.bias"] = torch.from_numpy(new.bias.copy()).to(old.dtype)
    for path in baked.bias_modules:
        if f"{path}.bias" not in state:
            w = state[f"{path}.weight"]
            state[f"{path}.bias"] = torch.zeros(modules[path].out_features, dtype=w.dtype)
    if dtype is not None:
        state = {k: v.to(getattr(torch, dtype)) if _is_float(v) else v for k, v in state.items()}
    config = copy.deepcopy(model.config)
    for key, value in baked.config.items():
        setattr(config, key, value)
    if baked.untie:
        config.tie_word_embeddings = False
        if hasattr(config, "get_text_config"):
            config.get_text_config().tie_word_embeddings = False
    elif getattr(config, "tie_word_embeddings", False):  # the loader ties the head to the embedding again
        head = model.get_output_embeddings()
        state.pop(next(n for n, m in modules.items() if m is head and n) + ".weight", None)
    if dtype is not None:
        config.torch_dtype = dtype
    config.save_pretrained(str(folder))
    save_file({k: v.cpu() for k, v in state.items()}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    # safetensors writes a private (0600) file; give it the mode the umask gave config.json
    shutil.copymode(folder / "config.json", folder / "model.safetensors")
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
