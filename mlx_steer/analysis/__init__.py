"""Analysis of steering directions, for either backend: what a direction writes to the vocabulary
(:mod:`~mlx_steer.analysis.vocabulary_lens`), how large it is next to the residual stream
(:mod:`~mlx_steer.analysis.norms`), what a generation reads along it and how long steering lasts
once released (:mod:`~mlx_steer.analysis.monitor`), split by span (:mod:`~mlx_steer.analysis.phases`),
repetition loops (:mod:`~mlx_steer.analysis.loops`), and a layer x strength sweep of effect against
fluency cost (:mod:`~mlx_steer.analysis.sweeps`), and where a steering condition should cut
(:mod:`~mlx_steer.analysis.thresholds`), and each vector's coefficient at a KL budget
(:mod:`~mlx_steer.analysis.kl_calibration`).

Everything here is numpy over a model's public API (:class:`~mlx_steer.engine.model.Steerable`, the API both backends share:
``run``, ``stream_generate``, ``unembed``, ``encode``, ``resolve``...), so the same code serves
``mlx_steer.SteerableModel`` and the torch backend's ``TorchSteerableModel``.

    from mlx_steer import analysis as an
    an.top_tokens(model, vector, site="layers.6").to_text()
    an.sweep(model, vector=vector, layers=[4, 6, 8], strengths=[0, 2, 4], prompts=neutral,
             target_tokens=["love"], contrast_tokens=["hate"]).to_text()
"""

from .kl_calibration import NEUTRAL_PROMPTS, calibrate, kl_at
from .loops import Loop, find_loops, label_loops, text_loops
from .monitor import MonitoredGeneration, Persistence, persistence_run, projection_monitor
from .norms import NormRow, norm_profile, relative_scale
from .phases import generation_loops, span_masks, span_means
from .sweeps import METRICS, SweepResult, SweepRow, sweep
from .thresholds import ThresholdRow, ThresholdSearch, condition_values, find_threshold
from .vocabulary_lens import TokenReport, top_tokens

__all__ = [
    "Loop",
    "METRICS",
    "NEUTRAL_PROMPTS",
    "MonitoredGeneration",
    "NormRow",
    "Persistence",
    "SweepResult",
    "SweepRow",
    "ThresholdRow",
    "ThresholdSearch",
    "TokenReport",
    "calibrate",
    "condition_values",
    "find_loops",
    "find_threshold",
    "generation_loops",
    "kl_at",
    "label_loops",
    "norm_profile",
    "persistence_run",
    "projection_monitor",
    "relative_scale",
    "span_masks",
    "span_means",
    "sweep",
    "text_loops",
    "top_tokens",
]
