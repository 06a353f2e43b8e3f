"""What a backend provides: the typed protocols the engine is written against.

A backend is a folder under ``mlx_steer/backends/`` whose backend object implements
:class:`Backend` (mypy checks it) and whose batch loop implements :class:`BatchLoop`; the model
class (:class:`~mlx_steer.engine.model.Steerable`) holds a backend and does the planning,
validation, intervention ops and recording itself, once for every backend. Backends never import
each other, and the engine never reaches into a backend beyond these protocols.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from .arrays import Array, ArrayOps, Undo

if TYPE_CHECKING:
    from .layout import SequenceLayout
    from .paths import PathResolver
    from .positions import PositionState
    from .prompts import PromptEncoder
    from .recording import Recorder
    from .results import RowStep
    from ..export.edit import Baked, Dense

__all__ = ["Array", "ArrayOps", "Backend", "BatchLoop", "ModelBackend", "Undo"]


class BatchLoop(Protocol):
    """A backend's continuous-batching scheduler, and the layout that says which sequences each of its
    forwards holds. :class:`~mlx_steer.engine.continuous.ContinuousBatch` holds one."""

    @property
    def layout(self) -> SequenceLayout:
        """Which sequences each forward of the loop holds."""
        ...

    def enqueue(self, prompt: list[int], *, max_tokens: int, sampler: Any, logits_processors: list) -> int:
        """Queue a checked sequence; returns its uid."""
        ...

    def dequeue(self, uid: int) -> None:
        """Drop a sequence, queued or running."""
        ...

    def next(self) -> list[tuple[int, int, Any, str | None]]:
        """Run until some sequence has a token: ``(uid, token, logprobs, finish_reason)`` each."""
        ...

    def close(self) -> None:
        """Release the loop."""
        ...


class Backend(Protocol):
    """One framework's model seen by the engine: its module tree, what attaches functions to modules,
    one padded forward, its generation loops, its sampling, and the unembedding."""

    # -- what the model is ---------------------------------------------------------------------
    @property
    def xp(self) -> ArrayOps:
        """The array functions ops and recorders use."""
        ...

    @property
    def model(self) -> Any:
        """The framework's own model: an mlx-lm ``Model``, a transformers ``PreTrainedModel``."""
        ...

    @property
    def tokenizer(self) -> Any: ...

    @property
    def model_id(self) -> str | None:
        """Name stored in vector files."""
        ...

    @property
    def modules(self) -> dict[str, Any]:
        """Every module by its path."""
        ...

    @property
    def layer_paths(self) -> list[str]:
        """The decoder layers' paths, in order."""
        ...

    @property
    def hidden_size(self) -> int: ...

    @property
    def n_heads(self) -> int | None:
        """Attention heads (None when the config does not say)."""
        ...

    @property
    def resolver(self) -> PathResolver:
        """Turns ``layers.4``-style names into sites of this model."""
        ...

    @property
    def state(self) -> PositionState:
        """The current forward's absolute positions and row keys (its tracker keeps them)."""
        ...

    @property
    def prompts(self) -> PromptEncoder:
        """Text and token ids, checked against the vocabulary."""
        ...

    @property
    def vocab_size(self) -> int | None:
        """Rows of the input embedding."""
        ...

    @property
    def max_positions(self) -> int | None:
        """Rows of a learned position table (None: rotary, no hard limit)."""
        ...

    @property
    def distributed(self) -> str | None:
        """How the model is split over ranks (``"tensor"``, ``"pipeline"``); None when whole."""
        ...

    @property
    def unembedding_path(self) -> str:
        """Path of the module mapping the final residual to logits."""
        ...

    @property
    def eos_token_ids(self) -> set[int]:
        """Token ids that end generation."""
        ...

    # -- sites -----------------------------------------------------------------------------------
    def site_dim(self, path: str, point: str) -> int | None:
        """Activation size at a site when it is known before running (None otherwise); raises
        ValueError for a site this backend cannot steer or record."""
        ...

    def site_heads(self, path: str, point: str) -> int | None:
        """Number of concatenated attention heads at a site (None where heads are not concatenated)."""
        ...

    def attach(self, path: str, point: str, fn: Callable[[Array], Array]) -> Undo:
        """Run ``fn`` on a module's input or output; returns what undoes it."""
        ...

    def attach_tracker(self) -> Undo:
        """Install what computes each forward's absolute positions into :attr:`state`; returns what
        undoes it."""
        ...

    def attach_patterns(self, layers: Sequence[int], sink: Callable[[int, Array], None]) -> Undo:
        """Until undone, every forward calls ``sink(layer, weights)`` with the (B, H, L_q, L_k) float32
        attention weights of each decoder layer in ``layers`` (keys: the whole KV cache), the model's
        output unchanged; raises ValueError, naming it, for an architecture it cannot read."""
        ...

    def bypass(self, path: str, fn: Callable[[Array], Array]) -> Undo:
        """Until undone, a call of the module at ``path`` returns ``fn(hidden)`` (``hidden``: its
        first argument) without running the module; returns what undoes it."""
        ...

    # -- running ---------------------------------------------------------------------------------
    def forward(self, tokens: list[list[int]], recorders: Mapping[str, Recorder], *,
                keep_logits: bool, positions: np.ndarray | None = None) -> Array | None:
        """One forward over left-padded rows (each row's results those of a run alone), the
        recorders' results computed; the (B, L, V) logits when ``keep_logits``, or (B, k, V) at
        ``positions`` ((B, k) absolute positions per row) when given."""
        ...

    def stream(self, tokens: list[int], *, max_tokens: int, **options: Any) -> Iterator[Any]:
        """The generation loop: responses with ``.token``, ``.logprobs``, ``.finish_reason`` (the
        engine fills in ``.text``); options as for ``stream_generate``."""
        ...

    def generate_rows(self, tokens: list[list[int]], *, max_tokens: int, **options: Any) -> Iterator[RowStep]:
        """Every row's tokens (row keys: prompt indices), each row as it would generate alone."""
        ...

    def batch_loop(self, *, completion_batch_size: int = 32, prefill_batch_size: int = 8,
                   prefill_step_size: int = 2048, max_kv_size: int | None = None) -> BatchLoop:
        """A continuous-batching loop: at most ``completion_batch_size`` sequences decoding at once,
        ``prefill_batch_size`` admitted together, prompts prefilled ``prefill_step_size`` tokens at a
        time, a rotating KV cache of ``max_kv_size`` tokens where the backend has one."""
        ...

    def make_prompt_cache(self) -> Any:
        """An empty KV cache to reuse across turns of a conversation."""
        ...

    def cache_offset(self, cache: Any) -> int:
        """Tokens a KV cache already holds."""
        ...

    def sampling(self, **options: Any) -> tuple[Any, list]:
        """The sampler and logits processors for sampling options (``temp, top_p, min_p, top_k,
        repetition_penalty, ...``); unknown options raise ValueError."""
        ...

    def gather_recordings(self, recorders: Sequence[Mapping[str, Recorder]]) -> None:
        """After a generation: make what any rank recorded every rank's result (nothing to do for a
        model that runs whole in one process)."""
        ...

    def unembed(self, x: np.ndarray, norm_path: str | None) -> Array:
        """(K, D) float32 host rows through the final norm (when given) and the unembedding,
        bypassing any installed hooks."""
        ...

    def ban_tokens_processor(self, token_ids: Sequence[int]) -> Any:
        """A logits processor that makes ``token_ids`` impossible."""
        ...

    def differentiate(self, fn: Callable[[list[Array]], tuple[Array, Any]],
                      inputs: Sequence[np.ndarray]) -> tuple[Array, Any, list[np.ndarray | None]]:
        """``fn(arrays) -> (scalar, aux)`` run on ``inputs`` as float32 device arrays with gradients on
        (forwards inside it included); returns the scalar, ``aux``, and d scalar / d each input as
        float32 host arrays (None where the scalar does not depend on an input: autograd was left)."""
        ...

    # -- exporting edits (mlx_steer.export) ------------------------------------------------------------
    @property
    def model_type(self) -> str | None:
        """The config's ``model_type`` (``llama``, ``qwen2``...)."""
        ...

    @property
    def embedding_path(self) -> str:
        """Path of the token embedding."""
        ...

    @property
    def tied_embedding(self) -> str | None:
        """The token embedding's path when it is also the unembedding (tied weights), else None."""
        ...

    @property
    def can_untie(self) -> bool:
        """Whether a written folder can hold the unembedding apart from a tied embedding."""
        ...

    def dense(self, path: str) -> Dense:
        """A linear layer's or embedding's float32 weights as ``y = W x + b`` (ValueError naming the
        module when it is neither, or is quantized)."""
        ...

    def write_model(self, folder: Path, baked: Baked, *, dtype: str | None) -> None:
        """Write this model with ``baked``'s weights and config into the empty ``folder``, as the plain
        framework loads it (weights, config, tokenizer and chat template)."""
        ...


ModelBackend = Backend  # the earlier name, kept
