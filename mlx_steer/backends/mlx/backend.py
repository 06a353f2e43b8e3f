"""MLXBackend: an mlx-lm model as the engine sees it (:class:`~mlx_steer.engine.protocols.Backend`):
modules patched per instance, one left-padded forward, mlx-lm's generation loops and sampling."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

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
from .batch_loop import GeneratorLoop, generate_rows
from .logit_cut import logits_at
from .sampling import batch_sampling, left_padding, make_sampling

if TYPE_CHECKING:
    from ...engine.protocols import Backend

__all__ = ["MLXBackend"]


class MLXBackend(MappedTree):
    """The MLX backend of a model (see :class:`~mlx_steer.engine.protocols.Backend`).

    Args:
        model: An mlx-lm ``Model`` (anything with a ``layers`` property).
        tokenizer: Its mlx-lm ``TokenizerWrapper`` (or HF tokenizer).
        model_id: Name stored in vector files.
        config: The model folder's config (what ``mlx_lm.load(..., return_config=True)`` gives); an
            export writes it.
    """

    distributed: str | None = None  # a whole model (ShardedMLXBackend: split over ranks)

    def __init__(self, model: nn.Module, tokenizer: Any, *, model_id: str | None = None,
                 config: dict | None = None):
        self.model, self.tokenizer, self.model_id, self.config = model, tokenizer, model_id, config
        args = getattr(model, "args", None)
        self.hidden_size, self.n_heads = model_sizes(args)
        self.xp = XP
        self.state = PositionState(XP, tokenizer=tokenizer)
        self._padded_batches: dict[int, bool] = {}  # batch size -> padded batches are right
        self._map_tree()

    def _map_tree(self) -> None:
        """Read the module tree (again when it changed, e.g. ``nn.quantize`` after loading)."""
        model = self.model
        self._slots = slots_of(model, is_module=lambda v: isinstance(v, nn.Module), children=lambda m: m)
        self._modules = modules = dict(model.named_modules())
        by_id = {id(m): n for n, m in modules.items()}
        missing = [i for i, layer in enumerate(model.layers) if id(layer) not in by_id]
        if missing:
            raise ValueError(f"decoder layers {missing} are not in the model tree")
        self._layer_paths = [by_id[id(layer)] for layer in model.layers]
        self._resolver = PathResolver(list(modules), self._layer_paths)
        self.dtype = _activation_dtype(model)
        self.vocab_size = _vocab_size(model, modules)
        table = position_table_path(list(modules))
        self.max_positions = None if table is None else int(modules[table].weight.shape[0])
        self.prompts = PromptEncoder(self.tokenizer, vocab_size=self.vocab_size)

    def _hooked(self, module: Any) -> bool:
        return hk.is_patched(module)

    # -- sites -----------------------------------------------------------------------------------
    def site_dim(self, path: str, point: str) -> int | None:
        return _site_dim(self.modules[path], point, self.hidden_size)

    def site_heads(self, path: str, point: str) -> int | None:
        # heads sit side by side on an attention output projection's input
        module = self.modules[path]
        linear = isinstance(module, (nn.Linear, nn.QuantizedLinear))
        return self.n_heads if point == "input" and linear and is_attention_output(path) else None

    def attach(self, path: str, point: str, fn: Any) -> Any:
        module = self.modules[path]
        entry = hk.Entry(before=hk.on_first_arg(fn)) if point == "input" else hk.Entry(after=hk.on_output(fn))
        hk.attach(module, entry)
        return lambda: hk.detach(module, entry)

    def attach_tracker(self) -> Any:
        entry = hk.position_tracker(self.state)
        hk.attach(self.model, entry)
        return lambda: hk.detach(self.model, entry)

    def bypass(self, path: str, fn: Any) -> Any:
        module = self.modules[path]
        entry = hk.Entry(instead=fn)
        hk.attach(module, entry)
        return lambda: hk.detach(module, entry)

    def attach_patterns(self, layers: Sequence[int], sink: Any) -> Any:
        from .attention_patterns import attach_patterns

        return attach_patterns(self.modules, self.layer_paths, layers, sink, model_type=self.model_type)

    def forward(self, tokens: list[list[int]], recorders: Mapping[str, Recorder], *,
                keep_logits: bool, positions: np.ndarray | None = None) -> mx.array | None:
        lengths = [len(t) for t in tokens]
        L = max(lengths)
        pad = [L - n for n in lengths]

        def run() -> mx.array:
            if any(pad) and not self._batch_padding_works(pad):
                return self._forward_rows(tokens, recorders)
            x = mx.array([[self.prompts.pad_id] * p + t for p, t in zip(pad, tokens)])
            cache = self._batch_cache(pad) if any(pad) else None
            with self.state.laid_out(Layout(lengths, pad)):
                return self.model(x, cache=cache)

        # (B, k) absolute positions whose logits are kept: the head then runs on those positions only
        logits = logits_at(self, positions if keep_logits else None, run, lambda at: padded_columns(at, pad))
        results = [a for a in (r.result() for r in recorders.values()) if a is not None]
        mx.eval(results + ([logits] if keep_logits else []))
        return logits if keep_logits else None

    def _batch_padding_works(self, pad: list[int]) -> bool:
        """Whether a left-padded batch of this size gives the rows' own results.

        Checked by value, once per batch size, on a 2-token probe: mlx-lm's gemma2 raises for some
        batch sizes and silently misaligns its mask when the batch size equals its KV-head count.
        """
        B = len(pad)
        ok = self._padded_batches.get(B)
        if ok is None:
            # identical 2-token rows, alternately padded: the reference is two single-row forwards
            probe_pad = [b % 2 for b in range(B)]
            x = mx.array([[0] * p + [3, 4][p:] for p in probe_pad])
            with hk.bypassed(self.modules.values()):
                try:
                    batch = self.model(x, cache=self._batch_cache(probe_pad))[:, -1]
                    single = mx.concatenate([self.model(mx.array([[3, 4][p:]]))[:, -1] for p in (0, 1)])
                    expected = single[mx.array(probe_pad)]
                    diff = float(mx.abs(batch - expected).max())
                    ok = diff <= 2e-2 * max(float(mx.abs(single).max()), 1.0)
                except ValueError as exc:
                    if "batch KV cache" in str(exc):
                        raise
                    ok = False
            self._padded_batches[B] = ok
        return ok

    def _forward_rows(self, tokens: list[list[int]], recorders: Mapping[str, Recorder]) -> mx.array:
        """Run rows one at a time and left-pad the results as a padded batch would be."""
        per_row: dict[str, list] = {k: [] for k in recorders}
        logits = []
        for row, t in enumerate(tokens):
            for r in recorders.values():
                r.reset()
            with self.state.laid_out(Layout([len(t)], rows=[row])):
                logits.append(self.model(mx.array([t])))  # (1, len(t), V), or (1, k, V) cut at the norm
            for k, r in recorders.items():
                per_row[k].append(r.result())
        for k, r in recorders.items():
            rows = per_row[k]
            if all(a is not None for a in rows):
                n = max(a.shape[1] for a in rows)
                r.set_result(mx.concatenate([_left_pad(a, n) if a.ndim == 3 else a for a in rows], axis=0))
        width = max(a.shape[1] for a in logits)
        return mx.concatenate([_left_pad(a, width) for a in logits], axis=0)

    def _batch_cache(self, pad: list[int]) -> list:
        from mlx_lm.models import cache as C

        base = self.model.make_cache() if hasattr(self.model, "make_cache") else [C.KVCache() for _ in self.model.layers]
        out: list[C.BatchKVCache | C.BatchRotatingKVCache] = []
        for c in base:
            if type(c) is C.KVCache:
                out.append(C.BatchKVCache(left_padding=pad))
            elif type(c) is C.RotatingKVCache:
                out.append(C.BatchRotatingKVCache(max_size=c.max_size, left_padding=pad))
            else:
                raise ValueError(
                    f"prompts of different lengths need a batch KV cache; {type(c).__name__} has none. "
                    "Pass prompts of equal length or one at a time."
                )
        return out

    # -- generation --------------------------------------------------------------------------
    def stream(self, tokens: list[int], *, max_tokens: int, prefill_step_size: int = 2048,
               **options: Any) -> Iterator[Any]:
        """mlx-lm's own loop; options other than sampling go to ``mlx_lm.stream_generate``
        (e.g. ``max_kv_size``)."""
        from mlx_lm import stream_generate

        sampler, processors, rest = make_sampling(**options)
        yield from stream_generate(
            self.model, self.tokenizer, mx.array(tokens), max_tokens=max_tokens, sampler=sampler,
            logits_processors=processors, prefill_step_size=prefill_step_size, **rest,
        )

    def generate_rows(self, tokens: list[list[int]], *, max_tokens: int, prefill_step_size: int = 2048,
                      **options: Any) -> Iterator[RowStep]:
        """mlx-lm's ``BatchGenerator`` over every row at once (row by row where this model's
        padded batches are wrong, see :meth:`_batch_padding_works`)."""
        sampler, processors = batch_sampling(**options)
        pad = left_padding(tokens)
        if len(tokens) > 1 and any(pad) and not self._batch_padding_works(pad):
            for row, t in enumerate(tokens):
                with self.state.laid_out(Layout([len(t)], rows=[row])):
                    for r in self.stream(t, max_tokens=max_tokens, sampler=sampler,
                                         logits_processors=processors, prefill_step_size=prefill_step_size):
                        yield RowStep(row, int(r.token), r.finish_reason)
            return
        yield from generate_rows(self.model, self.state, tokens, max_tokens=max_tokens, sampler=sampler,
                                 processors=processors, prefill_step_size=prefill_step_size,
                                 stop_tokens=sorted(self.eos_token_ids))

    def make_prompt_cache(self) -> list[Any]:
        """An empty KV cache (mlx-lm's) to pass as ``prompt_cache=`` and reuse across turns."""
        from mlx_lm.models.cache import make_prompt_cache

        return make_prompt_cache(self.model)

    def cache_offset(self, cache: Any) -> int:
        return int(cache[0].offset) if cache else 0

    def sampling(self, **options: Any) -> tuple[Any, list]:
        """mlx-lm's sampler and logits processors for sampling options (others raise ValueError)."""
        sampler, processors, rest = make_sampling(**options)
        if rest:
            raise ValueError(f"unsupported sampling option(s): {', '.join(sorted(rest))}")
        return sampler, processors

    def batch_loop(self, *, completion_batch_size: int = 32, prefill_batch_size: int = 8,
                   prefill_step_size: int = 2048, max_kv_size: int | None = None) -> GeneratorLoop:
        """mlx-lm's ``BatchGenerator`` as a continuous batch's loop (options as for it)."""
        return GeneratorLoop(self.model, eos=self.eos_token_ids, completion_batch_size=completion_batch_size,
                             prefill_batch_size=prefill_batch_size, prefill_step_size=prefill_step_size,
                             max_kv_size=max_kv_size)

    def gather_recordings(self, recorders: Sequence[Mapping[str, Recorder]]) -> None:
        """A whole model's recordings are already this process's: nothing to gather."""

    # -- unembedding -------------------------------------------------------------------------
    _HEAD_NAMES = ("lm_head", "output", "embed_out")
    _EMBED_NAMES = ("embed_tokens", "wte", "word_embeddings", "tok_embeddings", "token_embeddings",
                    "embedding", "embeddings")

    @property
    def unembedding_path(self) -> str:
        """Path of the module mapping the final residual to logits: the LM head, or (tied
        weights) the token embedding, used through ``as_linear``."""
        for name in self._HEAD_NAMES:
            if isinstance(self.modules.get(name), (nn.Linear, nn.QuantizedLinear)):
                return name
        embeds = [n for n, m in self.modules.items() if isinstance(m, (nn.Embedding, nn.QuantizedEmbedding))]
        vocab = getattr(getattr(self.model, "args", None), "vocab_size", None)
        sized = [n for n in embeds if vocab is None or self.modules[n].weight.shape[0] == vocab]
        named = [n for n in sized if n.rsplit(".", 1)[-1] in self._EMBED_NAMES]
        if not (named or sized):
            raise ValueError(
                f"cannot find the unembedding: no head named {', '.join(self._HEAD_NAMES)} and no "
                f"token embedding with {vocab} rows among {embeds or 'no embeddings'}"
            )
        return (named or sized)[0]

    def unembed(self, x: np.ndarray, norm_path: str | None) -> mx.array:
        h = mx.array(x).astype(self.dtype)
        head = self.modules[self.unembedding_path]
        with hk.bypassed(self.modules.values()):  # user hooks on the norm or head must not touch this
            if norm_path is not None:
                h = self.modules[norm_path](h)
            return head(h) if isinstance(head, (nn.Linear, nn.QuantizedLinear)) else head.as_linear(h)

    @property
    def eos_token_ids(self) -> set[int]:
        """Token ids that end generation."""
        ids = getattr(self.tokenizer, "eos_token_ids", None)
        if ids is None:
            eos = getattr(self.tokenizer, "eos_token_id", None)
            ids = [] if eos is None else [eos]
        return {int(i) for i in ids}

    def differentiate(self, fn: Any, inputs: Sequence[np.ndarray]) -> tuple[mx.array, Any, list[np.ndarray | None]]:
        from .gradients import differentiate

        return differentiate(fn, inputs)

    def ban_tokens_processor(self, token_ids: Sequence[int]) -> Any:
        """A logits processor for :meth:`stream_generate` that makes ``token_ids`` impossible."""
        ids = sorted({int(t) for t in token_ids})
        bias_by_vocab: dict[int, mx.array] = {}

        def processor(tokens: mx.array, logits: mx.array) -> mx.array:
            V = logits.shape[-1]
            if V not in bias_by_vocab:
                bias = np.zeros(V, dtype=np.float32)
                bias[[i for i in ids if 0 <= i < V]] = -np.inf
                bias_by_vocab[V] = mx.array(bias)
            return logits + bias_by_vocab[V].astype(logits.dtype)

        return processor


    # -- exporting edits -----------------------------------------------------------------------------
    @property
    def model_type(self) -> str | None:
        return getattr(self.model, "model_type", None) or getattr(getattr(self.model, "args", None), "model_type", None)

    @property
    def embedding_path(self) -> str:
        path = _token_embedding(self.modules)
        if path is None:
            raise ValueError(f"cannot find the token embedding (a module named {', '.join(self._EMBED_NAMES)})")
        return path

    @property
    def tied_embedding(self) -> str | None:
        head = self.unembedding_path
        return head if isinstance(self.modules[head], (nn.Embedding, nn.QuantizedEmbedding)) else None

    @property
    def can_untie(self) -> bool:
        # mlx-lm's architectures with a separate head have a tie_word_embeddings argument
        args = getattr(self.model, "args", None)
        return args is not None and "tie_word_embeddings" in getattr(type(args), "__dataclass_fields__", {})

    def dense(self, path: str) -> Dense:
        return writing.dense(self.modules[path], path)

    def write_model(self, folder: Path, baked: Baked, *, dtype: str | None) -> None:
        writing.write_model(folder, self.model, self.modules, self.tokenizer, self.config, self.model_id, baked,
                            embedding=self.embedding_path, dtype=dtype)


def _left_pad(a: mx.array, length: int) -> mx.array:
    """Zero-pad (1, n, ...) on the left to (1, length, ...)."""
    n = a.shape[1]
    if n == length:
        return a
    return mx.concatenate([mx.zeros((a.shape[0], length - n, *a.shape[2:]), dtype=a.dtype), a], axis=1)


def _token_embedding(modules: dict[str, nn.Module]) -> str | None:
    """Path of the token embedding: the first (quantized) embedding named like one."""
    return next((n for n, m in modules.items() if isinstance(m, (nn.Embedding, nn.QuantizedEmbedding))
                 and n.rsplit(".", 1)[-1] in MLXBackend._EMBED_NAMES), None)


def _vocab_size(model: nn.Module, modules: dict[str, nn.Module]) -> int | None:
    """Rows of the token embedding (token ids must be below it)."""
    path = _token_embedding(modules)
    if path is not None:
        m = modules[path]
        return int(m.num_embeddings) if isinstance(m, nn.QuantizedEmbedding) else int(m.weight.shape[0])
    vocab = getattr(getattr(model, "args", None), "vocab_size", None)
    return None if vocab is None else int(vocab)


def _activation_dtype(model: nn.Module) -> mx.Dtype:
    """The residual stream dtype: the embedding's (its scales' when quantized)."""
    for _, m in model.named_modules():
        if isinstance(m, nn.QuantizedEmbedding):
            return m.scales.dtype
        if isinstance(m, nn.Embedding):
            return m.weight.dtype
    return mx.float32


def _site_dim(module: nn.Module, point: str, hidden: int) -> int | None:
    """Activation size at a site when it can be known before running (None otherwise)."""
    if isinstance(module, nn.QuantizedLinear):
        out_dim, packed = module.weight.shape
        return out_dim if point == "output" else packed * 32 // module.bits
    if isinstance(module, nn.Linear):
        out_dim, in_dim = module.weight.shape
        return out_dim if point == "output" else in_dim
    if isinstance(module, (nn.Embedding, nn.QuantizedEmbedding)):
        return hidden if point == "output" else None
    return hidden



if TYPE_CHECKING:
    def _implements(backend: MLXBackend) -> Backend:  # mypy checks MLXBackend against the protocol
        return backend
