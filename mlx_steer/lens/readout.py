"""How the model turns its last residual into logits, as a lens replays it on any layer's residual:
the final norm, the unembedding (an LM head, or the tied embedding), then what the model does to
the head's output (gemma's tanh softcapping, cohere's logit scale, granite's logit divisor).

The norm and head are found as :func:`~mlx_steer.analysis.top_tokens` finds them
(``model.final_norm_path``, ``model.unembedding_path``); the transform after the head is read from
the model's config. Every lens checks that its read of the last layer equals the model's own logits
(:func:`check_last_layer`), so an architecture with a step this module does not know is refused,
not read wrongly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..engine.model import Steerable

__all__ = ["Readout", "check_last_layer", "readout_of"]


@dataclass(frozen=True)
class Readout:
    """The model's path from the last residual to logits.

    Attributes:
        norm_path: The final norm (None: the model has none).
        head_path: The unembedding module (``lm_head``, or the embedding when tied).
        softcap: ``c`` in ``c * tanh(z / c)`` after the head (gemma2/3n), or None.
        scale: A factor on the logits after the head (cohere ``logit_scale``, granite ``1 / logits_scaling``).
    """

    norm_path: str | None
    head_path: str
    softcap: float | None = None
    scale: float = 1.0

    def finish(self, z: Any, tanh: Callable[[Any], Any]) -> Any:
        """The model's own steps after the head, in its order, on a backend array."""
        if self.softcap is not None:
            z = tanh(z / self.softcap) * self.softcap
        if self.scale != 1.0:
            z = z * self.scale
        return z


def _setting(model: Steerable, name: str) -> float | None:
    raw = model.model
    for src in (raw, getattr(raw, "args", None), getattr(raw, "config", None),
                getattr(getattr(raw, "model", None), "args", None)):
        value = getattr(src, name, None) if src is not None else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def readout_of(model: Steerable) -> Readout:
    """The final norm, unembedding and logit transform of ``model`` (either backend).

    Raises:
        ValueError: the model has no unembedding that can be found, or is sharded over ranks.
    """
    if model.distributed is not None:
        raise ValueError(f"the lens reads a whole model's norm and head; this one is sharded over ranks "
                         f"({model.distributed}): load it whole in one process")
    softcap = _setting(model, "final_logit_softcapping")
    scale = 1.0
    if (s := _setting(model, "logit_scale")) is not None and model.backend.model_type in ("cohere", "cohere2"):
        scale = s
    if (d := _setting(model, "logits_scaling")) is not None and d != 0:
        scale = 1.0 / d
    return Readout(model.final_norm_path, model.unembedding_path, softcap or None, scale)


def check_last_layer(lens_logits: np.ndarray, model_logits: np.ndarray, *, dtype_name: str) -> None:
    """Refuse a lens whose read of the last layer is not the model's own logits (an architecture
    with a step after the head this module does not know).

    Raises:
        ValueError: they differ beyond the dtype's rounding.
    """
    a = np.asarray(lens_logits, dtype=np.float64)
    b = np.asarray(model_logits, dtype=np.float64)
    tol = (1e-4 if "float32" in dtype_name else 3e-2) * max(1.0, float(np.max(np.abs(b))))
    diff = float(np.max(np.abs(a - b))) if a.size else 0.0
    if not diff <= tol:
        raise ValueError(f"the lens's read of the last layer differs from the model's logits by {diff:.3g} "
                         f"(allowed {tol:.3g}): this architecture has a step between the last layer and its "
                         "logits that the lens does not know, so no lens over its layers would be faithful")
