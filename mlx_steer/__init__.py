"""mlx_steer: activation steering and recording for mlx-lm models.

    import mlx_steer as ms
    from mlx_steer import interventions as iv

    model = ms.load("path/or/hf-id")
    with model.trace(["I think"], record=["layers.4"],
                     interventions={"layers.4": iv.add_vector(v, scale=4.0)}) as tr:
        pass
    tr.activations["layers.4"]          # (B, L, D)
"""

from __future__ import annotations

from . import interventions
from .mlx_model import Hooks, SteerableModel, Trace
from .paths import Site
from .positions import Positions

__all__ = ["Hooks", "Positions", "Site", "SteerableModel", "Trace", "interventions", "load"]


def load(path_or_hf_repo: str, *, lazy: bool = False, **kwargs: object) -> SteerableModel:
    """Load an mlx-lm model (local folder or hub id) as a :class:`SteerableModel`.

    Args:
        path_or_hf_repo: Folder or Hugging Face repo id (mlx-community quantized models work).
        lazy: Passed to ``mlx_lm.load``.
        kwargs: Other ``mlx_lm.load`` options (``tokenizer_config``, ``adapter_path``...).
    """
    from mlx_lm import load as mlx_load

    model, tokenizer = mlx_load(str(path_or_hf_repo), lazy=lazy, **kwargs)
    return SteerableModel(model, tokenizer, model_id=str(path_or_hf_repo))
