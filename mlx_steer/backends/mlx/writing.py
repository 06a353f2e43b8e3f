"""The MLX backend's side of an export: a module's weights as numpy, and a folder ``mlx_lm.load``
reads (mlx-lm's own weight names and the source config, as ``mlx_lm.convert`` writes them)."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from ...export.edit import Baked, Dense

__all__ = ["dense", "quantization_entry", "write_model"]

_DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}


def dense(module: nn.Module, path: str) -> Dense:
    """``module``'s float32 weights as ``y = W x + b`` (an embedding's table transposed)."""
    if isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
        raise ValueError(f"{path} is quantized ({type(module).__name__}); an edited weight re-quantized would "
                         "change beyond the edit: export from the unquantized model")
    if isinstance(module, nn.Embedding):
        return Dense(np.array(module.weight.astype(mx.float32)).T.copy())
    if isinstance(module, nn.Linear):
        bias = module.get("bias") if "bias" in module else None
        return Dense(np.array(module.weight.astype(mx.float32)),
                     None if bias is None else np.array(bias.astype(mx.float32)))
    raise ValueError(f"{path} is a {type(module).__name__}, not a linear layer or embedding: no weight edit "
                     "equals an intervention on its output")


def write_model(folder: Path, model: nn.Module, modules: dict[str, Any], tokenizer: Any, config: dict | None,
                source: str | None, baked: Baked, *, embedding: str, dtype: str | None) -> None:
    """Write ``model`` with ``baked`` applied into ``folder`` (the model itself is not changed)."""
    if config is None:
        raise ValueError("exporting needs the model's config.json: load the model with mlx_steer.load(path) "
                         "(a model built in memory has none)")
    weights = dict(tree_flatten(model.parameters()))
    if baked.untie:  # the head keeps the embedding's own table; only the embedding is edited
        weights["lm_head.weight"] = weights[f"{embedding}.weight"]
    for path, new in baked.modules.items():
        kind = modules[path]
        old = weights[f"{path}.weight"]
        table = new.weight.T if isinstance(kind, nn.Embedding) else new.weight
        weights[f"{path}.weight"] = mx.array(table).astype(old.dtype)
        if new.bias is not None:
            weights[f"{path}.bias"] = mx.array(new.bias).astype(old.dtype)
    for path in baked.bias_modules:
        if f"{path}.bias" not in weights:
            if isinstance(modules[path], nn.QuantizedLinear):
                raise ValueError(f"{path} is quantized; a bias for it cannot be added: export from the unquantized "
                                 "model")
            w = weights[f"{path}.weight"]
            weights[f"{path}.bias"] = mx.zeros((w.shape[0],), dtype=w.dtype)
    if dtype is not None:
        weights = {k: v.astype(_DTYPES[dtype]) if mx.issubdtype(v.dtype, mx.floating) else v
                   for k, v in weights.items()}
    mx.save_safetensors(str(folder / "model.safetensors"), weights, metadata={"format": "mlx"})
    out = {**config, **baked.config}
    if "quantization" not in out and (quantized := quantization_entry(modules)) is not None:
        out["quantization"] = quantized  # quantized after loading: mlx_lm.load must quantize it again
    if baked.untie:
        out["tie_word_embeddings"] = False
    if dtype is not None:
        out["torch_dtype"] = dtype
    (folder / "config.json").write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")
    tokenizer.save_pretrained(str(folder))
    src = Path(source) if source else None
    if src is not None and (src / "generation_config.json").is_file():
        shutil.copyfile(src / "generation_config.json", folder / "generation_config.json")  # not its mode: the umask's


def quantization_entry(modules: dict[str, Any]) -> dict[str, Any] | None:
    """mlx-lm's ``quantization`` config entry for the quantized modules (None: there are none): the
    most common ``group_size``/``bits``/``mode``, and by path every module quantized otherwise."""
    found = {p: {"group_size": int(m.group_size), "bits": int(m.bits), "mode": str(getattr(m, "mode", "affine"))}
             for p, m in modules.items() if p and isinstance(m, nn.Module) and "scales" in m and hasattr(m, "bits")}
    if not found:
        return None
    common = Counter(tuple(sorted(q.items())) for q in found.values()).most_common(1)[0][0]
    base: dict[str, Any] = dict(common)
    return {**base, **{p: q for p, q in found.items() if q != base}}
