"""LayerSkip: a forward that starts at decoder layer L, its input given, the layers below not run.

Decoder layers ``0 .. L-2`` become the identity and layer ``L-1`` returns the given input of layer
``L`` (for the rows and positions the current call runs), so nothing below ``L`` is computed while
the model's own code still builds the embeddings, masks and positions. The input is typically what
``layers.L:input`` recorded in an earlier unsteered run of the same prompts: then the result equals
the full forward, for any steering at or above layer ``L`` (a sweep steers many copies of the same
prompts above one layer). Sites below ``L`` are refused, since those modules never run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from .host_array import host_array
from .paths import final_norm_path

if TYPE_CHECKING:
    from .plan import SitePlan
    from .protocols import Backend

__all__ = ["LayerSkip", "latest_start"]


class LayerSkip:
    """Checked before anything is installed; :meth:`install` returns the undo functions.

    Args:
        backend: The model's backend.
        layer: The first decoder layer to run, 1 .. layers - 1.
        hidden: Its input, (rows, padded length, hidden size): a numpy array or the backend's.
        rows: The forward's batch rows.
        length: The forward's padded length.
        plans: The forward's site plans (none may sit below ``layer``).

    Raises:
        ValueError: a layer out of range, a ``hidden`` of the wrong shape or kind, or a site
            below ``layer`` (each named).
    """

    def __init__(self, backend: Backend, layer: object, hidden: object, *, rows: int, length: int,
                 plans: Mapping[str, SitePlan]):
        model = backend
        n = len(model.layer_paths)
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 1 <= int(layer) < n:
            raise ValueError(f"from_layer must be a decoder layer index in 1..{n - 1} (the layers below it are "
                             f"skipped), got {layer!r}")
        self.model, self.layer = model, int(layer)
        value: Any = hidden if model.xp.is_array(hidden) else host_array(hidden, what="hidden")
        self.hidden = value
        shape = tuple(int(d) for d in value.shape)
        if shape != (rows, length, model.hidden_size):
            raise ValueError(f"hidden must have shape (rows, padded length, hidden size) = "
                             f"({rows}, {length}, {model.hidden_size}) for this forward, got {shape}")
        outside = [key for key, plan in plans.items() if latest_start(model, plan.site.path) < self.layer]
        if outside:
            raise ValueError(f"from_layer={self.layer} runs only {model.layer_paths[self.layer]} .. "
                             f"{model.layer_paths[-1]}, the final norm and the unembedding, so nothing can be "
                             f"steered or recorded at {', '.join(outside)}")

    def install(self) -> list[Callable[[], None]]:
        """Bypass the layers below; returns the undo functions (call them newest first)."""
        undo: list[Callable[[], None]] = []
        try:
            for path in self.model.layer_paths[: self.layer - 1]:
                undo.append(self.model.bypass(path, lambda h: h))
            undo.append(self.model.bypass(self.model.layer_paths[self.layer - 1], self._input))
        except BaseException:
            for u in reversed(undo):
                u()
            raise
        return undo

    def _input(self, h: Any) -> Any:
        """Layer ``layer``'s input for the rows and positions this call runs (a padded batch runs
        them all; a backend that runs rows one at a time, unpadded, runs one row's last positions)."""
        xp = self.model.xp
        if isinstance(self.hidden, np.ndarray):  # converted once: rows run one at a time reuse it
            self.hidden = xp.constant(self.hidden, like=h)
        value = xp.astype(self.hidden, h)
        rows = np.asarray(self.model.state.rows, dtype=np.int64)
        total, t = int(value.shape[1]), int(h.shape[1])
        if len(rows) == int(value.shape[0]) and np.array_equal(rows, np.arange(len(rows))) and t == total:
            return value
        return value[xp.index(rows, like=h)][:, total - t :]


def latest_start(model: Backend, path: str) -> int:
    """The highest ``from_layer`` at which the module at ``path`` still runs: its decoder layer's
    index; the number of layers for the final norm and the unembedding (they run after every
    layer); 0 for anything else (the embeddings: they run only in a whole forward). A tied
    model's unembedding that is its embedding module (MLX's ``as_linear``) also runs first: 0."""
    head: str | None = model.unembedding_path
    if "embedding" in type(model.modules[model.unembedding_path]).__name__.lower():
        head = None
    after = [p for p in (final_norm_path(model.modules, model.resolver.container), head) if p]
    for i, root in enumerate([*model.layer_paths, *after]):
        if path == root or path.startswith(root + "."):
            return min(i, len(model.layer_paths))
    return 0
