"""TorchSteerableModel: a Hugging Face causal LM with the API of :class:`mlx_steer.MLXSteerableModel`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ...engine.model import Steerable
from .backend import TorchBackend

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["TorchSteerableModel"]


class TorchSteerableModel(Steerable):
    """A transformers causal LM and tokenizer with site-keyed recording and steering: the engine's
    model holding a :class:`~mlx_steer.backends.torch.backend.TorchBackend`.

    Args:
        hf_model: A ``PreTrainedModel`` for causal LM (``LlamaForCausalLM``, ``GPT2LMHeadModel``...).
        tokenizer: Its Hugging Face tokenizer.
        model_id: Name stored in vector files.
    """

    backend: TorchBackend

    def __init__(self, hf_model: PreTrainedModel, tokenizer: Any, *, model_id: str | None = None):
        super().__init__(TorchBackend(hf_model, tokenizer, model_id=model_id))

    @property
    def dtype(self) -> torch.dtype:
        """The residual stream dtype (the input embedding's)."""
        return self.backend.dtype

    @property
    def device(self) -> torch.device:
        return self.backend.device
