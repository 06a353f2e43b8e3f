"""``load``: an mlx-lm model folder or hub id as the MLX backend's model, whole or sharded over ranks."""

from __future__ import annotations

from typing import Any

from .model import MLXSteerableModel
from .sharding import load_sharded

__all__ = ["load"]


def load(path_or_hf_repo: str, *, lazy: bool = False, distributed: str | None = None,
         **kwargs: Any) -> MLXSteerableModel:
    """Load an mlx-lm model (local folder or hub id) as a :class:`MLXSteerableModel`.

    Args:
        path_or_hf_repo: Folder or Hugging Face repo id (mlx-community quantized models work).
        lazy: Passed to ``mlx_lm.load``.
        distributed: ``"tensor"`` or ``"pipeline"``: shard the model over the ranks started by
            ``mlx.launch`` with mlx-lm's own sharding (every rank must call this, and then make
            the same calls); see :mod:`mlx_steer.backends.mlx.sharding`.
        kwargs: Other ``mlx_lm.load`` options (``tokenizer_config``, ``adapter_path``...).
    """
    if distributed is not None:
        return load_sharded(path_or_hf_repo, distributed, **kwargs)
    from mlx_lm import load as mlx_load

    # mlx_lm.load is annotated with a Union of 2- and 3-tuples (no overload on return_config)
    model, tokenizer, config = mlx_load(str(path_or_hf_repo), lazy=lazy, return_config=True,  # type: ignore[misc]
                                        **kwargs)
    return MLXSteerableModel(model, tokenizer, model_id=str(path_or_hf_repo), config=config)
