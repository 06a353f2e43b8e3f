"""The MLX backend: mlx-lm models patched per instance (``mlx_steer.load``)."""

from ...steerable import BatchResult, Hooks, Trace
from .batching import SteeredBatchGenerator
from .model import SteerableModel, load

__all__ = ["BatchResult", "Hooks", "SteerableModel", "SteeredBatchGenerator", "Trace", "load"]
