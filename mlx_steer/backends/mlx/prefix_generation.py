"""Batch generation from shared prefixes on MLX (:mod:`mlx_steer.engine.prefix_generation`): each
row's KV cache is its prompt's kept prefix row (the prompt but its last token, see
:mod:`.prefix_cache`), taken out as an mlx-lm ``KVCache`` and handed to mlx-lm's ``BatchGenerator``
(which merges the rows into one left-padded batch cache); the row then starts from its last prompt
token, as the full run's rows do after their prefill."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from ...engine.results import RowStep
from .batch_loop import generate_rows
from .sampling import batch_sampling, left_padding

if TYPE_CHECKING:
    from .backend import MLXBackend
    from .prefix_cache import MLXPrefix

__all__ = ["generate_rows_from"]


def generate_rows_from(backend: MLXBackend, prefix: MLXPrefix, rows: np.ndarray, tokens: list[list[int]], *,
                       max_tokens: int, prefill_step_size: int = 2048, **options: Any) -> Iterator[RowStep]:
    """Row ``i`` generates after ``tokens[i]`` (its whole prompt), continuing prefix row ``rows[i]``
    (which holds ``tokens[i][:-1]``); row keys are row indices.

    Raises:
        PrefixRefused: this model's left-padded batches of this size are not exact (the full
            path runs such rows one at a time).
        ValueError: unsupported options.
    """
    from ...engine.shared_prefix import PrefixRefused

    sampler, processors = batch_sampling(**options)
    pad = left_padding(tokens)
    if len(tokens) > 1 and any(pad) and not backend._batch_padding_works(pad):
        raise PrefixRefused("this model's left-padded batches are not exact; generation from shared prefixes needs them")
    kept = {r: [c.extract(r) for c in prefix.cache] for r in sorted(set(rows.tolist()))}  # read, never written
    yield from generate_rows(backend.model, backend.state, tokens, max_tokens=max_tokens, sampler=sampler,
                             processors=processors, prefill_step_size=prefill_step_size,
                             stop_tokens=sorted(backend.eos_token_ids), caches=[kept[r] for r in rows.tolist()])
