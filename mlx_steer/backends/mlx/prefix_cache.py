"""Shared prefixes on MLX (:mod:`mlx_steer.engine.shared_prefix`): the prefixes run once, left-padded,
into mlx-lm ``BatchKVCache`` s; each suffix forward reads the cache rows it continues, each layer
gathering them when it runs (the kept cache is never written, nothing gathered is kept), so each
row's rotary offset, padding mask and absolute positions (the position tracker reads the per-row
cache offset) are those of its own prefix."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import mlx.core as mx
import numpy as np

from ...engine.layout import Layout
from ...engine.recording import Recorder
from .logit_cut import cut_at_norm, logits_at

if TYPE_CHECKING:
    from .backend import MLXBackend

__all__ = ["MLXPrefix", "forward_from", "run_prefix"]


@dataclass
class MLXPrefix:
    """The kept caches (one ``BatchKVCache`` per layer) and each prefix row's length and padding."""

    cache: list
    lengths: np.ndarray
    padding: np.ndarray


def run_prefix(backend: MLXBackend, tokens: list[list[int]], *, prompt_lengths: np.ndarray | None = None) -> MLXPrefix:
    """Run the left-padded prefixes into batch caches (logits not computed beyond the last layer's
    need: the head runs on one column); ``prompt_lengths`` (default the prefixes') is where each
    row's prompt ends, for position selectors (a generation's prefix stops before its last token)."""
    from mlx_lm.models import cache as C

    from ...engine.shared_prefix import PrefixRefused

    lengths = np.array([len(t) for t in tokens], dtype=np.int64)
    pad = (lengths.max() - lengths).tolist()
    if any(pad) and not backend._batch_padding_works(pad):
        raise PrefixRefused("this model's left-padded batches are not exact; shared prefixes need them")
    try:
        cache = backend._batch_cache(pad)
    except ValueError as exc:
        raise PrefixRefused(str(exc)) from exc
    if any(type(c) is not C.BatchKVCache for c in cache):
        kinds = sorted({type(c).__name__ for c in cache})
        raise PrefixRefused(f"shared prefixes need plain batch KV caches; this model uses {', '.join(kinds)}")
    x = mx.array([[backend.prompts.pad_id] * p + t for p, t in zip(pad, tokens)])
    last = np.zeros((len(tokens), 1), dtype=np.int64) + lengths[:, None] - 1
    cut = cut_at_norm(backend, last)  # the head on one position per row: its logits are not used
    try:
        with backend.state.laid_out(Layout(lengths if prompt_lengths is None else prompt_lengths, pad)):
            backend.model(x, cache=cache)
    finally:
        if cut is not None:
            cut()
    mx.eval([a for c in cache for a in (c.keys, c.values, c.offset, c.left_padding)])
    return MLXPrefix(cache, lengths, np.asarray(pad, dtype=np.int64))


def gathered(prefix: MLXPrefix, rows: np.ndarray) -> list:
    """Per layer, a batch cache reading prefix rows ``rows`` (repeats allowed) for one forward: its
    ``update_and_fetch`` returns those rows followed by the new keys and values and keeps neither, so
    a forward holds one layer's gathered rows at a time, not every layer's."""
    idx = mx.array(rows.astype(np.int32))
    cache_type = _gathering_cache()
    return [cache_type(c, idx) for c in prefix.cache]


@functools.cache
def _gathering_cache() -> type:
    from mlx_lm.models import cache as C

    class GatheringCache(C.BatchKVCache):
        def __init__(self, source: C.BatchKVCache, idx: mx.array):
            super().__init__(left_padding=[0] * idx.size)
            self.source, self.idx = source, idx
            self.offset, self.left_padding, self._idx = source.offset[idx], source.left_padding[idx], source._idx

        def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
            n, kept_keys, kept_values = self.source._idx, self.source.keys, self.source.values
            assert kept_keys is not None and kept_values is not None  # the prefix ran
            out = tuple(mx.concatenate([kept[self.idx, :, :n], new], axis=2)
                        for kept, new in ((kept_keys, keys), (kept_values, values)))
            self.offset = self.offset + keys.shape[2]
            self._idx += keys.shape[2]
            return out[0], out[1]

    return GatheringCache


def forward_from(backend: MLXBackend, prefix: MLXPrefix, rows: np.ndarray, tokens: list[list[int]],
                 recorders: Mapping[str, Recorder], *, keys: np.ndarray, keep_logits: bool,
                 positions: np.ndarray | None) -> mx.array | None:
    """One forward of equal-length suffixes, row ``i`` continuing prefix row ``rows[i]`` (row key
    ``keys[i]``); logits at ``positions`` ((N, k) absolute, indexed by row key) when ``keep_logits``."""
    cache = gathered(prefix, rows)
    lp = prefix.lengths[rows]
    x = mx.array(tokens)

    def run() -> mx.array:
        with backend.state.laid_out(Layout([len(t) for t in tokens], prefix.padding[rows], rows=keys)):
            return backend.model(x, cache=cache)

    logits = logits_at(backend, positions if keep_logits else None, run, lambda at: at[keys] - lp[:, None])
    results = [a for a in (r.result() for r in recorders.values()) if a is not None]
    mx.eval(results + ([logits] if keep_logits else []))
    return logits if keep_logits else None
