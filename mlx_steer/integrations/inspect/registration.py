"""The ``mlx_steer`` model API, registered with Inspect (the ``inspect_ai`` entry point loads this
module). Importing it is cheap: the model code is imported when Inspect asks for the provider."""

from __future__ import annotations

from inspect_ai.model import ModelAPI, modelapi


@modelapi(name="mlx_steer")
def mlx_steer() -> type[ModelAPI]:
    """``--model mlx_steer/PATH``: a steerable MLX (or torch) model from a folder or cached hub id."""
    from .provider import MlxSteerAPI

    return MlxSteerAPI
