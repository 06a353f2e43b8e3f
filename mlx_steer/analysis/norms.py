"""How large a direction is next to the residual stream it is added to."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from ..vectors import similarity
from .vector_inputs import batches, directions, is_vector_set, pick, prompt_list, site_key, vector_hook_point

if TYPE_CHECKING:
    from ..engine.paths import Site
    from ..engine.model import Steerable


class NormRow(NamedTuple):
    """One site of :func:`norm_profile`."""

    site: str
    vector_norm: float
    mean_residual_norm: float
    ratio: float  # vector_norm / mean_residual_norm


def norm_profile(
    model: Steerable, vector: object, prompts: str | Sequence[str], *, batch_size: int = 16,
    chat: bool = False,
) -> list[NormRow]:
    """Each direction's norm next to the mean residual norm at its site on ``prompts``.

    The mean is over every real token of every prompt, so a strength can be given relative to
    the stream it is added to (see :func:`relative_scale`).

    Raises:
        ValueError: ``vector`` is not a SteeringVector, or no prompts.
    """
    if not is_vector_set(vector):
        raise ValueError(f"norm_profile takes a SteeringVector, got {type(vector).__name__}")
    point = vector_hook_point(vector)
    dirs = {site_key(model, path, point): d for path, d in directions(model, vector).items()}
    means = _mean_norms(model, list(dirs), prompt_list(prompts), batch_size, chat)
    norms = {k: float(np.linalg.norm(np.asarray(d, dtype=np.float64))) for k, d in dirs.items()}
    ratios = similarity.norm_ratios(norms, means)
    return [NormRow(k, norms[k], means[k], ratios[k]) for k in dirs]


def relative_scale(
    model: Steerable, site: str | Site, vector: object, prompts: str | Sequence[str], fraction: float,
    *, batch_size: int = 16, chat: bool = False,
) -> float:
    """The scale ``s`` with ``s * |v| = fraction * mean residual norm`` at ``site`` on ``prompts``."""
    key, d = pick(model, vector, site)
    key = key or site_key(model, site)
    mean = _mean_norms(model, [key], prompt_list(prompts), batch_size, chat)[key]
    return float(fraction) * mean / float(np.linalg.norm(d.astype(np.float64)))


def _mean_norms(
    model: Steerable, keys: list[str], prompts: list, batch_size: int, chat: bool
) -> dict[str, float]:
    """Mean L2 norm of each site's activation over every real (unpadded) token of ``prompts``."""
    total = {k: 0.0 for k in keys}
    count = 0
    for chunk in batches(prompts, batch_size):
        tr = model.run(chunk, record=keys, record_positions="all", logits=False, chat=chat)
        real = None
        for k in keys:
            norms = np.linalg.norm(model.to_numpy(tr.activations[k]).astype(np.float64), axis=-1)
            real = np.arange(norms.shape[1])[None, :] >= np.asarray(tr.padding)[:, None]
            total[k] += float(norms[real].sum())
        count += int(real.sum()) if real is not None else 0
    return {k: total[k] / count for k in keys}
