"""What both backends' steerable models share: paths, hook handles, traces and the generation
wrapper. A backend supplies how to patch a module, how to run a padded forward and how to run its
generation loop; everything users call is defined once, here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Callable

import numpy as np

from .activations import Activations
from .paths import Site
from .positions import check_reachable
from .site_plan import SitePlan, as_interventions, plan_sites


class Hooks:
    """Installed interventions and recorders; undone by :meth:`remove` (or leaving ``with``).

    Every op is compiled before anything is installed, so bad input leaves the model untouched;
    a failure while installing undoes what was done. ``activations`` holds what the recorders
    collected so far (concatenated over forwards).
    """

    def __init__(self, owner: Steerable, plans: dict[str, SitePlan], reduce: str | None):
        self._undo: list[Callable[[], None]] = []
        self._recorders: dict[str, Any] = {}
        self.ops: list = []
        entries = [owner._entry(p, reduce, self._recorders, self.ops) for p in plans.values()]
        try:
            owner._install(entries, self._undo)
        except BaseException:
            self.remove()
            raise
        self._flush = owner._flush
        self.activations = Activations({k: r.result for k, r in self._recorders.items()}, owner.resolve_key)

    def remove(self) -> None:
        """Undo every patch this object made, newest first (idempotent)."""
        while self._undo:
            self._undo.pop()()

    @property
    def active(self) -> bool:
        return bool(self._undo)

    def flush(self) -> None:
        """Hand pending recordings to the backend at a loop boundary (MLX schedules them)."""
        self._flush(self._recorders.values())

    def __enter__(self) -> Hooks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


class Trace:
    """Result of ``model.trace`` / ``model.run``: activations, logits and the token layout."""

    def __init__(self, hooks: Hooks, logits: Any, tokens: list[list[int]]):
        self._hooks = hooks
        self.logits = logits
        self.tokens = tokens
        self.lengths = [len(t) for t in tokens]
        self.padding = [max(self.lengths) - n for n in self.lengths]

    @property
    def activations(self) -> Activations:
        return self._hooks.activations


class Steerable:
    """The public API both backends share.

    A backend sets ``resolver``, ``state`` (a PositionState), ``prompts`` and implements
    ``_entry`` (compile one site plan), ``_install`` (patch, recording undo callbacks),
    ``_flush``, ``_forward`` (one padded forward) and ``_stream`` (its generation loop).
    """

    # -- paths -----------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.layer_paths)

    def resolve(self, site: str | Site) -> Site:
        """Resolve ``layers.4``, ``layers.-1.mlp``, ``model.layers.4:input`` to a :class:`Site`."""
        return self.resolver.resolve(site)

    def resolve_path(self, path: str) -> str:
        return self.resolver.resolve_path(path)

    def resolve_key(self, site: str) -> str:
        return self.resolver.resolve(site).key

    # -- patching --------------------------------------------------------------------------
    def hooks(
        self,
        *,
        interventions: Mapping | Any = None,
        record: object = None,
        record_positions: object = "all",
        reduce: str | None = None,
    ) -> Hooks:
        """Install interventions and recorders until ``remove()`` / the end of a ``with`` block.

        Recorders keep the activation after this site's interventions (what flows on).
        """
        plans = plan_sites(
            self.resolver, interventions=as_interventions(interventions),
            record=record, record_positions=record_positions, reduce=reduce,
        )
        return Hooks(self, plans, reduce)

    def steer(self, interventions: Mapping | Any, *, scale: float = 1.0, positions: object = "all") -> Hooks:
        """A persistent edit: stays installed across calls until ``handle.remove()``.

        Args:
            interventions: ``{site: intervention}`` or a SteeringVector (added with ``scale``).
        """
        return self.hooks(interventions=as_interventions(interventions, scale=scale, positions=positions))

    def record(self, sites: object, *, positions: object = "all", reduce: str | None = None) -> Hooks:
        """Record ``sites`` over whatever runs inside the ``with`` block (e.g. generation)."""
        return self.hooks(record=sites, record_positions=positions, reduce=reduce)

    @contextlib.contextmanager
    def _layout(self, lengths: Sequence[int], padding: Sequence[int]) -> Iterator[None]:
        """Tell the position state the prompt lengths (and left padding) of our own forwards."""
        self.state.prompt_len_stack.append(np.asarray(lengths, dtype=np.int64))
        self.state.padding_stack.append(np.asarray(padding, dtype=np.int64))
        try:
            yield
        finally:
            self.state.prompt_len_stack.pop()
            self.state.padding_stack.pop()

    @staticmethod
    def _check_positions(hooks: Hooks, limit: int, prompt_len: int, what: str) -> None:
        """Reject indices that can never be reached and front-aligned tensors longer than the prompt."""
        for rec in hooks._recorders.values():
            check_reachable(rec.positions, limit, what=what)
        for op in hooks.ops:
            check_reachable(op.sel, limit, what=what)
            rows = getattr(op, "front_aligned_rows", None)
            if rows is not None and rows > prompt_len:
                raise ValueError(
                    f"front-aligned tensor at {op.site!r} has {rows} positions but the prompt has "
                    f"{prompt_len} tokens; it must not be longer than the prompt"
                )

    # -- forward ---------------------------------------------------------------------------
    def encode(
        self, prompt: str | Sequence[int], *, chat: bool = False, system: str | None = None,
        assistant_prefix: str | None = None,
    ) -> list[int]:
        """Token ids of ``prompt`` (a chat user turn with the template when ``chat``)."""
        return self.prompts.encode(prompt, chat=chat, system=system, assistant_prefix=assistant_prefix)

    def run(
        self,
        prompts: str | Sequence[str] | Sequence[Sequence[int]],
        *,
        record: object = None,
        interventions: Mapping | Any = None,
        record_positions: object = "all",
        reduce: str | None = None,
        logits: bool = True,
        chat: bool = False,
    ) -> Trace:
        """One forward over a batch; prompts of different lengths are left-padded.

        Args:
            prompts: A string, a list of strings, or lists of token ids.
            record: Sites to record (list, or ``{site: positions}``).
            interventions: ``{site: intervention(s)}`` or a SteeringVector.
            record_positions: Default positions for recorded sites.
            reduce: ``"mean"`` averages the recorded positions per row.
            logits: Keep the (B, L, V) logits (skipping them saves the unembedding).
            chat: Wrap each prompt as a user turn with the chat template.
        """
        tokens = self.prompts.encode_batch(prompts, chat=chat)
        hooks = self.hooks(interventions=interventions, record=record,
                           record_positions=record_positions, reduce=reduce)
        try:
            L = max(len(t) for t in tokens)
            self._check_positions(hooks, L, L, "a prompt")
            return Trace(hooks, self._forward(tokens, hooks, keep_logits=logits), tokens)
        finally:
            hooks.remove()

    @contextlib.contextmanager
    def trace(self, prompts: str | Sequence[str] | Sequence[Sequence[int]], **kwargs: Any) -> Iterator[Trace]:
        """``with model.trace(prompts, record=[..], interventions={..}) as tr:`` — runs one forward.

        Results stay readable after the block; patches are removed when it ends (or raises).
        Options are those of :meth:`run`.
        """
        yield self.run(prompts, **kwargs)

    # -- generation --------------------------------------------------------------------------
    def stream_generate(
        self,
        prompt: str | Sequence[int],
        *,
        max_tokens: int = 256,
        interventions: Mapping | Any = None,
        record: object = None,
        record_positions: object = "last",
        hooks_out: list | None = None,
        chat: bool = False,
        system: str | None = None,
        **options: Any,
    ) -> Iterator[Any]:
        """Stream generation responses (``.text``, ``.token``, ``.finish_reason``...) with
        interventions applied at every step.

        Positions are exact: the prompt length is known, ``last`` steers the last prompt token
        and each new token, and chunked prefill (``prefill_step_size``) gives the same result.

        Args:
            max_tokens: Tokens to generate.
            interventions: ``{site: intervention(s)}`` or a SteeringVector.
            record, record_positions: Sites to record while generating (default: the last position).
            hooks_out: If a list, receives the :class:`Hooks` (read its ``activations``).
            chat, system: Wrap the prompt as a chat user turn.
            options: Sampling and loop options: ``temp, top_p, min_p, top_k, repetition_penalty,
                repetition_context_size, logits_processors, sampler, seed, prefill_step_size``
                (the MLX backend passes other options on to ``mlx_lm.stream_generate``).
        """
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive int, got {max_tokens!r}")
        tokens = self.encode(prompt, chat=chat, system=system)
        hooks = self.hooks(interventions=interventions, record=record, record_positions=record_positions)
        try:
            self._check_positions(hooks, len(tokens) + max_tokens, len(tokens), "prompt + max_tokens")
            if hooks_out is not None:
                hooks_out.append(hooks)
            with self._layout([len(tokens)], [0]):
                for response in self._stream(tokens, max_tokens=max_tokens, **options):
                    hooks.flush()
                    yield response
        finally:
            hooks.remove()

    def generate(self, prompt: str | Sequence[int], **kwargs: Any) -> str:
        """Generated text (the continuation only). Options are those of :meth:`stream_generate`."""
        return "".join(r.text for r in self.stream_generate(prompt, **kwargs))

    def generate_tokens(self, prompt: str | Sequence[int], **kwargs: Any) -> list[int]:
        """Generated token ids (EOS excluded). Options are those of :meth:`stream_generate`."""
        return [int(r.token) for r in self.stream_generate(prompt, **kwargs) if r.finish_reason != "stop"]
