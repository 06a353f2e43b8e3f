"""What the analyses need from a model: the public surface both backends' steerable models share.

Analyses are written once against :class:`AnalysisModel`; ``mlx_steer.SteerableModel`` and
``mlx_steer.torch_backend.TorchSteerableModel`` both satisfy it structurally.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from ..paths import Site


class TraceLike(Protocol):
    """What :meth:`AnalysisModel.run` returns."""

    @property
    def activations(self) -> Mapping[str, Any]:
        """Recorded (B, T, D) arrays by site key."""
        ...

    @property
    def logits(self) -> Any:
        """(B, L, V) logits (None when run with ``logits=False``)."""
        ...

    @property
    def padding(self) -> Sequence[int]:
        """Left padding of each row."""
        ...


@runtime_checkable
class AnalysisModel(Protocol):
    """A steerable model of either backend, as the analyses use it (public methods only)."""

    @property
    def tokenizer(self) -> Any: ...

    @property
    def eos_token_ids(self) -> Collection[int]: ...

    def resolve(self, site: str | Site) -> Site: ...

    def resolve_path(self, path: str) -> str: ...

    def encode(
        self, prompt: str | Sequence[int], *, chat: bool = False, system: str | None = None
    ) -> list[int]: ...

    def run(
        self,
        prompts: str | Sequence[str] | Sequence[Sequence[int]],
        *,
        record: object = None,
        interventions: Mapping | Any = None,
        record_positions: object = "all",
        logits: bool = True,
        chat: bool = False,
    ) -> TraceLike: ...

    def stream_generate(
        self,
        prompt: str | Sequence[int],
        *,
        max_tokens: int = 256,
        interventions: Mapping | Any = None,
        record: object = None,
        record_positions: object = "last",
        hooks_out: list | None = None,
        **options: Any,
    ) -> Iterator[Any]: ...

    def unembed(self, vectors: np.ndarray, *, final_norm: bool = False) -> np.ndarray: ...

    def ban_tokens_processor(self, token_ids: Sequence[int]) -> Any: ...

    @staticmethod
    def to_numpy(x: Any) -> np.ndarray: ...
