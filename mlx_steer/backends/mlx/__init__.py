"""The MLX backend: mlx-lm models patched per instance (``mlx_steer.load``)."""

from ...engine.model import BatchResult, Hooks, Trace
from .backend import MLXBackend
from .batch_loop import SteeredBatchGenerator
from .loading import load
from .model import MLXSteerableModel, SteerableModel

__all__ = ["BatchResult", "Hooks", "MLXBackend", "MLXSteerableModel", "SteerableModel", "SteeredBatchGenerator",
           "Trace", "load"]
