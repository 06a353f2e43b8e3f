"""MLXSteerableModel: an mlx-lm model plus recording and interventions keyed by site path."""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn

from ...engine.model import Hooks, Steerable, Trace
from .backend import MLXBackend

__all__ = ["Hooks", "MLXSteerableModel", "SteerableModel", "Trace"]


class MLXSteerableModel(Steerable):
    """An mlx-lm model and tokenizer with site-keyed recording and steering: the engine's model
    holding an :class:`~mlx_steer.backends.mlx.backend.MLXBackend` (``SteerableModel`` is the same
    class under its earlier name).

    Args:
        model: An mlx-lm ``Model`` (anything with a ``layers`` property).
        tokenizer: Its mlx-lm ``TokenizerWrapper`` (or HF tokenizer).
        model_id: Name stored in vector files.
        config: The folder's config (``mlx_lm.load(..., return_config=True)``), which an export writes.
    """

    backend: MLXBackend

    def __init__(self, model: nn.Module, tokenizer: Any, *, model_id: str | None = None, config: dict | None = None):
        super().__init__(MLXBackend(model, tokenizer, model_id=model_id, config=config))

    @property
    def dtype(self) -> mx.Dtype:
        """The residual stream dtype (the embedding's)."""
        return self.backend.dtype


SteerableModel = MLXSteerableModel  # the earlier name, kept
