"""mlx_steer: activation steering and recording for mlx-lm models (and HF transformers via
``mlx_steer.torch_backend``).

    import mlx_steer as ms
    from mlx_steer import interventions as iv

    model = ms.load("path/or/hf-id")
    with model.trace(["I think"], record=["layers.4"],
                     interventions={"layers.4": iv.add_vector(v, scale=4.0)}) as tr:
        pass
    tr.activations["layers.4"]          # (B, L, D)

The MLX names (``load``, ``SteerableModel``, ``Hooks``, ``Trace``) import MLX on first use, so the
backend-neutral parts and the torch backend work where MLX is not installed.
"""

from __future__ import annotations

from typing import Any

from . import interventions
from .paths import Site
from .positions import Positions

_MLX_NAMES = {"load", "SteerableModel", "Hooks", "Trace"}
_NEUTRAL = {
    "extract": ("extraction", "extract"),
    "SteeringVector": ("steering_vector", "SteeringVector"),
    "save_vector": ("vector_file", "save_vector"),
    "load_vector": ("vector_file", "load_vector"),
}

__all__ = sorted(["Positions", "Site", "interventions", *_MLX_NAMES, *_NEUTRAL])


def __getattr__(name: str) -> Any:
    import importlib

    if name in _MLX_NAMES:
        return getattr(importlib.import_module(".mlx_model", __name__), name)
    if name in _NEUTRAL:
        module, attr = _NEUTRAL[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module 'mlx_steer' has no attribute {name!r}")
