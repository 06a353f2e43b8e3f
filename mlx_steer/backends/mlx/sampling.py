"""mlx-lm's sampler and logits processors for the sampling options every call takes."""

from __future__ import annotations

from typing import Any

import mlx.core as mx

from .seeded_sampler import SeededSampler

__all__ = ["batch_sampling", "left_padding", "make_sampling"]


def make_sampling(
    *, temp: float = 0.0, top_p: float = 0.0, min_p: float = 0.0, top_k: int = 0,
    repetition_penalty: float | None = None, repetition_context_size: int = 20,
    logits_processors: list | None = None, sampler: Any = None, seed: int | None = None, **rest: Any,
) -> tuple[Any, list, dict[str, Any]]:
    """mlx-lm's sampler and logits processors for the options (and the options left over)."""
    from mlx_lm.sample_utils import make_logits_processors, make_sampler

    if sampler is None and seed is not None and temp > 0:
        # its own key sequence: the same draws as after mx.random.seed(seed), batched or not
        sampler = SeededSampler(temp=temp, top_p=top_p, min_p=min_p, top_k=top_k, seed=seed)
    elif seed is not None:  # a sampler of the caller's (or greedy): seed the global generator it may use
        mx.random.seed(seed)
    sampler = sampler or make_sampler(temp=temp, top_p=top_p, min_p=min_p, top_k=top_k)
    processors = make_logits_processors(
        repetition_penalty=repetition_penalty, repetition_context_size=repetition_context_size
    ) + list(logits_processors or [])
    return sampler, processors, rest


def batch_sampling(**options: Any) -> tuple[Any, list]:
    """The sampler and logits processors of a batched generation (every option must be one it takes).

    Raises:
        ValueError: options a batched generation does not take, named.
    """
    sampler, processors, rest = make_sampling(**options)
    if rest:
        raise ValueError(f"unsupported option(s) for batch generation: {', '.join(sorted(rest))}")
    return sampler, processors


def left_padding(tokens: list[list[int]]) -> list[int]:
    """Each row's left padding in a batch of ``tokens`` (to the longest row)."""
    longest = max(len(t) for t in tokens)
    return [longest - len(t) for t in tokens]
