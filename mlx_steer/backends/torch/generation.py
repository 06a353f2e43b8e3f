"""A KV-cached token loop over a Hugging Face causal LM, step for step like mlx-lm's ``generate_step``.

The prompt except its last token is prefilled in chunks of ``prefill_step_size``, then the last
prompt token runs alone, then one token per step; the next step is computed before the current
token is yielded (as mlx-lm does), so both backends run the same forwards and recorders see the
same positions. No ``torch.compile`` and no ``GenerationMixin.generate``.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ...steerable import RowStep
from .hooks import cache_keyword
from .sampling import LogitsProcessor, Sampler


@dataclass
class GenerationResponse:
    """One streamed step (the fields of mlx-lm's ``GenerationResponse`` that mean something here).

    Attributes:
        text: The next segment of decoded text (may be empty).
        token: The token id.
        logprobs: (V,) log-probabilities the token was sampled from.
        prompt_tokens: Prompt length.
        generation_tokens: Tokens generated so far.
        finish_reason: ``None``, ``"length"`` or ``"stop"`` (``token`` is then the EOS).
    """

    text: str
    token: int
    logprobs: torch.Tensor
    prompt_tokens: int
    generation_tokens: int
    finish_reason: str | None = None


def generate_step(
    model: Any, prompt: Sequence[int], *, max_tokens: int, sampler: Sampler,
    logits_processors: list[LogitsProcessor], prefill_step_size: int = 2048,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(token, logprobs)`` pairs; each forward runs under ``torch.no_grad``."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    cache = DynamicCache(config=model.config)
    cache_kw = cache_keyword(model)
    rest = torch.tensor(list(prompt), dtype=torch.long, device=device)
    seen: torch.Tensor | None = None

    @torch.no_grad()  # per call, not around the loop: grad mode must not leak to the consumer
    def forward(ids: torch.Tensor) -> torch.Tensor:
        out = model(input_ids=ids[None], **{cache_kw: cache}, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1, :]

    @torch.no_grad()
    def step(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal seen
        logits = forward(ids)
        if logits_processors:
            seen = ids if seen is None else torch.cat([seen, ids])
            for processor in logits_processors:
                logits = processor(seen, logits)
        logits = logits.float()
        logprobs = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
        return sampler(logprobs).reshape(1), logprobs.squeeze(0)

    while rest.numel() > 1:
        n = min(prefill_step_size, rest.numel() - 1)
        forward(rest[:n])
        if logits_processors:
            seen = rest[:n] if seen is None else torch.cat([seen, rest[:n]])
        rest = rest[n:]
    y, logprobs = step(rest)
    n = 0
    while True:
        if n != max_tokens:
            next_y, next_logprobs = step(y)
        if n == max_tokens:
            break
        yield int(y.item()), logprobs
        y, logprobs = next_y, next_logprobs
        n += 1


def generate_rows(
    model: Any, prompts: Sequence[Sequence[int]], *, max_tokens: int, sampler: Sampler,
    logits_processors: list[LogitsProcessor], prefill_step_size: int, pad_id: int, eos: Collection[int],
) -> Iterator[RowStep]:
    """Generate for every prompt in one left-padded batch (padding masked, positions shifted, so
    each row computes what it computes alone); yields each row's tokens, EOS included with
    ``finish_reason="stop"``. Finished rows keep decoding until every row is done (unused)."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    B, L = len(prompts), max(len(p) for p in prompts)
    pad = np.array([L - len(p) for p in prompts], dtype=np.int64)
    ids = torch.tensor([[pad_id] * int(n) + list(p) for n, p in zip(pad, prompts)], device=device)
    cols = np.arange(L)[None] - pad[:, None]
    attn = torch.from_numpy((cols >= 0).astype(np.int64)).to(device)
    pos = torch.from_numpy(np.maximum(cols, 0)).to(device)
    cache, cache_kw = DynamicCache(config=model.config), cache_keyword(model)
    contexts = [torch.tensor(list(p), dtype=torch.long, device=device) for p in prompts]

    @torch.no_grad()  # per call, not around the loop: grad mode must not leak to the consumer
    def forward(x: torch.Tensor, upto: int, at: torch.Tensor) -> torch.Tensor:
        out = model(input_ids=x, attention_mask=attn[:, :upto], position_ids=at, **{cache_kw: cache},
                    use_cache=True, logits_to_keep=1)
        return out.logits[:, -1, :]

    start = 0
    while start < L - 1:  # the prompt but its last token, in chunks
        n = min(prefill_step_size, L - 1 - start)
        forward(ids[:, start : start + n], start + n, pos[:, start : start + n])
        start += n
    logits = forward(ids[:, L - 1 :], L, pos[:, L - 1 :])
    done = [False] * B
    next_pos = torch.from_numpy(cols[:, -1] + 1).to(device)
    for step in range(1, max_tokens + 1):
        if logits_processors:
            rows = []
            for b in range(B):
                row = logits[b : b + 1]
                for processor in logits_processors:
                    row = processor(contexts[b], row)
                rows.append(row)
            logits = torch.cat(rows)
        logits = logits.float()
        y = sampler(logits - torch.logsumexp(logits, dim=-1, keepdim=True)).reshape(B)
        for b, token in enumerate(y.tolist()):
            if done[b]:
                continue
            reason = "stop" if token in eos else "length" if step == max_tokens else None
            done[b] = reason is not None
            yield RowStep(b, int(token), reason)
        if all(done):
            return
        contexts = [torch.cat([c, y[b : b + 1]]) for b, c in enumerate(contexts)]
        attn = torch.cat([attn, torch.ones((B, 1), dtype=attn.dtype, device=device)], dim=1)
        logits = forward(y[:, None], attn.shape[1], next_pos[:, None])
        next_pos = next_pos + 1


class StreamingDetokenizer:
    """Text of generated tokens, segment by segment (holds back incomplete UTF-8 characters).

    Decodes the tokens since the last newline on each step, like mlx-lm's naive detokenizer.
    """

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self._done, self._emitted = "", 0
        self._current: list[int] = []

    def add_token(self, token: int) -> None:
        self._current.append(token)

    def _text(self, final: bool) -> str:
        cur = self.tokenizer.decode(self._current) if self._current else ""
        if not final and cur.endswith("\ufffd"):
            cur = cur.rstrip("\ufffd")
        if cur.endswith("\n") or final:
            self._done, self._current, cur = self._done + cur, [], ""
        return self._done + cur

    def segment(self, *, final: bool = False) -> str:
        text = self._text(final)
        seg, self._emitted = text[self._emitted :], max(self._emitted, len(text))
        return seg


def eos_token_ids(model: Any, tokenizer: Any) -> set[int]:
    """EOS ids from the tokenizer, the generation config and the model config."""
    ids: set[int] = set()
    for source in (tokenizer, getattr(model, "generation_config", None), getattr(model, "config", None)):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids
