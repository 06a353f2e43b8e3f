"""Samplers and logits processors on torch tensors, with the semantics of ``mlx_lm.sample_utils``.

A sampler maps log-probabilities (1, V) to a token tensor (1,); a logits processor maps
``(tokens, logits)`` — every token seen so far (1-D) and (1, V) logits — to new logits.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

Sampler = Callable[[torch.Tensor], torch.Tensor]
LogitsProcessor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_NEG_INF = float("-inf")


def make_sampler(
    temp: float = 0.0, top_p: float = 0.0, min_p: float = 0.0, top_k: int = 0,
    *, min_tokens_to_keep: int = 1, generator: torch.Generator | None = None,
) -> Sampler:
    """Greedy when ``temp == 0``; else filters (top-p, min-p, top-k, in mlx-lm's order) and a draw."""
    if temp == 0:
        return greedy
    methods: list[Callable[[torch.Tensor], torch.Tensor]] = []
    if 0 < top_p < 1.0:
        methods.append(lambda x: apply_top_p(x, top_p))
    if min_p != 0.0:
        methods.append(lambda x: apply_min_p(x, min_p, min_tokens_to_keep))
    if top_k > 0:
        methods.append(lambda x: apply_top_k(x, top_k))

    def sampler(logprobs: torch.Tensor) -> torch.Tensor:
        for method in methods:
            logprobs = method(logprobs)
        probs = torch.softmax(logprobs.float() * (1.0 / temp), dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)

    return sampler


def greedy(logprobs: torch.Tensor) -> torch.Tensor:
    return torch.argmax(logprobs, dim=-1)


def apply_top_k(logprobs: torch.Tensor, top_k: int) -> torch.Tensor:
    """Keep the ``top_k`` most likely tokens."""
    V = logprobs.shape[-1]
    if not isinstance(top_k, int) or not 0 < top_k < V:
        raise ValueError(f"`top_k` has to be an integer in the (0, {V}) interval, but is {top_k}.")
    kth = torch.topk(logprobs, top_k, dim=-1).values[..., -1:]
    return logprobs.masked_fill(logprobs < kth, _NEG_INF)


def apply_min_p(logprobs: torch.Tensor, min_p: float, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """Drop tokens less likely than ``min_p`` times the most likely one."""
    if not 0 <= min_p <= 1.0:
        raise ValueError(f"`min_p` has to be a float in the [0, 1] interval, but is {min_p}")
    if not isinstance(min_tokens_to_keep, int) or min_tokens_to_keep < 1:
        raise ValueError(f"`min_tokens_to_keep` has to be a positive integer, but is {min_tokens_to_keep}")
    top = logprobs.max(dim=-1, keepdim=True).values
    remove = logprobs < top + math.log(min_p) if min_p > 0 else torch.zeros_like(logprobs, dtype=torch.bool)
    if min_tokens_to_keep > 1:
        idx = torch.topk(logprobs, min_tokens_to_keep, dim=-1).indices
        remove = remove.scatter(-1, idx, False)
    return logprobs.masked_fill(remove, _NEG_INF)


def apply_top_p(logprobs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of top tokens holding ``top_p`` of the mass."""
    sorted_lp = torch.sort(logprobs, dim=-1).values
    probs = torch.exp(sorted_lp.float())
    mass_above = torch.flip(torch.cumsum(torch.flip(probs, [-1]), -1), [-1]) - probs  # exclusive
    total = mass_above[..., :1] + probs[..., :1]
    dropped = (mass_above >= top_p * total).sum(dim=-1, keepdim=True)
    threshold = torch.gather(sorted_lp, -1, dropped)
    return logprobs.masked_fill(logprobs < threshold, _NEG_INF)


def make_repetition_penalty(penalty: float, context_size: int = 20) -> LogitsProcessor:
    """Sign-aware multiplicative penalty on the last ``context_size`` tokens (CTRL)."""
    if not isinstance(penalty, (int, float)) or penalty < 0:
        raise ValueError(f"penalty must be a non-negative float, got {penalty}")

    def processor(tokens: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if len(tokens) > 0:
            tokens = tokens[-context_size:]
            sel = logits[:, tokens]
            logits = logits.clone()
            logits[:, tokens] = torch.where(sel < 0, sel * penalty, sel / penalty)
        return logits

    return processor


def make_logits_processors(
    repetition_penalty: float | None = None, repetition_context_size: int = 20
) -> list[LogitsProcessor]:
    if repetition_penalty is not None and repetition_penalty != 0:
        return [make_repetition_penalty(repetition_penalty, repetition_context_size)]
    return []
