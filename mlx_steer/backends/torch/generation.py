"""A KV-cached token loop over a Hugging Face causal LM, step for step like mlx-lm's ``generate_step``.

The prompt except its last token is prefilled in chunks of ``prefill_step_size``, then the last
prompt token runs alone, then one token per step; the next step is computed before the current
token is yielded (as mlx-lm does), so both backends run the same forwards and recorders see the
same positions. No ``torch.compile`` and no ``GenerationMixin.generate``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ...engine.model import RowStep
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
    logits_processors: list[LogitsProcessor], prefill_step_size: int = 2048, prompt_cache: Any = None,
    logits_to_keep: Callable[[int], int] = lambda n: n,
) -> Generator[tuple[int, torch.Tensor], None, None]:
    """Yield ``(token, logprobs)`` pairs; each forward runs under ``torch.no_grad``. A
    ``prompt_cache`` (a ``DynamicCache`` of earlier turns) is continued and updated in place."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    cache = DynamicCache(config=model.config) if prompt_cache is None else prompt_cache
    cache_kw = cache_keyword(model)
    rest = torch.tensor(list(prompt), dtype=torch.long, device=device)
    seen: torch.Tensor | None = None

    @torch.no_grad()  # per call, not around the loop: grad mode must not leak to the consumer
    def forward(ids: torch.Tensor) -> torch.Tensor:
        out = model(input_ids=ids[None], **{cache_kw: cache}, use_cache=True, logits_to_keep=logits_to_keep(1))
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


class PaddedBatch:
    """Left-padded rows sharing one KV cache (padding masked, positions shifted, so each row
    computes what it computes alone): :meth:`prefill` the prompts, then :meth:`step` one token
    per row. Each returns the (B, V) logits of every row's last position. A ``cache`` already
    holding the first columns of the padded prompts (e.g. all but the last, from shared prefixes)
    is continued: :meth:`prefill` runs only the columns after it."""

    def __init__(self, model: Any, prompts: Sequence[Sequence[int]], *, pad_id: int, prefill_step_size: int,
                 logits_to_keep: Callable[[int], int] = lambda n: n, cache: Any = None):
        from transformers import DynamicCache

        self.model, self.prefill_step_size, self.logits_to_keep = model, prefill_step_size, logits_to_keep
        self.device = device = next(model.parameters()).device
        self.B, L = len(prompts), max(len(p) for p in prompts)
        pad = np.array([L - len(p) for p in prompts], dtype=np.int64)
        self.ids = torch.tensor([[pad_id] * int(n) + list(p) for n, p in zip(pad, prompts)], device=device)
        cols = np.arange(L)[None] - pad[:, None]
        self.attn = torch.from_numpy((cols >= 0).astype(np.int64)).to(device)
        self.pos = torch.from_numpy(np.maximum(cols, 0)).to(device)
        self.next_pos = torch.from_numpy(cols[:, -1] + 1).to(device)
        self.cache = DynamicCache(config=model.config) if cache is None else cache
        self.cache_kw = cache_keyword(model)
        self.sampling = False  # whether the forward running now is one whose logits are sampled

    @torch.no_grad()  # per call, not around a loop: grad mode must not leak to the consumer
    def _forward(self, x: torch.Tensor, upto: int, at: torch.Tensor, *, sampled: bool = True) -> torch.Tensor:
        self.sampling = sampled
        out = self.model(input_ids=x, attention_mask=self.attn[:, :upto], position_ids=at,
                         **{self.cache_kw: self.cache}, use_cache=True, logits_to_keep=self.logits_to_keep(1))
        return out.logits[:, -1, :]

    def prefill(self) -> torch.Tensor:
        """Run the prompts (all but the last column in chunks, then the last column alone)."""
        L, start = self.ids.shape[1], int(self.cache.get_seq_length())
        while start < L - 1:
            n = min(self.prefill_step_size, L - 1 - start)
            self._forward(self.ids[:, start : start + n], start + n, self.pos[:, start : start + n], sampled=False)
            start += n
        return self._forward(self.ids[:, L - 1 :], L, self.pos[:, L - 1 :])

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append one token per row (B,) and run it."""
        self.attn = torch.cat([self.attn, torch.ones((self.B, 1), dtype=self.attn.dtype, device=self.device)], dim=1)
        logits = self._forward(tokens.reshape(self.B, 1), self.attn.shape[1], self.next_pos[:, None])
        self.next_pos = self.next_pos + 1
        return logits


def log_probs(logits: torch.Tensor, processors: Sequence[Sequence[LogitsProcessor]],
              contexts: Sequence[torch.Tensor]) -> torch.Tensor:
    """float32 (B, V) log-probabilities after each row's logits processors (given its tokens)."""
    if any(processors):
        rows = []
        for b, procs in enumerate(processors):
            row = logits[b : b + 1]
            for processor in procs:
                row = processor(contexts[b], row)
            rows.append(row)
        logits = torch.cat(rows)
    logits = logits.float()
    return logits - torch.logsumexp(logits, dim=-1, keepdim=True)


def generate_rows(
    model: Any, prompts: Sequence[Sequence[int]], *, max_tokens: int, sampler: Sampler,
    logits_processors: list[LogitsProcessor], prefill_step_size: int, pad_id: int, eos: Collection[int],
    logits_to_keep: Callable[[int], int] = lambda n: n, cache: Any = None,
) -> Iterator[RowStep]:
    """Generate for every prompt in one :class:`PaddedBatch` (continuing ``cache``, see there); yields
    each row's tokens, EOS included with ``finish_reason="stop"``. Finished rows keep decoding until
    every row is done (their tokens unused)."""
    batch = PaddedBatch(model, prompts, pad_id=pad_id, prefill_step_size=prefill_step_size,
                        logits_to_keep=logits_to_keep, cache=cache)
    contexts = [torch.tensor(list(p), dtype=torch.long, device=batch.device) for p in prompts]
    done = [False] * batch.B
    logits = batch.prefill()
    for step in range(1, max_tokens + 1):
        y = sampler(log_probs(logits, [logits_processors] * batch.B, contexts)).reshape(batch.B)
        for b, token in enumerate(y.tolist()):
            if done[b]:
                continue
            reason = "stop" if token in eos else "length" if step == max_tokens else None
            done[b] = reason is not None
            yield RowStep(b, int(token), reason)
        if all(done):
            return
        if logits_processors:
            contexts = [torch.cat([c, y[b : b + 1]]) for b, c in enumerate(contexts)]
        logits = batch.step(y)


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
