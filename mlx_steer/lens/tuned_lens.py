"""Tuned-lens translators (Belrose et al. 2023): one affine map per decoder layer,
``h -> A h + b`` with ``A = I + M``, applied to the layer's output before the model's readout. The
last layer has none (its read is the model's own logits). Saved as safetensors (``M.{layer}``,
``b.{layer}``) beside ``tuned_lens.json`` (model id, hidden size, layers); no pickle."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..engine.model import Steerable
    from .ops import Translator

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "TunedLens"]

CONFIG_NAME = "tuned_lens.json"
WEIGHTS_NAME = "tuned_lens.safetensors"
FORMAT = 1


@dataclass(frozen=True)
class TunedLens:
    """Per-layer translators of one model.

    Attributes:
        model_id: The model they were trained on (its folder or hub id).
        hidden_size: D.
        layers: The model's decoder layers (translators exist for layers 0 .. layers - 2).
        m: Per translated layer, ``M`` (D, D) float32: ``A = I + M``.
        b: Per translated layer, the bias (D,) float32.
        info: How they were trained (steps, lr, tokens...), as strings.
    """

    model_id: str | None
    hidden_size: int
    layers: int
    m: tuple[np.ndarray, ...]
    b: tuple[np.ndarray, ...]
    info: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def identity(cls, model: Steerable) -> TunedLens:
        """Translators that change nothing (``M = 0, b = 0``): the logit lens, exactly."""
        D, n = model.hidden_size, model.num_layers
        zeros = tuple(np.zeros((D, D), np.float32) for _ in range(n - 1))
        return cls(model.model_id, D, n, zeros, tuple(np.zeros(D, np.float32) for _ in range(n - 1)))

    def translator(self, layer: int) -> Translator | None:
        """Layer ``layer``'s (M, b); None for the last layer (no translator)."""
        return None if layer == self.layers - 1 else (self.m[layer], self.b[layer])

    def check(self, model: Steerable) -> None:
        """Refuse translators made for another model.

        Raises:
            ValueError: hidden size or layer count differ (naming both).
        """
        if self.hidden_size != model.hidden_size or self.layers != model.num_layers:
            raise ValueError(f"these translators are for a model with hidden size {self.hidden_size} and "
                             f"{self.layers} layers ({self.model_id}); this model has hidden size "
                             f"{model.hidden_size} and {model.num_layers} layers ({model.model_id})")

    def save(self, folder: str | Path) -> Path:
        """Write ``tuned_lens.safetensors`` and ``tuned_lens.json`` into ``folder`` (made if needed)."""
        from safetensors.numpy import save_file

        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {f"M.{i}": np.ascontiguousarray(m, np.float32) for i, m in enumerate(self.m)}
        tensors |= {f"b.{i}": np.ascontiguousarray(b, np.float32) for i, b in enumerate(self.b)}
        save_file(tensors, str(out / WEIGHTS_NAME), metadata={"format": str(FORMAT)})
        config = {"format": FORMAT, "model_id": self.model_id, "hidden_size": self.hidden_size,
                  "layers": self.layers, "info": dict(self.info)}
        (out / CONFIG_NAME).write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
        return out

    @classmethod
    def load(cls, folder: str | Path, *, model: Steerable | None = None) -> TunedLens:
        """Read what :meth:`save` wrote; checked against ``model`` when given.

        Raises:
            ValueError: not a tuned-lens folder, inconsistent shapes, or made for another model.
        """
        from safetensors.numpy import load_file

        src = Path(folder)
        if not (src / CONFIG_NAME).is_file() or not (src / WEIGHTS_NAME).is_file():
            raise ValueError(f"{src} is not a tuned-lens folder: it needs {CONFIG_NAME} and {WEIGHTS_NAME} "
                             "(written by TunedLens.save / mlx-steer lens train)")
        config: dict[str, Any] = json.loads((src / CONFIG_NAME).read_text(encoding="utf-8"))
        D, n = int(config["hidden_size"]), int(config["layers"])
        weights = load_file(str(src / WEIGHTS_NAME))
        expected = {f"{k}.{i}" for i in range(n - 1) for k in ("M", "b")}
        if set(weights) != expected or any(weights[f"M.{i}"].shape != (D, D) or weights[f"b.{i}"].shape != (D,)
                                           for i in range(n - 1)):
            raise ValueError(f"{src / WEIGHTS_NAME} does not hold M.i (D, D) and b.i (D,) for layers 0..{n - 2} "
                             f"with D={D} as {CONFIG_NAME} says")
        lens = cls(config.get("model_id"), D, n, tuple(weights[f"M.{i}"] for i in range(n - 1)),
                   tuple(weights[f"b.{i}"] for i in range(n - 1)), dict(config.get("info") or {}))
        if model is not None:
            lens.check(model)
        return lens
