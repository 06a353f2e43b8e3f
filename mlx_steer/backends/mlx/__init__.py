"""The MLX backend: mlx-lm models patched per instance (``mlx_steer.load``)."""

from ...steerable import BatchResult, Hooks, Trace
from .batching import SteeredBatchGenerator
from .loading import load
from .model import MLXSteerableModel, SteerableModel

__all__ = ["BatchResult", "Hooks", "MLXSteerableModel", "SteerableModel", "SteeredBatchGenerator", "Trace", "load"]
