"""The MLX backend: mlx-lm models patched per instance (``mlx_steer.load``)."""

from ...steerable import BatchResult, Hooks, Trace
from .model import SteerableModel, load

__all__ = ["BatchResult", "Hooks", "SteerableModel", "Trace", "load"]
