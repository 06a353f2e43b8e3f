"""Lenses over layers, for either backend: the logit lens (each layer's residual read through the
model's final norm and unembedding) and the tuned lens (Belrose et al. 2023: per-layer affine
translators trained with the backend's autodiff to match the final distribution), as one table
of top tokens, target probabilities and ranks, and KL to the model's output, with a heatmap.

    from mlx_steer import lens
    table = lens.logit_lens(model, "The capital of France is", targets=" Paris")
    print(table.to_text()); table.plot(path="lens.png")
    tuned, report = lens.train_tuned_lens(model, prompts)
    tuned.save("lens_dir"); lens.logit_lens(model, prompt, tuned=lens.TunedLens.load("lens_dir", model=model))
"""

from .logit_lens import logit_lens, target_id
from .readout import Readout, readout_of
from .table import LensRow, LensTable, lens_heatmap
from .training import LensTrainingReport, fit_translators, lens_kl, record_residuals, train_tuned_lens
from .tuned_lens import TunedLens

__all__ = [
    "LensRow",
    "LensTable",
    "LensTrainingReport",
    "Readout",
    "TunedLens",
    "fit_translators",
    "lens_heatmap",
    "lens_kl",
    "logit_lens",
    "readout_of",
    "record_residuals",
    "target_id",
    "train_tuned_lens",
]
