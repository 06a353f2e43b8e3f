"""``mlx_steer.torch_backend``: the torch backend's public names (it lives in
``mlx_steer.backends.torch``). Importing this imports torch."""

from ..backends.torch import BatchResult, GenerationResponse, Hooks, TorchSteerableModel, Trace, load
from ..backends.torch import sampling

__all__ = ["BatchResult", "GenerationResponse", "Hooks", "TorchSteerableModel", "Trace", "load", "sampling"]
