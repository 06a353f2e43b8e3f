"""TorchBackend: a Hugging Face causal LM as the engine sees it (:class:`~mlx_steer.engine.protocols.Backend`):
modules hooked with torch hooks, one masked padded forward, generation loops step for step like mlx-lm's."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ...engine.layout import Layout
from ...engine.logit_positions import padded_columns
from ...engine.module_tree import MappedTree, slots_of
from ...engine.model_sizes import model_sizes, position_table_path
from ...engine.paths import PathResolver, is_attention_output
from ...engine.positions import PositionState
from ...engine.prompts import PromptEncoder
from ...engine.recording import Recorder
from ...engine.results import RowStep
from ...export.edit import Baked, Dense
from . import hooks as hk
from . import writing
from .arrays import XP
from .batch_loop import CohortLoop
from .generation import GenerationResponse, eos_token_ids, generate_rows, generate_step
from .layers import decoder_layer_container, is_projection, site_dim
from .sampling import make_logits_processors, make_sampler

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from ...engine.protocols import Backend

__all__ = ["TorchBackend"]


class TorchBackend(MappedTree):
    """The torch backend of a model (see :class:`~mlx_steer.engine.protocols.Backend`).

    Args:
        hf_model: A ``PreTrainedModel`` for causal LM (``LlamaForCausalLM``, ``GPT2LMHeadModel``...).
        tokenizer: Its Hugging Face tokenizer.
        model_id: Name stored in vector files.
    """

    def __init__(self, hf_model: PreTrainedModel, tokenizer: Any, *, model_id: str | None = None):
        self.model, self.tokenizer, self.model_id = hf_model, tokenizer, model_id
        config = hf_model.config.get_text_config() if hasattr(hf_model.config, "get_text_config") else hf_model.config
        self.hidden_size, self.n_heads = model_sizes(config)
        self.xp = XP
        self.state = PositionState(XP, tokenizer=tokenizer)
        self._head_sites = 0
        self._eos_ids = eos_token_ids(hf_model, tokenizer)
        self._map_tree()

    def _map_tree(self) -> None:
        """Read the module tree (again when it changed, e.g. a module swapped after loading)."""
        hf_model = self.model
        self._slots = slots_of(hf_model, is_module=lambda v: isinstance(v, nn.Module), children=lambda m: m._modules)
        self._modules = modules = dict(hf_model.named_modules())
        container = decoder_layer_container(hf_model)
        self._layer_paths = [f"{container}.{i}" for i in range(len(modules[container]))]
        # positions are computed where the blocks' inputs are made: the container's parent
        self.tracked = modules[container.rpartition(".")[0]] if "." in container else hf_model
        self._resolver = PathResolver(list(modules), self._layer_paths)
        emb = hf_model.get_input_embeddings() if hasattr(hf_model, "get_input_embeddings") else None
        self.vocab_size = int(emb.num_embeddings) if isinstance(emb, nn.Embedding) else None
        self.prompts = PromptEncoder(self.tokenizer, vocab_size=self.vocab_size)
        table = position_table_path(list(modules))
        self.max_positions = None if table is None else int(modules[table].num_embeddings)

    def _hooked(self, module: Any) -> bool:
        return bool(module._forward_hooks or module._forward_pre_hooks)

    distributed: str | None = None  # whole (torch data parallelism runs a whole model per rank)
    grad_enabled = False  # the forward keeps autograd on (differentiate sets it for its call)

    @property
    def dtype(self) -> torch.dtype:
        """The residual stream dtype (the input embedding's)."""
        emb = self.model.get_input_embeddings() if hasattr(self.model, "get_input_embeddings") else None
        weight = getattr(emb, "weight", None)
        return weight.dtype if isinstance(weight, torch.Tensor) else next(self.model.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # -- sites -----------------------------------------------------------------------------------
    def site_dim(self, path: str, point: str) -> int | None:
        return site_dim(self.modules[path], point, self.hidden_size)

    def site_heads(self, path: str, point: str) -> int | None:
        # heads sit side by side on an attention output projection's input
        projection = is_projection(self.modules[path])
        return self.n_heads if point == "input" and projection and is_attention_output(path) else None

    def attach(self, path: str, point: str, fn: Any) -> Any:
        handle = hk.attach(self.modules[path], point, fn)
        head = self.unembedding_path
        if path != head and not path.startswith(head + "."):
            return handle.remove
        # transformers slices the hidden states before the head (logits_to_keep): a site there
        # must see every position, as on MLX
        self._head_sites += 1

        def undo() -> None:
            handle.remove()
            self._head_sites -= 1

        return undo

    def _logits_to_keep(self, wanted: int) -> int:
        """``wanted`` (1: the last position only), or 0 (all) while a site on the head is hooked."""
        return 0 if self._head_sites else wanted

    def attach_tracker(self) -> Any:
        return hk.attach_tracker(self.tracked, self.state).remove

    def bypass(self, path: str, fn: Any) -> Any:
        return hk.bypass(self.modules[path], fn)

    def attach_patterns(self, layers: Sequence[int], sink: Any) -> Any:
        from .attention_patterns import attach_patterns

        return attach_patterns(self.modules, self.layer_paths, layers, sink)

    def forward(self, tokens: list[list[int]], recorders: Mapping[str, Recorder], *,
                keep_logits: bool, positions: np.ndarray | None = None) -> torch.Tensor | None:
        x, pad, mask, pos = self.left_padded(tokens)
        kwargs: dict[str, Any] = {}
        if pad.any():  # rows must see exactly what a single run sees: mask the padding, shift positions
            kwargs["attention_mask"], kwargs["position_ids"] = mask, pos
        at = padded_columns(positions, pad) if keep_logits and positions is not None else None
        keep, result = self.kept_logits(at, keep_logits=keep_logits)
        with torch.set_grad_enabled(self.grad_enabled), self.state.laid_out(Layout([len(t) for t in tokens], pad)):
            out = self.model(input_ids=x, use_cache=False, logits_to_keep=keep, **kwargs)
        return result(out.logits)

    def left_padded(self, tokens: list[list[int]]) -> tuple[torch.Tensor, np.ndarray, torch.Tensor, torch.Tensor]:
        """Rows left-padded to the longest: input ids, each row's padding, the attention mask hiding
        it and the position ids counting from each row's first real token."""
        lengths = np.array([len(t) for t in tokens], dtype=np.int64)
        L = int(lengths.max())
        pad = L - lengths
        device = self.device
        x = torch.tensor([[self.prompts.pad_id] * int(p) + t for p, t in zip(pad, tokens)], device=device)
        cols = np.arange(L)[None] - pad[:, None]
        mask = torch.from_numpy((cols >= 0).astype(np.int64)).to(device)
        return x, pad, mask, torch.from_numpy(np.maximum(cols, 0)).to(device)

    def kept_logits(self, at: np.ndarray | None, *, keep_logits: bool
                    ) -> tuple[int | torch.Tensor, Callable[[torch.Tensor], torch.Tensor | None]]:
        """``logits_to_keep`` for a forward, and what makes its result from the logits: each row's
        columns ``at`` (B, k) when given (the head runs on their union unless a site on it is hooked),
        else all the logits when ``keep_logits``, else None."""
        keep: int | torch.Tensor = self._logits_to_keep(0 if keep_logits else 1)
        union = None if at is None or self._head_sites else np.unique(at)  # the columns the head runs on
        if union is not None:
            keep = torch.from_numpy(union).to(self.device)

        def result(logits: torch.Tensor) -> torch.Tensor | None:
            if at is not None:  # each row's positions, from the kept columns (or from all of them)
                return self.xp.take_along_rows(logits, at if union is None else np.searchsorted(union, at))
            return logits if keep_logits else None

        return keep, result

    # -- generation --------------------------------------------------------------------------
    def sampling(
        self, *, temp: float = 0.0, top_p: float = 0.0, min_p: float = 0.0, top_k: int = 0,
        repetition_penalty: float | None = None, repetition_context_size: int = 20,
        logits_processors: list | None = None, sampler: Any = None, seed: int | None = None, **kwargs: Any,
    ) -> tuple[Any, list]:
        """Sampler and logits processors. Samplers take (B, V) log-probabilities, logits
        processors ``(tokens 1-D, logits (1, V))`` tensors; ``seed`` seeds a private
        ``torch.Generator`` (the global RNG is left alone). mlx-lm-only options raise ValueError."""
        if kwargs:
            raise ValueError(f"unsupported option(s) for the torch backend: {', '.join(sorted(kwargs))}")
        if sampler is None:
            gen = torch.Generator(device=self.device).manual_seed(int(seed)) if seed is not None else None
            sampler = make_sampler(temp, top_p, min_p, top_k, generator=gen)
        return sampler, make_logits_processors(repetition_penalty, repetition_context_size) + list(logits_processors or [])

    def stream(self, tokens: list[int], *, max_tokens: int, prefill_step_size: int = 2048,
                prompt_cache: Any = None, **options: Any) -> Iterator[GenerationResponse]:
        """The generation loop, step for step like mlx-lm's (options: see :meth:`sampling`);
        ``prompt_cache`` (from :meth:`make_prompt_cache`) carries a conversation across calls."""
        sampler, processors = self.sampling(**options)
        yield from self._responses(tokens, max_tokens, sampler, processors, prefill_step_size, prompt_cache)

    def make_prompt_cache(self) -> Any:
        """An empty KV cache to pass as ``prompt_cache=`` and reuse across turns."""
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config)

    def cache_offset(self, cache: Any) -> int:
        return int(cache.get_seq_length())

    def generate_rows(self, tokens: list[list[int]], *, max_tokens: int, prefill_step_size: int = 2048,
                       **options: Any) -> Iterator[RowStep]:
        """Every row in one left-padded batch with a shared KV cache; rows stop at EOS or
        ``max_tokens`` (finished rows ride along until the batch is done, their tokens unused)."""
        sampler, processors = self.sampling(**options)
        lengths = [len(t) for t in tokens]
        pad = [max(lengths) - n for n in lengths]
        with self.state.laid_out(Layout(lengths, pad)):
            yield from generate_rows(self.model, tokens, max_tokens=max_tokens, sampler=sampler,
                                     logits_processors=processors, prefill_step_size=prefill_step_size,
                                     pad_id=self.prompts.pad_id, eos=self.eos_token_ids,
                                     logits_to_keep=self._logits_to_keep)

    def batch_loop(self, *, completion_batch_size: int = 32, prefill_batch_size: int = 8,
                   prefill_step_size: int = 2048, max_kv_size: int | None = None) -> CohortLoop:
        """Cohorts of sequences as a continuous batch's loop (see :class:`~.batch_loop.CohortLoop`);
        ``max_kv_size`` (mlx-lm's rotating cache) has no torch counterpart."""
        if max_kv_size is not None:
            raise ValueError(f"max_kv_size={max_kv_size!r} is an option of the MLX backend (mlx-lm's rotating "
                             "KV cache); the torch backend keeps the whole cache: leave it unset")
        return CohortLoop(self.model, pad_id=self.prompts.pad_id, eos=self.eos_token_ids,
                          logits_to_keep=self._logits_to_keep, completion_batch_size=completion_batch_size,
                          prefill_batch_size=prefill_batch_size, prefill_step_size=prefill_step_size)

    def gather_recordings(self, recorders: Sequence[Mapping[str, Recorder]]) -> None:
        """A whole model's recordings are already this process's: nothing to gather."""

    def _responses(self, tokens: list[int], max_tokens: int, sampler: Any, processors: list,
                   prefill_step_size: int, prompt_cache: Any = None) -> Iterator[GenerationResponse]:
        """mlx-lm's ``stream_generate`` protocol: stop at EOS (reported, not added to the text).
        The text of each response is filled in by the engine's loop (:func:`~mlx_steer.engine.generation.stream_steps`)."""
        P = len(tokens)
        steps = generate_step(self.model, tokens, max_tokens=max_tokens, sampler=sampler,
                              logits_processors=processors, prefill_step_size=prefill_step_size,
                              prompt_cache=prompt_cache, logits_to_keep=self._logits_to_keep)
        for n, (token, logprobs) in enumerate(steps):
            if token in self.eos_token_ids:
                break
            if n + 1 == max_tokens:
                break
            yield GenerationResponse("", token, logprobs, P, n + 1)
        steps.close()
        reason = "stop" if token in self.eos_token_ids else "length"
        yield GenerationResponse("", token, logprobs, P, n + 1, reason)

    # -- unembedding -------------------------------------------------------------------------
    @property
    def unembedding_path(self) -> str:
        """Path of the module mapping the final residual to logits (``lm_head``; tied or not)."""
        head = self.model.get_output_embeddings() if hasattr(self.model, "get_output_embeddings") else None
        path = next((n for n, m in self.modules.items() if m is head and n), None)
        if path is None:
            raise ValueError(f"cannot find the unembedding: {type(self.model).__name__} has no output embeddings")
        return path

    @property
    def eos_token_ids(self) -> set[int]:
        """Token ids that end generation (tokenizer, generation config and model config)."""
        return self._eos_ids

    def unembed(self, x: np.ndarray, norm_path: str | None) -> torch.Tensor:
        h = torch.from_numpy(x.copy()).to(self.device, self.dtype)
        with torch.no_grad():  # .forward, not __call__: user hooks on the norm or head must not run
            if norm_path is not None:
                h = self.modules[norm_path].forward(h)
            return self.modules[self.unembedding_path].forward(h)

    def differentiate(self, fn: Any, inputs: Sequence[np.ndarray]) -> tuple[torch.Tensor, Any, list[np.ndarray | None]]:
        from .gradients import differentiate

        return differentiate(self, fn, inputs)

    def ban_tokens_processor(self, token_ids: Sequence[int]) -> Any:
        """A logits processor for :meth:`stream_generate` that makes ``token_ids`` impossible."""
        ids = sorted({int(t) for t in token_ids})

        def processor(tokens: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
            V = logits.shape[-1]
            return logits.index_fill(-1, torch.tensor([i for i in ids if 0 <= i < V], dtype=torch.long,
                                                      device=logits.device), float("-inf"))

        return processor


    # -- exporting edits -----------------------------------------------------------------------------
    @property
    def model_type(self) -> str | None:
        return getattr(self.model.config, "model_type", None)

    @property
    def embedding_path(self) -> str:
        emb = self.model.get_input_embeddings()
        return next(n for n, m in self.modules.items() if m is emb and n)

    @property
    def tied_embedding(self) -> str | None:
        emb, head = self.model.get_input_embeddings(), self.model.get_output_embeddings()
        return self.embedding_path if head is not None and head.weight is emb.weight else None

    @property
    def can_untie(self) -> bool:
        return True  # the head is its own module; the config says whether the loader ties it

    def dense(self, path: str) -> Dense:
        return writing.dense(self.modules[path], path)

    def write_model(self, folder: Path, baked: Baked, *, dtype: str | None) -> None:
        writing.write_model(folder, self.model, self.modules, self.tokenizer, baked, dtype=dtype)


if TYPE_CHECKING:
    def _implements(backend: TorchBackend) -> Backend:  # mypy checks TorchBackend against the protocol
        return backend
