"""Shared prefixes on torch (:mod:`mlx_steer.engine.shared_prefix`): the prefixes run once, left-padded
(padding masked, positions shifted), into a transformers ``DynamicCache``; each suffix forward gathers
the cache rows it continues into a fresh cache (the kept one is never written), with the prefix's
attention mask and position ids continuing from each row's own prefix length."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ...engine.layout import Layout
from ...engine.recording import Recorder
from .hooks import cache_keyword

if TYPE_CHECKING:
    from .backend import TorchBackend

__all__ = ["TorchPrefix", "forward_from", "run_prefix"]


@dataclass
class TorchPrefix:
    """The kept cache, its attention mask (P, Lp), and each prefix row's length and padding."""

    cache: Any
    mask: torch.Tensor
    lengths: np.ndarray
    padding: np.ndarray


def run_prefix(backend: TorchBackend, tokens: list[list[int]], *,
               prompt_lengths: np.ndarray | None = None) -> TorchPrefix:
    """Run the left-padded prefixes into a ``DynamicCache`` (the head on the last column only);
    ``prompt_lengths`` (default the prefixes') is where each row's prompt ends, for position
    selectors (a generation's prefix stops before its last token)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    from ...engine.shared_prefix import PrefixRefused

    model = backend.model
    x, pad, mask, pos = backend.left_padded(tokens)
    lengths = x.shape[1] - pad
    cache = DynamicCache(config=model.config)
    with torch.no_grad(), backend.state.laid_out(Layout(lengths if prompt_lengths is None else prompt_lengths, pad)):
        model(input_ids=x, attention_mask=mask, position_ids=pos,
              **{cache_keyword(model): cache}, use_cache=True, logits_to_keep=1)
    kinds = {type(layer).__name__ for layer in cache.layers if type(layer) is not DynamicLayer}
    if kinds:
        raise PrefixRefused(f"shared prefixes need plain dynamic cache layers; this model uses {', '.join(sorted(kinds))}")
    return TorchPrefix(cache, mask, lengths, pad)


def gathered(backend: TorchBackend, prefix: TorchPrefix, rows: np.ndarray) -> Any:
    """A fresh ``DynamicCache`` holding prefix rows ``rows`` (repeats allowed)."""
    from transformers import DynamicCache

    idx = torch.from_numpy(rows.astype(np.int64)).to(backend.device)
    out = DynamicCache(config=backend.model.config)
    for i, layer in enumerate(prefix.cache.layers):
        out.update(layer.keys.index_select(0, idx), layer.values.index_select(0, idx), i)
    return out


def forward_from(backend: TorchBackend, prefix: TorchPrefix, rows: np.ndarray, tokens: list[list[int]],
                 recorders: Mapping[str, Recorder], *, keys: np.ndarray, keep_logits: bool,
                 positions: np.ndarray | None) -> torch.Tensor | None:
    """One forward of equal-length suffixes, row ``i`` continuing prefix row ``rows[i]`` (row key
    ``keys[i]``); logits at ``positions`` ((N, k) absolute, indexed by row key) when ``keep_logits``."""
    model, device = backend.model, backend.device
    n, S = len(tokens), len(tokens[0])
    lp = prefix.lengths[rows]
    idx = torch.from_numpy(rows.astype(np.int64)).to(device)
    mask = torch.cat([prefix.mask.index_select(0, idx), torch.ones((n, S), dtype=prefix.mask.dtype, device=device)], 1)
    pos = torch.from_numpy(lp[:, None] + np.arange(S)[None]).to(device)
    at = positions[keys] - lp[:, None] if keep_logits and positions is not None else None  # suffix columns
    keep, result = backend.kept_logits(at, keep_logits=keep_logits)
    with torch.no_grad(), backend.state.laid_out(Layout([S] * n, prefix.padding[rows], rows=keys)):
        out = model(input_ids=torch.tensor(tokens, device=device), attention_mask=mask, position_ids=pos,
                    **{cache_keyword(model): gathered(backend, prefix, rows)}, use_cache=True, logits_to_keep=keep)
    return result(out.logits)
