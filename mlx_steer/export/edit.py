"""What an export writes, as plain values: a module's new weights (:class:`Dense`) and the whole
edit (:class:`Baked`), handed from the baking to the backend that writes its framework's folder."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Baked", "Dense"]


@dataclass(frozen=True)
class Dense:
    """A linear layer's or embedding's weights as ``y = W x + b``: ``weight`` (out, in) float32 (an
    embedding's is its table transposed, (hidden, vocab)), ``bias`` (out,) or None."""

    weight: np.ndarray
    bias: np.ndarray | None = None


@dataclass
class Baked:
    """What an export writes: new weights per module path, config changes, and what was baked.

    Attributes:
        modules: ``{path: Dense}`` for every changed module.
        config: Config entries to set (e.g. ``mlp_bias: True``).
        bias_modules: Modules that get a zero bias because a config flag gives them one.
        untie: Write the unembedding apart from the embedding (the embedding changed, the head not).
        edits: One record per baked intervention (for ``mlx_steer_edit.json``).
    """

    modules: dict[str, Dense] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    bias_modules: list[str] = field(default_factory=list)
    untie: bool = False
    edits: list[dict[str, Any]] = field(default_factory=list)
