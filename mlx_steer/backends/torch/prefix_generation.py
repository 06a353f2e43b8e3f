"""Batch generation from shared prefixes on torch (:mod:`mlx_steer.engine.prefix_generation`): the
rows' prefix rows (each prompt but its last token, see :mod:`.prefix_cache`) are gathered into a
fresh ``DynamicCache`` cut to the batch's own width, so the batch is laid out exactly as the full
run's left-padded batch after its prefill; the :class:`~.generation.PaddedBatch` then runs only the
last prompt column and decodes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ...engine.layout import Layout
from ...engine.results import RowStep
from .generation import generate_rows

if TYPE_CHECKING:
    from .backend import TorchBackend
    from .prefix_cache import TorchPrefix

__all__ = ["generate_rows_from"]


def generate_rows_from(backend: TorchBackend, prefix: TorchPrefix, rows: np.ndarray, tokens: list[list[int]], *,
                       max_tokens: int, prefill_step_size: int = 2048, **options: Any) -> Iterator[RowStep]:
    """Row ``i`` generates after ``tokens[i]`` (its whole prompt), continuing prefix row ``rows[i]``
    (which holds ``tokens[i][:-1]``); row keys are row indices.

    Raises:
        ValueError: unsupported options.
    """
    from transformers import DynamicCache

    sampler, processors = backend.sampling(**options)
    lengths = np.array([len(t) for t in tokens], dtype=np.int64)
    pad = lengths.max() - lengths
    cut = prefix.mask.shape[1] - int(lengths.max() - 1)  # columns that are padding in every row here
    idx = torch.from_numpy(rows.astype(np.int64)).to(backend.device)
    cache = DynamicCache(config=backend.model.config)
    for i, layer in enumerate(prefix.cache.layers):  # copies: the kept cache is never written
        cache.update(layer.keys.index_select(0, idx)[:, :, cut:], layer.values.index_select(0, idx)[:, :, cut:], i)
    layout = Layout(lengths, pad)
    layout.start = np.zeros(len(tokens), dtype=np.int64)  # the prompts start at 0, not where this call's forwards do
    with backend.state.laid_out(layout):
        yield from generate_rows(backend.model, tokens, max_tokens=max_tokens, sampler=sampler,
                                 logits_processors=processors, prefill_step_size=prefill_step_size,
                                 pad_id=backend.prompts.pad_id, eos=backend.eos_token_ids,
                                 logits_to_keep=backend._logits_to_keep, cache=cache)
