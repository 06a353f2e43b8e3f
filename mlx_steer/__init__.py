"""mlx_steer: activation steering and recording for mlx-lm models (and HF transformers via
``mlx_steer.torch_backend``).

    import mlx_steer as ms
    from mlx_steer import interventions as iv

    model = ms.load("path/or/hf-id")
    with model.trace(["I think"], record=["layers.4"],
                     interventions={"layers.4": iv.add_vector(v, scale=4.0)}) as tr:
        pass
    tr.activations["layers.4"]          # (B, L, D)

``load(path, backend="mlx" | "torch", device=None)`` loads either backend's model and imports only that
backend; ``MLXSteerableModel`` (the MLX backend's class, also ``SteerableModel``) imports MLX on first
use, so the backend-neutral parts (``Hooks``, ``Trace`` ...) and the torch backend work where MLX is not
installed.

On Linux, importing mlx_steer first makes MLX's CPU build use an optimized BLAS when one is installed
(``MLX_STEER_BLAS=off`` turns that off; ``mlx-steer doctor`` shows which BLAS MLX uses): see
``mlx_steer.runtime.blas``.
"""

from __future__ import annotations

from .runtime.blas import prefer_fast_blas as _prefer_fast_blas

_prefer_fast_blas()  # before anything imports mlx.core: afterwards MLX's BLAS cannot change

from typing import Any  # noqa: E402

from . import moved_modules as _moved_modules  # noqa: E402

_moved_modules.install()  # the module paths from before engine/, vectors/ and extraction/

from .engine import interventions  # noqa: E402
from .engine.paths import Site  # noqa: E402
from .engine.positions import Positions  # noqa: E402
from .engine import spans  # noqa: E402


def _version() -> str:
    """The installed distribution's version; the checkout's pyproject version when not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mlx-steer-lab")  # the distribution name (pyproject.toml), not the import name
    except PackageNotFoundError:
        return "0.1.0"  # keep equal to pyproject.toml [project] version


__version__ = _version()

_MLX_NAMES = {"MLXSteerableModel", "SteerableModel"}
_NEUTRAL = {
    "load": ("loading", "load"),
    "Hooks": ("engine.hooks", "Hooks"),
    "Trace": ("engine.results", "Trace"),
    "extract": ("extraction.directions", "extract"),
    "record_dataset": ("extraction.dataset_recording", "record_dataset"),
    "SteeringVector": ("vectors.steering_vector", "SteeringVector"),
    "save_vector": ("vectors.vector_file", "save_vector"),
    "load_vector": ("vectors.vector_file", "load_vector"),
    "save_vector_pack": ("vectors.pack", "save_vector_pack"),
    "VectorCard": ("vectors.vector_card", "VectorCard"),
    "load_vector_card": ("vectors.hub", "load_vector_card"),
    "gradients": ("engine.gradients", "gradients"),
    "logit_diff": ("engine.gradients", "logit_diff"),
}

__all__ = sorted(["Positions", "Site", "interventions", "spans", *_MLX_NAMES, *_NEUTRAL])


def __dir__() -> list[str]:
    """Tab completion lists the lazily imported names too."""
    return sorted({*globals(), *__all__})


def __getattr__(name: str) -> Any:
    import importlib

    if name in _MLX_NAMES:
        return getattr(importlib.import_module(".backends.mlx", __name__), name)
    if name in _NEUTRAL:
        module, attr = _NEUTRAL[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module 'mlx_steer' has no attribute {name!r}")
