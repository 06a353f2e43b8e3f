"""Shared prefixes on torch (:mod:`mlx_steer.engine.shared_prefix`): the prefixes run once, left-padded
(padding masked, positions shifted), into a transformers ``DynamicCache``; each suffix forward reads
the cache rows it continues, with the prefix's attention mask and position ids continuing from each
row's own prefix length. The kept cache is never written: each layer of a suffix forward gathers its
rows (one copy, from the prefix padded once per suffix length with room for the suffix) when the layer
runs and keeps nothing, so a forward holds one layer's gathered rows at a time, not every layer's."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
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
    """The kept cache, its attention mask (P, Lp), each prefix row's length and padding, and per suffix
    length ``S`` each layer's keys and values with ``S`` empty columns after the prefix (made on first use)."""

    cache: Any
    mask: torch.Tensor
    lengths: np.ndarray
    padding: np.ndarray
    roomy: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = field(default_factory=dict)

    def with_room(self, S: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each layer's (P, heads, Lp + S, head dim) keys and values, the last ``S`` columns zero."""
        if S not in self.roomy:
            def pad(x: torch.Tensor) -> torch.Tensor:
                return torch.cat([x, x.new_zeros(*x.shape[:-2], S, x.shape[-1])], dim=-2)

            self.roomy[S] = [(pad(layer.keys), pad(layer.values)) for layer in self.cache.layers]
        return self.roomy[S]


@functools.cache
def _gathering_layer() -> type:
    """A ``DynamicLayer`` whose ``update`` returns prefix rows followed by the new keys and values, keeping neither."""
    from transformers.cache_utils import DynamicLayer

    class GatheringLayer(DynamicLayer):
        def __init__(self, keys: torch.Tensor, values: torch.Tensor, idx: torch.Tensor, prefix_len: int):
            super().__init__()
            self.source, self.idx, self.prefix_len = (keys, values), idx, prefix_len
            self.keys = self.values = keys  # only read for dtype/device/length checks
            self.is_initialized, self.device = True, keys.device

        def get_seq_length(self) -> int:
            return self.prefix_len

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
                   ) -> tuple[torch.Tensor, torch.Tensor]:
            out = []
            for source, new in zip(self.source, (key_states, value_states)):
                rows = source.index_select(0, self.idx)  # one copy: (n, heads, Lp + S, head dim)
                rows[..., self.prefix_len:, :] = new
                out.append(rows)
            return out[0], out[1]

    return GatheringLayer


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


def gathered(backend: TorchBackend, prefix: TorchPrefix, rows: np.ndarray, suffix_len: int) -> Any:
    """A ``DynamicCache`` reading prefix rows ``rows`` (repeats allowed) for one forward of
    ``suffix_len`` tokens: each layer gathers its rows when it runs and keeps nothing."""
    from transformers import DynamicCache

    idx = torch.from_numpy(rows.astype(np.int64)).to(backend.device)
    layer_type = _gathering_layer()
    out = DynamicCache(config=backend.model.config)
    Lp = prefix.mask.shape[1]
    out.layers = [layer_type(k, v, idx, Lp) for k, v in prefix.with_room(suffix_len)]
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
                    **{cache_keyword(model): gathered(backend, prefix, rows, S)}, use_cache=True, logits_to_keep=keep)
    return result(out.logits)
