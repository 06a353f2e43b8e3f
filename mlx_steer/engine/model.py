"""The model class of both backends: it holds a backend (:class:`~mlx_steer.engine.protocols.Backend`)
and offers the user's verbs — forward and generation with interventions and recording, traces,
hooks, the unembedding. Planning, validation, intervention ops and recording are done here, once,
before anything is attached; the backend only finds modules, attaches functions to them, tracks
positions and runs its forward and generation loops.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Generator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .backend_facts import BackendFacts
from .call_guard import CallGuard
from .compiling import CompiledSteering, sequence_steering
from .continuous import ContinuousBatch
from .generation import generate_batch, stream_steps
from .hooks import HookRegistry, Hooks, SiteProgram, Watch
from .layer_skip import LayerSkip
from .limits import check_length, check_loop
from .logit_positions import LogitsSpec, logit_positions
from .paths import NORM_NAMES, Site, final_norm_path
from .plan import SitePlan, as_interventions, check_plans, plan_sites
from .results import BatchResult, RowStep, Trace

if TYPE_CHECKING:
    from .arrays import Array
    from .protocols import Backend

__all__ = ["BatchResult", "CallGuard", "Hooks", "RowStep", "SiteProgram", "Steerable", "Trace", "Watch",
           "check_loop"]


class Steerable(BackendFacts):
    """A language model with site-keyed recording and steering: the user's API, the same on every
    backend. It holds the backend it runs on (``backend``); each backend's model class
    (``MLXSteerableModel``, ``TorchSteerableModel``) only builds that backend.

    Args:
        backend: What runs the framework's model (see :class:`~mlx_steer.engine.protocols.Backend`).
    """

    def __init__(self, backend: Backend):
        super().__init__(backend)
        self.calls = CallGuard()  # keeps calls on this model from overlapping
        self.registry = HookRegistry()  # the live hooks: remove_all_hooks removes them

    def ban_tokens_processor(self, token_ids: Sequence[int]) -> Any:
        """A logits processor for :meth:`stream_generate` that makes ``token_ids`` impossible."""
        return self.backend.ban_tokens_processor(token_ids)

    def make_prompt_cache(self) -> Any:
        """An empty KV cache to pass to :meth:`stream_generate` as ``prompt_cache=`` and reuse
        across turns of a conversation (positions then continue from the cache's offset)."""
        return self.backend.make_prompt_cache()

    def batch_generator(self, **options: Any) -> ContinuousBatch:
        """Continuous batching with per-sequence steering: ``insert(prompt_ids, max_tokens=...,
        interventions=..., monitors=..., temp=...) -> uid``, ``step() -> [StepEvent]``,
        ``remove(uid)``, ``close()`` (see :class:`~mlx_steer.engine.continuous.ContinuousBatch`);
        ``options`` go to the backend's batch loop (``completion_batch_size``, ``prefill_step_size``...)."""
        return ContinuousBatch(self.backend, self.backend.batch_loop(**options), calls=self.calls,
                               registry=self.registry)

    def remove_all_hooks(self) -> int:
        """Remove every hook mlx_steer installed on this model (``steer`` handles, recorders,
        abandoned streams, batch generators); safe to call at any time. Returns how many
        :class:`Hooks` were removed."""
        live = self.registry.live()
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
            out = self.to_numpy(self.backend.unembed(np.atleast_2d(x), norm_path))
        return out[0] if x.ndim == 1 else out

    # -- planning ----------------------------------------------------------------------------
    def plan(self, *, interventions: Mapping | Any = None, record: object = None,
             record_positions: object = "all", reduce: str | None = None, rows: int | None = None,
             record_stage: str = "after") -> dict[str, SitePlan]:
        """What a call would install at each site, resolved and validated (nothing is installed):
        options as for :meth:`run`; ``rows`` the batch size a per-prompt list of interventions is for."""
        return plan_sites(self.resolver, interventions=as_interventions(interventions, rows=rows),
                          record=record, record_positions=record_positions, reduce=reduce,
                          record_stage=record_stage)

    def compile_steering(self, interventions: Mapping | Any, *, prompt_len: int, max_tokens: int) -> CompiledSteering:
        """One sequence's interventions planned, checked against its prompt length and
        ``max_tokens``, and compiled once: what :meth:`batch_generator`'s ``insert`` takes as
        ``steering=`` (a server resolves each request's steering once, off the batch's thread).

        Raises:
            ValueError: bad interventions, sites or positions, or a sequence too long for the model.
        """
        return sequence_steering(self.backend, interventions, prompt_len=prompt_len, max_tokens=max_tokens)

    def export(self, out_dir: str | os.PathLike, interventions: Mapping | Any, *, dtype: str | None = None,
               overwrite: bool = False, note: Mapping[str, Any] | None = None) -> Path:
        """Bake ``interventions`` into the weights and write a model folder the plain framework loads
        (MLX: ``mlx_lm.load``; torch: ``AutoModelForCausalLM.from_pretrained``), with the tokenizer and
        chat template and ``mlx_steer_edit.json`` saying what was baked. This model is not changed.

        Exactly bakeable (anything else is refused by name before anything is written):
        ``project_out`` on a linear layer's or embedding's output (e.g. every residual write:
        :func:`mlx_steer.export.directional_ablation`) and ``add_vector`` on a decoder layer's output,
        both with ``positions="all"``. Quantized modules are not edited (re-quantizing would change
        them beyond the edit).

        Args:
            out_dir: The folder to write (atomically: it appears complete or not at all).
            interventions: ``{site: intervention(s)}`` or a SteeringVector.
            dtype: ``"float32"``, ``"float16"`` or ``"bfloat16"`` for every floating weight (None:
                keep the model's).
            overwrite: Replace ``out_dir`` if it is a previous export (never the source model's folder).
            note: Extra entries for ``mlx_steer_edit.json`` (e.g. the vector file's name).

        Returns:
            The written folder.
        """
        from .. import __version__
        from ..export.writing import export_model

        with self.calls("export"):
            return export_model(self.backend, out_dir, interventions, dtype=dtype, overwrite=overwrite,
                                version=__version__, note=note)

    def check_length(self, n_tokens: int, what: str) -> None:
        """Refuse sequences longer than a learned position table (GPT-2-style models)."""
        check_length(self.max_positions, n_tokens, what)

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
        plans = self.plan(interventions=interventions, record=record,
                           record_positions=record_positions, reduce=reduce, record_stage=record_stage)
        return Hooks(self.backend, plans, reduce, registry=self.registry)

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
        logits: LogitsSpec = True,
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
            logits: Keep the (B, L, V) logits (True), none (False: saves the unembedding), or (B, k, V)
                at chosen positions only: ``"last"`` (each row's last real token), an index or list
                of indices for every row (negative: from the row's end), or one list per row.
            chat: Wrap each prompt as a user turn with the chat template.
            record_stage: ``"after"`` (default) records what flows on from a site, after its
                interventions; ``"before"`` records the model's own value there.
            check_finite: Raise ValueError when the logits hold NaN or +inf (an intervention
                that overflows); False returns them as they are.
            from_layer: Start at this decoder layer (1 .. layers - 1) with ``hidden`` as its
                input: the layers below are not run, and sites below it are refused.
            hidden: (rows, padded length, hidden size) input of ``from_layer``, e.g. what
                ``layers.{from_layer}:input`` recorded in an unsteered run of the same prompts,
                which makes the result that of the full forward (see :mod:`mlx_steer.engine.layer_skip`).
        """
        tokens = self.prompts.encode_batch(prompts, chat=chat)
        plans = self.plan(interventions=interventions, record=record, record_positions=record_positions,
                           reduce=reduce, rows=len(tokens), record_stage=record_stage)
        keep = None if logits is False else logit_positions(logits, [len(t) for t in tokens])
        L, shortest = max(len(t) for t in tokens), min(len(t) for t in tokens)
        self.check_length(L, "the prompt")
        # an explicit index must exist in every row: past a short row it would select nothing there
        check_plans(plans, limit=shortest, prompt_len=shortest, generating=False,
                    what="a prompt" if len(tokens) == 1 else "the shortest prompt in the batch")
        skip = None
        if from_layer is not None or hidden is not None:
            if from_layer is None or hidden is None:
                raise ValueError("from_layer and hidden go together: the layer to start at and its input")
            sharded = self.distributed
            if sharded is not None:
                raise ValueError(f"from_layer cannot skip layers of a model sharded over ranks ({sharded})")
            skip = LayerSkip(self.backend, from_layer, hidden, rows=len(tokens), length=L, plans=plans)
        with self.calls("run"), Hooks(self.backend, plans, reduce, registry=self.registry) as hooks, \
                contextlib.ExitStack() as undo:
            for u in skip.install() if skip is not None else []:
                undo.callback(u)
            out = self.backend.forward(tokens, hooks.recorders, keep_logits=logits is not False, positions=keep)
            if check_finite and out is not None and self.xp.truth(self.xp.nonfinite(out)):
                raise ValueError("the logits are not finite (NaN or +inf): the interventions overflow the "
                                 "activations; use a smaller scale or vector")
            return Trace(hooks.activations, out, tokens)

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
            record: Sites to record while generating.
            record_positions: Where to record them (default: the last position).
            record_stage: ``"after"`` records the steered value at a site, ``"before"`` the
                model's own value (e.g. to monitor a direction while steering along it).
            hooks_out: If a list, receives the :class:`Hooks` (read its ``activations``).
            chat: Wrap the prompt as a chat user turn.
            system: A system prompt for that chat.
            options: Sampling and loop options: ``temp, top_p, min_p, top_k, repetition_penalty,
                repetition_context_size, logits_processors, sampler, seed, prefill_step_size``,
                and ``prompt_cache`` (from :meth:`make_prompt_cache`) to continue a conversation:
                positions stay absolute from the cache's offset, while ``prompt``,
                ``generated`` and ``last`` refer to this call's tokens (the MLX backend passes
                other options on to ``mlx_lm.stream_generate``).
        """
        check_loop(max_tokens, options)
        tokens = self.encode(prompt, chat=chat, system=system)
        plans = self.plan(interventions=interventions, record=record, record_positions=record_positions,
                           record_stage=record_stage)
        past = 0 if options.get("prompt_cache") is None else self.backend.cache_offset(options["prompt_cache"])
        self.check_length(past + len(tokens) + max_tokens, "earlier turns + prompt + max_tokens" if past
                          else "prompt + max_tokens")
        check_plans(plans, limit=past + len(tokens) + max_tokens, prompt_len=len(tokens),
                    prompt_ends=[past + len(tokens)], what="earlier turns + prompt + max_tokens" if past else "prompt + max_tokens")
        return stream_steps(self.backend, tokens, plans, calls=self.calls, registry=self.registry,
                            max_tokens=max_tokens, hooks_out=hooks_out, options=options)

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
            chat: Wrap each prompt as a chat user turn.
            system: A system prompt for those chats.
            options: Sampling options as for :meth:`stream_generate` (shared by every row).

        Returns:
            A :class:`BatchResult` in prompt order.
        """
        check_loop(max_tokens, options)
        if isinstance(prompts, str) or not isinstance(prompts, Sequence) or not prompts:
            raise ValueError("batch_generate takes a non-empty list of prompts")
        tokens = [self.encode(p, chat=chat, system=system) for p in prompts]
        plans = self.plan(interventions=interventions, rows=len(tokens))
        self.check_length(max(map(len, tokens)) + max_tokens, "the longest prompt + max_tokens")
        check_plans(plans, limit=max(map(len, tokens)) + max_tokens, prompt_len=min(map(len, tokens)),
                    prompt_ends=[len(t) for t in tokens], what="prompt + max_tokens")
        out, reasons, conditions = generate_batch(self.backend, tokens, plans, calls=self.calls,
                                                  registry=self.registry, max_tokens=max_tokens, options=options)
        return BatchResult([self.prompts.decode(ids) for ids in out], out, reasons, conditions)
