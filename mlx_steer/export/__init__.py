"""Exported edits: interventions baked into a model's weights and written as a folder the plain
framework loads (``mlx_lm.load``, ``AutoModelForCausalLM.from_pretrained``), with directional
ablation as the common case (:func:`directional_ablation`). See :meth:`Steerable.export
<mlx_steer.engine.model.Steerable.export>`."""

from .ablation import directional_ablation, residual_writes
from .architectures import ARCHITECTURES, Architecture
from .bake import bake
from .edit import Baked, Dense
from .folder import EDIT_FILE

__all__ = ["ARCHITECTURES", "EDIT_FILE", "Architecture", "Baked", "Dense", "bake", "directional_ablation",
           "residual_writes"]
