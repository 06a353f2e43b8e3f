"""What a lens needs from a backend, as one small protocol (:class:`LensOps`): logits of residuals
through an optional translator and the model's readout, and the translators' training loop (MLX
autodiff and optimizers on the MLX backend, torch autograd and optimizers on the torch backend).
Everything crossing it is numpy, so the lens and its table are written once."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from ..engine.model import Steerable
    from .readout import Readout

Translator = tuple[np.ndarray, np.ndarray]  # (M, b): h -> h + h @ M.T + b, i.e. A = I + M


class LensOps(Protocol):
    def logits(self, model: Steerable, readout: Readout, h: np.ndarray,
               translator: Translator | None = None) -> np.ndarray:
        """float32 (K, V) logits of residuals ``h`` (K, D), translated first when given. Residuals are
        cast to the model's dtype before its norm, as its own last layer's output is."""

    def fit(self, model: Steerable, readout: Readout, xs: np.ndarray, final: np.ndarray,
            batches: Sequence[np.ndarray], *, lr: float, optimizer: str,
            init: Sequence[Translator]) -> list[Translator]:
        """Train one translator per layer of ``xs`` (N, layers, D) to minimize the mean over tokens of
        KL(readout(final) || readout(translated)), one optimizer step per index array in ``batches``;
        the model's weights are read, never trained."""


def model_dtype(model: Steerable) -> Any:
    """The dtype the model's activations have (its backend's ``dtype``)."""
    return getattr(model.backend, "dtype")


def model_device(model: Steerable) -> Any:
    """The torch device of the model (None on MLX)."""
    return getattr(model.backend, "device", None)
