"""SeededSampler: mlx-lm's sampling with a random key sequence of its own.

mlx-lm's samplers draw from MLX's one global key, so when several sampled sequences share a batch
their draws interleave and a seed cannot make one of them reproducible. This sampler keeps its own
key and splits it per draw exactly as the global generator splits its key after ``mx.random.seed``
(the new key is the split's first half, the draw uses the second), so a seeded sequence draws the
same tokens alone (what ``generate(seed=...)`` always gave) or batched beside others.
"""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx

__all__ = ["SeededSampler"]


class SeededSampler:
    """Filters log-probabilities as ``mlx_lm.sample_utils.make_sampler`` does (top-p, min-p,
    top-k, in its order), then draws at temperature ``temp`` with the next key of ``seed``'s sequence.

    Args:
        temp: Sampling temperature, > 0.
        top_p, min_p, top_k: As for ``make_sampler`` (0 = off).
        seed: Seeds this sampler's key sequence.
    """

    def __init__(self, *, temp: float, top_p: float = 0.0, min_p: float = 0.0, top_k: int = 0, seed: int):
        from mlx_lm.sample_utils import apply_min_p, apply_top_k, apply_top_p

        if not temp > 0:
            raise ValueError(f"SeededSampler samples at a temperature > 0, got {temp!r} (greedy needs no seed)")
        self.temp = float(temp)
        self._filters: list[Callable[[mx.array], mx.array]] = []
        if 0 < top_p < 1.0:
            self._filters.append(lambda x: apply_top_p(x, top_p))
        if min_p != 0.0:
            self._filters.append(lambda x: apply_min_p(x, min_p, 1))
        if top_k > 0:
            self._filters.append(lambda x: apply_top_k(x, top_k))
        self._key = mx.random.key(seed)

    def __call__(self, logprobs: mx.array) -> mx.array:
        for keep in self._filters:
            logprobs = keep(logprobs)
        keys = mx.random.split(self._key)
        self._key, draw = keys[0], keys[1]
        return mx.random.categorical(logprobs * (1.0 / self.temp), key=draw)
