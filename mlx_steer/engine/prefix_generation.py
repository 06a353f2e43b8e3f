"""Batched generation from shared prompt prefixes: each distinct prompt's tokens but the last run
once (one left-padded prefill for every prompt, unsteered), and every row of a later batch starts
from a copy of its prompt's cache, its last prompt token the first input, so rows that share a
prompt but differ in steering (evaluation cells) pay for the prompt once.

A row's tokens are those :meth:`~mlx_steer.engine.model.Steerable.batch_generate` gives it (greedy
tokens identical; a seeded sampler draws the same tokens where the rows' log-probabilities agree,
and they agree to float rounding), provided its steering acts only on the last prompt position and
the generated tokens (``last``, ``generated``, ``first_generated(n)``, indices from the last prompt
position on): positions are absolute and the prompt lengths are the whole prompts', exactly as in
the full run. Steering that would touch an earlier position (``all``, ``prompt``, ``last_n(n > 1)``,
front-aligned tensors, gates, which read the whole prompt) is refused with
:class:`~mlx_steer.engine.shared_prefix.PrefixRefused` before anything runs: fall back to
``batch_generate``. The kept caches cost one prompt's KV cache per distinct prompt.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from .hooks import Hooks
from .limits import check_loop
from .plan import check_plans
from .results import BatchResult, RowStep
from .shared_prefix import PrefixRefused, backend_module, prefix_runner, refuse_prefix_positions

if TYPE_CHECKING:
    from .model import Steerable
    from .plan import SitePlan

__all__ = ["PrefixGenerator", "PromptPrefixes", "refuse_prompt_positions"]


class PrefixGenerator(Protocol):
    """What a backend offers for generation from shared prefixes: a ``prefix_generation`` module
    beside its backend class with this function (its prefixes come from its ``prefix_cache``)."""

    def generate_rows_from(self, backend: Any, prefix: Any, rows: np.ndarray, tokens: list[list[int]], *,
                           max_tokens: int, **options: Any) -> Iterator[RowStep]:
        """Row ``i`` generates after ``tokens[i]``, continuing prefix row ``rows[i]`` (``tokens[i][:-1]``)."""
        ...


def prefix_generator(backend: object) -> PrefixGenerator:
    """The ``prefix_generation`` module of ``backend``'s package.

    Raises:
        PrefixRefused: the backend has none.
    """
    return backend_module(backend, "prefix_generation", "generate from shared prefixes")


class PromptPrefixes:
    """Prompts whose tokens but the last ran once, their KV caches kept for :meth:`batch_generate`.

    Args:
        model: The model.
        prompts: Token-id lists, each of at least 2 tokens.

    Raises:
        PrefixRefused: a model split over ranks, hooks installed around the call (they would act
            on each prompt once, not once per row), a one-token prompt, a backend or cache that
            cannot be shared.
        ValueError: empty or bad prompts.
    """

    def __init__(self, model: Steerable, prompts: Sequence[Sequence[int]]):
        if isinstance(prompts, str) or not prompts or any(isinstance(p, str) for p in prompts):
            raise ValueError("prompts must be a non-empty list of token-id lists")
        if model.distributed is not None:
            raise PrefixRefused(f"shared prefixes need the whole model in one process; it is split ({model.distributed})")
        if model.registry.live():
            raise PrefixRefused("hooks installed around this call would act on each shared prefix once, not once per "
                                "row; generate whole prompts instead")
        self.model = model
        self.tokens = [model.prompts.check_ids(list(p)) for p in prompts]
        self.lengths = np.array([len(t) for t in self.tokens], dtype=np.int64)
        if self.lengths.min() < 2:
            raise PrefixRefused(f"prompt {int(np.argmin(self.lengths))} has {int(self.lengths.min())} token(s); a shared "
                                "prefix needs prompts of at least 2 tokens")
        model.check_length(int(self.lengths.max()), "the longest prompt")
        self.generator = prefix_generator(model.backend)
        with model.calls("shared_prefix"), Hooks(model.backend, {}, None, registry=model.registry):
            runner = prefix_runner(model.backend)
            self.state: Any = runner.run_prefix(model.backend, [t[:-1] for t in self.tokens],
                                                prompt_lengths=self.lengths)

    def batch_generate(self, prompt_of: Sequence[int], *, max_tokens: int = 256, interventions: Mapping | Any = None,
                       **options: Any) -> BatchResult:
        """Generate one row per entry of ``prompt_of`` (the index of the prompt it continues), each
        with its own steering, as ``batch_generate`` would for those prompts.

        Args:
            prompt_of: The prompt of each row (repeats allowed).
            max_tokens: Tokens to generate per row.
            interventions: As for ``batch_generate``: one for every row or a list with one per row;
                positions must leave every prompt position but the last alone.
            options: Sampling options as for ``batch_generate``.

        Returns:
            A :class:`BatchResult` in row order.

        Raises:
            PrefixRefused: steering that touches a prompt position before the last (nothing has run).
            ValueError: bad ``prompt_of``, interventions, positions or options.
        """
        m = self.model
        check_loop(max_tokens, options)
        of = np.asarray(prompt_of)
        if of.ndim != 1 or of.size == 0 or not np.issubdtype(of.dtype, np.integer):
            raise ValueError(f"prompt_of must be a non-empty list of prompt indices, got {prompt_of!r}")
        if ((of < 0) | (of >= self.lengths.size)).any():
            bad = int(of[(of < 0) | (of >= self.lengths.size)][0])
            raise ValueError(f"prompt_of {bad} out of range; valid: 0..{self.lengths.size - 1}")
        tokens = [self.tokens[o] for o in of.tolist()]
        L = self.lengths[of]
        plans = m.plan(interventions=interventions, rows=len(tokens))
        m.check_length(int(L.max()) + max_tokens, "the longest prompt + max_tokens")
        check_plans(plans, limit=int(L.max()) + max_tokens, prompt_len=int(L.min()),
                    prompt_ends=L.tolist(), what="prompt + max_tokens")
        refuse_prompt_positions(plans, L, max_tokens)
        out: list[list[int]] = [[] for _ in tokens]
        reasons = ["length"] * len(tokens)
        with m.calls("batch_generate"), Hooks(m.backend, plans, None, registry=m.registry):
            for step in self.generator.generate_rows_from(m.backend, self.state, of, tokens, max_tokens=max_tokens,
                                                          **options):
                if step.finish_reason == "stop":
                    reasons[step.row] = "stop"
                else:
                    out[step.row].append(step.token)
        return BatchResult([m.prompts.decode(ids) for ids in out], out, reasons, [[] for _ in tokens])


def refuse_prompt_positions(plans: Mapping[str, SitePlan], prompt_lengths: np.ndarray, max_tokens: int) -> None:
    """Raise :class:`PrefixRefused` for steering or recording (``plans``, rows keyed by index into
    ``prompt_lengths``) that would act on a prompt position before the last of a row, or read its
    prompt (a gate): what generation from a shared prefix cannot do."""
    L = np.asarray(prompt_lengths, dtype=np.int64)
    refuse_prefix_positions(plans, L - 1, np.full(L.size, max_tokens + 1), prompt_ends=L)
