"""What both backends' steerable models share: the forward and generation API, and traces.

A backend (``mlx_steer/backends/<name>/``) supplies the :class:`~mlx_steer.backend.ModelBackend`
protocol — find a module, attach a function to its input or output, track positions — plus one
padded forward and its generation loops. Planning, validation, intervention ops and recording
are done here, once, before anything is attached.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .activations import Activations
from .call_guard import CallGuard
from .hooks import Hooks, SiteProgram, Watch
from .layer_skip import LayerSkip
from .layout import Layout
from .ops import Op, compile_op
from .paths import NORM_NAMES, Site, final_norm_path
from .positions import PositionState
from .recording import Recorder
from .site_plan import SitePlan, as_interventions, check_plans, plan_sites
from .text_stream import TextStream

__all__ = ["BatchResult", "CallGuard", "Hooks", "RowStep", "SiteProgram", "Steerable", "Trace", "Watch"]

if TYPE_CHECKING:
    from .backend import Array, ArrayOps, Undo
    from .continuous import ContinuousBatch
    from .paths import PathResolver
    from .prompts import PromptEncoder


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


@dataclass
class BatchResult:
    """What :meth:`Steerable.batch_generate` returns, one entry per prompt, in prompt order.

    Attributes:
        texts: The generated text of each row (its tokens decoded together).
        token_ids: The generated token ids of each row (EOS excluded).
        finish_reasons: ``"stop"`` (EOS) or ``"length"`` per row.
    """

    texts: list[str]
    token_ids: list[list[int]]
    finish_reasons: list[str]


@dataclass
class RowStep:
    """One generated token of one batch row, as a backend's batch loop reports it."""

    row: int
    token: int
    finish_reason: str | None = None


class Steerable:
    """The public API both backends share.

    A backend sets ``xp``, ``modules``, ``layer_paths``, ``hidden_size``, ``resolver``,
    ``state``, ``prompts`` and implements the :class:`~mlx_steer.backend.ModelBackend` methods
    (``site_dim``, ``site_heads``, ``attach``, ``attach_tracker``) plus ``_forward`` (one padded
    forward), ``_stream`` (its generation loop) and ``_generate_rows`` (its batch loop).
    """

    xp: ArrayOps
    modules: dict[str, Any]
    layer_paths: list[str]
    hidden_size: int
    resolver: PathResolver
    state: PositionState
    prompts: PromptEncoder
    model: Any  # the framework's own model: an mlx-lm Model, a transformers PreTrainedModel
    tokenizer: Any
    model_id: str | None
    vocab_size: int | None  # rows of the input embedding
    max_positions: int | None  # rows of a learned position table (None: rotary, no hard limit)

    @property
    def calls(self) -> CallGuard:
        """The guard that keeps calls on this model from overlapping."""
        guard = self.__dict__.get("_calls")
        if guard is None:
            guard = self.__dict__["_calls"] = CallGuard()
        return guard

    def remove_all_hooks(self) -> int:
        """Remove every hook mlx_steer installed on this model (``steer`` handles, recorders,
        abandoned streams, batch generators); safe to call at any time. Returns how many
        :class:`Hooks` were removed."""
        live = list(self.__dict__.get("_live_hooks", {}).values())
        for hooks in live:
            hooks.remove()
        return len(live)

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

    def to_numpy(self, x: Array) -> np.ndarray:
        """A float32 numpy copy of a backend array."""
        return self.xp.to_numpy(x)

    # -- the backend contract (see mlx_steer.backend.ModelBackend) ------------------------------
    def site_dim(self, path: str, point: str) -> int | None:
        raise NotImplementedError

    def site_heads(self, path: str, point: str) -> int | None:
        raise NotImplementedError

    def attach(self, path: str, point: str, fn: Any) -> Undo:
        raise NotImplementedError

    def attach_tracker(self) -> Undo:
        raise NotImplementedError

    def bypass(self, path: str, fn: Any) -> Undo:
        raise NotImplementedError

    def _forward(self, tokens: list[list[int]], hooks: Hooks, *, keep_logits: bool) -> Array | None:
        raise NotImplementedError

    def _stream(self, tokens: list[int], *, max_tokens: int, **options: Any) -> Iterator[Any]:
        raise NotImplementedError

    def _generate_rows(self, tokens: list[list[int]], *, max_tokens: int, **options: Any) -> Iterator[RowStep]:
        raise NotImplementedError

    def batch_generator(self, **options: Any) -> ContinuousBatch:
        """Continuous batching with per-sequence steering: ``insert(prompt_ids, max_tokens=...,
        interventions=..., monitors=..., temp=...) -> uid``, ``step() -> [StepEvent]``,
        ``remove(uid)``, ``close()`` (see :class:`~mlx_steer.continuous.ContinuousBatch`)."""
        raise NotImplementedError

    def make_prompt_cache(self) -> Any:
        """An empty KV cache to pass to :meth:`stream_generate` as ``prompt_cache=`` and reuse
        across turns of a conversation (positions then continue from the cache's offset)."""
        raise NotImplementedError

    def _cache_offset(self, cache: Any) -> int:
        """Tokens a KV cache already holds."""
        raise NotImplementedError

    def _sampling(self, **options: Any) -> tuple[Any, list]:
        """The backend's sampler and logits processors for sampling options
        (``temp, top_p, min_p, top_k, repetition_penalty, ...``); unknown options raise ValueError."""
        raise NotImplementedError

    def _unembed(self, x: np.ndarray, norm_path: str | None) -> Array:
        """(K, D) float32 host rows through the final norm (when given) and the unembedding,
        bypassing any installed hooks."""
        raise NotImplementedError

    @property
    def unembedding_path(self) -> str:
        """Path of the module mapping the final residual to logits."""
        raise NotImplementedError

    @property
    def eos_token_ids(self) -> set[int]:
        """Token ids that end generation."""
        raise NotImplementedError

    def ban_tokens_processor(self, token_ids: Sequence[int]) -> Any:
        """A logits processor for :meth:`stream_generate` that makes ``token_ids`` impossible."""
        raise NotImplementedError

    # -- unembedding -------------------------------------------------------------------------
    @property
    def final_norm_path(self) -> str | None:
        """Path of the norm applied after the last decoder layer (None if there is none)."""
        return final_norm_path(self.modules, self.resolver.container)

    def unembed(self, vectors: np.ndarray, *, final_norm: bool = False) -> np.ndarray:
        """Logits of residual-stream directions through the unembedding (no forward pass).

        Args:
            vectors: (K, D) or (D,) directions in the residual stream.
            final_norm: Apply the model's final norm first (logit lens). Model-specific logit
                transforms (gemma2 softcapping, logit scales) are not applied.

        Returns:
            float32 logits, (K, V) — or (V,) for a (D,) input.

        Raises:
            ValueError: wrong width, non-finite values, or no final norm to apply.
        """
        x = np.asarray(vectors, dtype=np.float32)
        if x.ndim not in (1, 2) or x.shape[-1] != self.hidden_size:
            raise ValueError(f"vectors must be (K, {self.hidden_size}) or ({self.hidden_size},), got shape {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError("vectors have non-finite values (NaN or inf)")
        norm_path = self.final_norm_path if final_norm else None
        if final_norm and norm_path is None:
            raise ValueError(f"final_norm=True but no final norm ({', '.join(NORM_NAMES)}) was found "
                             "after the decoder layers")
        with self.calls("unembed"):  # its modules run bypassed: no other call may run them meanwhile
            out = self.to_numpy(self._unembed(np.atleast_2d(x), norm_path))
        return out[0] if x.ndim == 1 else out

    # -- planning ----------------------------------------------------------------------------
    def _plan(self, *, interventions: Mapping | Any = None, record: object = None,
              record_positions: object = "all", reduce: str | None = None, rows: int | None = None,
              record_stage: str = "after") -> dict[str, SitePlan]:
        return plan_sites(self.resolver, interventions=as_interventions(interventions, rows=rows),
                          record=record, record_positions=record_positions, reduce=reduce,
                          record_stage=record_stage)

    def check_length(self, n_tokens: int, what: str) -> None:
        """Refuse sequences longer than a learned position table (GPT-2-style models)."""
        if self.max_positions is not None and n_tokens > self.max_positions:
            raise ValueError(f"{what} is {n_tokens} tokens but this model has {self.max_positions} positions "
                             f"(a learned position table); at most {self.max_positions} tokens fit")

    def _compile(self, site: Site, spec: Any) -> Op:
        return compile_op(spec, xp=self.xp, site=site.key, dim=self.site_dim(site.path, site.point),
                          n_heads=self.site_heads(site.path, site.point))

    def _program(self, plan: SitePlan, reduce: str | None) -> SiteProgram:
        ops = [self._compile(plan.site, i) for i in plan.interventions]
        rec = None if plan.record is None else Recorder(self.state, plan.record, reduce, site=plan.site.key)
        return SiteProgram(plan.site, ops, rec, self.state, record_before=plan.record_before)

    # -- patching --------------------------------------------------------------------------
    def hooks(
        self,
        *,
        interventions: Mapping | Any = None,
        record: object = None,
        record_positions: object = "all",
        reduce: str | None = None,
        record_stage: str = "after",
    ) -> Hooks:
        """Install interventions and recorders until ``remove()`` / the end of a ``with`` block.

        Recorders keep the activation after this site's interventions (what flows on), or with
        ``record_stage="before"`` the model's own value there, before them.
        Interventions scoped to rows (``for_rows``) act on those batch rows only; more can be
        given to a row later with :meth:`Hooks.assign`.
        """
        plans = self._plan(interventions=interventions, record=record,
                           record_positions=record_positions, reduce=reduce, record_stage=record_stage)
        return Hooks(self, plans, reduce)

    def steer(self, interventions: Mapping | Any, *, scale: float = 1.0, positions: object = "all") -> Hooks:
        """A persistent edit: stays installed across calls until ``handle.remove()``.

        Args:
            interventions: ``{site: intervention}`` or a SteeringVector (added with ``scale``).
        """
        return self.hooks(interventions=as_interventions(interventions, scale=scale, positions=positions))

    def record(self, sites: object, *, positions: object = "all", reduce: str | None = None,
               stage: str = "after") -> Hooks:
        """Record ``sites`` over whatever runs inside the ``with`` block (e.g. generation);
        ``stage="before"`` reads the model's own values, before any intervention at the site."""
        return self.hooks(record=sites, record_positions=positions, reduce=reduce, record_stage=stage)

    @contextlib.contextmanager
    def _layout(self, layout: Layout) -> Iterator[None]:
        """Tell the position tracker how our own forwards are laid out (lengths, padding, rows)."""
        self.state.layouts.append(layout)
        try:
            yield
        finally:
            self.state.layouts.remove(layout)

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
        record_stage: str = "after",
        check_finite: bool = True,
        from_layer: int | None = None,
        hidden: Any = None,
    ) -> Trace:
        """One forward over a batch; prompts of different lengths are left-padded.

        Args:
            prompts: A string, a list of strings, or lists of token ids.
            record: Sites to record (list, or ``{site: positions}``).
            interventions: ``{site: intervention(s)}``, a SteeringVector, or a list with one of
                those (or None) per prompt: row ``i`` gets entry ``i`` only.
            record_positions: Default positions for recorded sites.
            reduce: ``"mean"`` averages the recorded positions per row.
            logits: Keep the (B, L, V) logits (skipping them saves the unembedding).
            chat: Wrap each prompt as a user turn with the chat template.
            record_stage: ``"after"`` (default) records what flows on from a site, after its
                interventions; ``"before"`` records the model's own value there.
            check_finite: Raise ValueError when the logits hold NaN or +inf (an intervention
                that overflows); False returns them as they are.
            from_layer: Start at this decoder layer (1 .. layers - 1) with ``hidden`` as its
                input: the layers below are not run, and sites below it are refused.
            hidden: (rows, padded length, hidden size) input of ``from_layer``, e.g. what
                ``layers.{from_layer}:input`` recorded in an unsteered run of the same prompts,
                which makes the result that of the full forward (see :mod:`mlx_steer.layer_skip`).
        """
        tokens = self.prompts.encode_batch(prompts, chat=chat)
        plans = self._plan(interventions=interventions, record=record, record_positions=record_positions,
                           reduce=reduce, rows=len(tokens), record_stage=record_stage)
        L, shortest = max(len(t) for t in tokens), min(len(t) for t in tokens)
        self.check_length(L, "the prompt")
        # an explicit index must exist in every row: past a short row it would select nothing there
        check_plans(plans, limit=shortest, prompt_len=shortest, generating=False,
                    what="a prompt" if len(tokens) == 1 else "the shortest prompt in the batch")
        skip = None
        if from_layer is not None or hidden is not None:
            if from_layer is None or hidden is None:
                raise ValueError("from_layer and hidden go together: the layer to start at and its input")
            sharded = getattr(self, "distributed", None)
            if sharded is not None:
                raise ValueError(f"from_layer cannot skip layers of a model sharded over ranks ({sharded})")
            skip = LayerSkip(self, from_layer, hidden, rows=len(tokens), length=L, plans=plans)
        with self.calls("run"), Hooks(self, plans, reduce) as hooks, contextlib.ExitStack() as undo:
            for u in skip.install() if skip is not None else []:
                undo.callback(u)
            out = self._forward(tokens, hooks, keep_logits=logits)
            if check_finite and out is not None and self.xp.truth(self.xp.nonfinite(out)):
                raise ValueError("the logits are not finite (NaN or +inf): the interventions overflow the "
                                 "activations; use a smaller scale or vector")
            return Trace(hooks, out, tokens)

    @contextlib.contextmanager
    def trace(self, prompts: str | Sequence[str] | Sequence[Sequence[int]], **kwargs: Any) -> Iterator[Trace]:
        """``with model.trace(prompts, record=[..], interventions={..}) as tr:`` — runs one forward.

        The forward runs (and its patches are removed) when the block is entered; the results
        stay readable inside the block and after it. Options are those of :meth:`run`.
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
        record_stage: str = "after",
        **options: Any,
    ) -> Generator[Any, None, None]:
        """Stream generation responses (``.text``, ``.token``, ``.finish_reason``...) with
        interventions applied at every step.

        Positions are exact: the prompt length is known, ``last`` steers the last prompt token
        and each new token, and chunked prefill (``prefill_step_size``) gives the same result.

        Args:
            max_tokens: Tokens to generate.
            interventions: ``{site: intervention(s)}`` or a SteeringVector.
            record, record_positions: Sites to record while generating (default: the last position).
            record_stage: ``"after"`` records the steered value at a site, ``"before"`` the
                model's own value (e.g. to monitor a direction while steering along it).
            hooks_out: If a list, receives the :class:`Hooks` (read its ``activations``).
            chat, system: Wrap the prompt as a chat user turn.
            options: Sampling and loop options: ``temp, top_p, min_p, top_k, repetition_penalty,
                repetition_context_size, logits_processors, sampler, seed, prefill_step_size``,
                and ``prompt_cache`` (from :meth:`make_prompt_cache`) to continue a conversation:
                positions stay absolute from the cache's offset, while ``prompt``,
                ``generated`` and ``last`` refer to this call's tokens (the MLX backend passes
                other options on to ``mlx_lm.stream_generate``).
        """
        check_loop(max_tokens, options)
        tokens = self.encode(prompt, chat=chat, system=system)
        plans = self._plan(interventions=interventions, record=record, record_positions=record_positions,
                           record_stage=record_stage)
        past = 0 if options.get("prompt_cache") is None else self._cache_offset(options["prompt_cache"])
        self.check_length(past + len(tokens) + max_tokens, "earlier turns + prompt + max_tokens" if past
                          else "prompt + max_tokens")
        check_plans(plans, limit=past + len(tokens) + max_tokens, prompt_len=len(tokens),
                    what="earlier turns + prompt + max_tokens" if past else "prompt + max_tokens")
        return self._stream_steps(tokens, plans, max_tokens=max_tokens, hooks_out=hooks_out, options=options)

    def _stream_steps(self, tokens: list[int], plans: Mapping[str, SitePlan], *, max_tokens: int,
                      hooks_out: list | None, options: dict[str, Any]) -> Generator[Any, None, None]:
        with self.calls("stream_generate"), Hooks(self, plans, None) as hooks:
            if hooks_out is not None:
                hooks_out.append(hooks)
            text = TextStream(self.prompts.decode)  # the same text for the same tokens on every backend
            # each step's logits are checked for NaN/+inf lazily and read one step later, so the
            # check never waits behind the step the loop has in flight
            checks: list[tuple[int, Any]] = []
            with self._layout(Layout([len(tokens)])):
                for n, response in enumerate(self._stream(tokens, max_tokens=max_tokens, **options)):
                    checks.append((n, self.xp.nonfinite(response.logprobs)))
                    hooks.flush()
                    self.xp.schedule([checks[-1][1]])
                    if len(checks) > 1:
                        self._check_step(*checks.pop(0))
                    if response.finish_reason == "stop":  # the EOS is not text
                        segment = text.flush()
                    else:
                        segment = text.add(int(response.token))
                        segment += text.flush() if response.finish_reason is not None else ""
                    yield dataclasses.replace(response, text=segment)
                for check in checks:
                    self._check_step(*check)

    def _check_step(self, n: int, flag: Any) -> None:
        if self.xp.truth(flag):
            raise ValueError(f"the logits became non-finite (NaN or +inf) at generated token {n}: the "
                             "interventions overflow the activations; use a smaller scale or vector")

    def generate(self, prompt: str | Sequence[int], **kwargs: Any) -> str:
        """Generated text (the continuation only): the generated tokens decoded together, so the
        same tokens give the same text on every backend. Options are those of :meth:`stream_generate`."""
        return self.prompts.decode(self.generate_tokens(prompt, **kwargs))

    def generate_tokens(self, prompt: str | Sequence[int], **kwargs: Any) -> list[int]:
        """Generated token ids (EOS excluded). Options are those of :meth:`stream_generate`."""
        return [int(r.token) for r in self.stream_generate(prompt, **kwargs) if r.finish_reason != "stop"]

    def batch_generate(
        self,
        prompts: Sequence[str] | Sequence[Sequence[int]],
        *,
        max_tokens: int = 256,
        interventions: Mapping | Any = None,
        chat: bool = False,
        system: str | None = None,
        **options: Any,
    ) -> BatchResult:
        """Generate for several prompts in one batch, each row with its own steering.

        Every row gets exactly what it would get alone (greedy tokens identical): the batch is
        left-padded with exact per-row positions, and a row's interventions never touch another.

        Args:
            prompts: Strings or token-id lists.
            max_tokens: Tokens to generate per row.
            interventions: ``{site: intervention(s)}`` or a SteeringVector for every row, or a
                list with one of those (or None) per prompt.
            chat, system: Wrap each prompt as a chat user turn.
            options: Sampling options as for :meth:`stream_generate` (shared by every row).

        Returns:
            A :class:`BatchResult` in prompt order.
        """
        check_loop(max_tokens, options)
        if isinstance(prompts, str) or not isinstance(prompts, Sequence) or not prompts:
            raise ValueError("batch_generate takes a non-empty list of prompts")
        tokens = [self.encode(p, chat=chat, system=system) for p in prompts]
        plans = self._plan(interventions=interventions, rows=len(tokens))
        self.check_length(max(map(len, tokens)) + max_tokens, "the longest prompt + max_tokens")
        check_plans(plans, limit=max(map(len, tokens)) + max_tokens, prompt_len=min(map(len, tokens)),
                    what="prompt + max_tokens")
        out: list[list[int]] = [[] for _ in tokens]
        reasons = ["length"] * len(tokens)
        with self.calls("batch_generate"), Hooks(self, plans, None):
            for step in self._generate_rows(tokens, max_tokens=max_tokens, **options):
                if step.finish_reason == "stop":
                    reasons[step.row] = "stop"
                else:
                    out[step.row].append(step.token)
        texts = [self.prompts.decode(ids) for ids in out]
        return BatchResult(texts, out, reasons)


def check_loop(max_tokens: object, options: Mapping[str, Any]) -> None:
    """Loop options are checked at the call, before anything is installed or computed."""
    for name, value in (("max_tokens", max_tokens), ("prefill_step_size", options.get("prefill_step_size", 1))):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
