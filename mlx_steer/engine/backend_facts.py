"""What a model is, read from the backend it holds: its framework model, tokenizer, modules, layers,
sizes, positions state and limits (:class:`BackendFacts`, the base of the model class)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .arrays import ArrayOps
    from .paths import PathResolver
    from .positions import PositionState
    from .prompts import PromptEncoder
    from .protocols import Backend

__all__ = ["BackendFacts"]


class BackendFacts:
    """Read-only facts of the backend a model holds (``backend``), under the model's own names."""

    def __init__(self, backend: Backend):
        self.backend = backend

    @property
    def model(self) -> Any:
        """The framework's own model: an mlx-lm ``Model``, a transformers ``PreTrainedModel``."""
        return self.backend.model

    @property
    def tokenizer(self) -> Any:
        return self.backend.tokenizer

    @property
    def model_id(self) -> str | None:
        return self.backend.model_id

    @property
    def modules(self) -> dict[str, Any]:
        return self.backend.modules

    @property
    def layer_paths(self) -> list[str]:
        return self.backend.layer_paths

    @property
    def hidden_size(self) -> int:
        return self.backend.hidden_size

    @property
    def n_heads(self) -> int | None:
        return self.backend.n_heads

    @property
    def resolver(self) -> PathResolver:
        return self.backend.resolver

    @property
    def state(self) -> PositionState:
        return self.backend.state

    @property
    def prompts(self) -> PromptEncoder:
        return self.backend.prompts

    @property
    def xp(self) -> ArrayOps:
        return self.backend.xp

    @property
    def vocab_size(self) -> int | None:
        """Rows of the input embedding."""
        return self.backend.vocab_size

    @property
    def max_positions(self) -> int | None:
        """Rows of a learned position table (None: rotary, no hard limit)."""
        return self.backend.max_positions

    @property
    def context_length(self) -> int | None:
        """The context window: a learned position table's rows, else what the model's config declares
        (the ``config.json`` the MLX backend read, a transformers model's config); None: unknown."""
        from .limits import declared_context

        config = getattr(self.backend, "config", None)  # MLX: the config dict it was loaded with
        return self.max_positions or declared_context(config if config is not None else
                                                      getattr(self.model, "config", None))

    @property
    def distributed(self) -> str | None:
        """``"tensor"`` or ``"pipeline"`` for a model sharded over ranks; None when whole."""
        return self.backend.distributed

    @property
    def unembedding_path(self) -> str:
        """Path of the module mapping the final residual to logits."""
        return self.backend.unembedding_path

    @property
    def eos_token_ids(self) -> set[int]:
        """Token ids that end generation."""
        return self.backend.eos_token_ids
