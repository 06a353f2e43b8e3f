"""ShardedMLXBackend and ShardedSteerableModel: a model sharded over ``mx.distributed`` ranks by
mlx-lm, steered by the same site paths as the whole model.

Tensor parallelism (``model.shard(group)``): every rank holds every layer, with attention heads
and MLP columns split; the residual stream between blocks is all-reduced, so it is the same on
every rank and a block-output intervention acts identically everywhere. A site that holds only
this rank's part of a tensor (the output of an all-to-sharded projection such as ``q_proj``, the
input of a sharded-to-all one such as ``o_proj``) is refused.

Pipeline parallelism (``model.model.pipeline(group)``): each rank holds a run of whole layers
(mlx-lm gives rank 0 the last ones). Paths and ``layers.i`` keep meaning the whole model's layer
i on every rank; an intervention is installed only on the rank holding its layer, and what a
forward records there is all-reduced so every rank (rank 0 included) gets it; what a generation
records there, once the generation ends.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ...engine.model import Steerable
from ...engine.paths import PathResolver
from ...engine.recording import Recorder
from .backend import MLXBackend
from .model import MLXSteerableModel

if TYPE_CHECKING:
    from ...engine.protocols import Backend

__all__ = ["MODES", "ShardedMLXBackend", "ShardedSteerableModel", "load_sharded"]

MODES = ("tensor", "pipeline")
_SHARDED_OUT = ("AllToShardedLinear", "QuantizedAllToShardedLinear")  # output: this rank's columns
_SHARDED_IN = ("ShardedToAllLinear", "QuantizedShardedToAllLinear")  # input: this rank's columns


def load_sharded(path_or_hf_repo: str, mode: str, *, group: Any = None, **kwargs: Any) -> ShardedSteerableModel:
    """Load with mlx-lm (lazily), shard with mlx-lm's own ``shard``/``pipeline``, then read the
    weights this rank keeps. Every rank of ``group`` (default ``mx.distributed.init()``) must call it.

    Raises:
        ValueError: unknown mode, or an architecture mlx-lm cannot shard that way.
    """
    from mlx_lm import load as mlx_load

    if mode not in MODES:
        raise ValueError(f"unknown distributed mode {mode!r}; valid: {', '.join(MODES)}")
    group = group if group is not None else mx.distributed.init()
    kwargs.pop("lazy", None)
    model, tokenizer = mlx_load(str(path_or_hf_repo), lazy=True, **kwargs)  # type: ignore[misc]
    names = [n for n, _ in model.named_modules() if n]
    n_layers = len(model.layers)
    kind = getattr(model, "model_type", type(model).__module__.rsplit(".", 1)[-1])
    if mode == "tensor":
        if not hasattr(model, "shard"):
            raise ValueError(f"mlx-lm's {kind} model has no tensor parallelism (no shard()); "
                             "try distributed='pipeline'")
        model.shard(group)
    else:
        if not hasattr(getattr(model, "model", None), "pipeline"):
            raise ValueError(f"mlx-lm's {kind} model has no pipeline parallelism (no pipeline()); "
                             "try distributed='tensor'")
        model.model.pipeline(group)
    mx.eval(model.parameters())
    mx.eval(mx.distributed.all_sum(mx.array(1.0), group=group, stream=mx.cpu))  # every rank is ready
    return ShardedSteerableModel(model, tokenizer, mode=mode, group=group, names=names, n_layers=n_layers,
                                 model_id=str(path_or_hf_repo))


class ShardedSteerableModel(MLXSteerableModel):
    """A :class:`MLXSteerableModel` whose mlx-lm model is sharded over ``group`` (see the module doc):
    the engine's model holding a :class:`ShardedMLXBackend`.

    Every rank must make the same calls with the same arguments: each forward is collective.
    """

    backend: ShardedMLXBackend

    def __init__(self, model: nn.Module, tokenizer: Any, *, mode: str, group: Any, names: list[str],
                 n_layers: int, model_id: str | None = None):
        Steerable.__init__(self, ShardedMLXBackend(model, tokenizer, mode=mode, group=group, names=names,
                                                   n_layers=n_layers, model_id=model_id))

    @property
    def distributed(self) -> str:
        """``"tensor"`` or ``"pipeline"``."""
        return self.backend.mode

    @property
    def group(self) -> Any:
        return self.backend.group

    @property
    def rank(self) -> int:
        """This rank."""
        return self.backend.rank

    @property
    def world_size(self) -> int:
        """Number of ranks."""
        return self.backend.world_size

    @property
    def layer_owner(self) -> list[int]:
        """For pipelining, the rank holding each layer."""
        return self.backend.layer_owner


class ShardedMLXBackend(MLXBackend):
    """The MLX backend of a sharded model: sites resolved against the whole model, interventions
    installed where their layer lives, recordings gathered to every rank.

    Attributes:
        mode: ``"tensor"`` or ``"pipeline"``.
        rank: This rank.
        world_size: Number of ranks.
        layer_owner: For pipelining, the rank holding each layer.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, *, mode: str, group: Any, names: list[str],
                 n_layers: int, model_id: str | None = None):
        super().__init__(model, tokenizer, model_id=model_id)
        self.mode, self.group = mode, group
        self.distributed = mode
        self.rank, self.world_size = group.rank(), group.size()
        self.layer_owner: list[int] = [self.rank] * n_layers
        if mode == "pipeline":
            inner = model.model
            local = range(inner.start_idx, inner.end_idx)
            self._container = self.layer_paths[0].rsplit(".", 1)[0]
            self._first_local = local.start
            mine = np.zeros(n_layers, dtype=np.float32)
            mine[list(local)] = self.rank + 1
            owner = mx.distributed.all_sum(mx.array(mine), group=group, stream=mx.cpu)
            self.layer_owner = [int(r) - 1 for r in np.array(owner)]
            self.layer_paths = [f"{self._container}.{i}" for i in range(n_layers)]
            self.resolver = PathResolver(names, self.layer_paths)

    def _check_tree(self) -> None:
        # the map is the whole model's, read across ranks when loaded: it cannot be read again here
        if any(container[key] is not value for container, key, value in self._slots):
            raise ValueError("this sharded model's module tree changed after loading (e.g. nn.quantize): its "
                             "sites map no longer holds; load it again (quantized) instead")

    # -- where a site lives --------------------------------------------------------------------
    def _layer_of(self, path: str) -> int | None:
        if self.distributed != "pipeline" or not path.startswith(self._container + "."):
            return None
        return int(path[len(self._container) + 1 :].split(".", 1)[0])

    def _twin(self, path: str) -> str:
        """This rank's module with the same structure as ``path`` (the path itself when local):
        a layer held elsewhere is validated against a local layer, so every rank agrees."""
        i = self._layer_of(path)
        if i is None or path in self.modules:
            return path
        rest = path[len(f"{self._container}.{i}") :]
        return f"{self._container}.{self._first_local}{rest}"

    def _check_site(self, path: str, point: str) -> None:
        kind = type(self.modules[self._twin(path)]).__name__
        if (point == "output" and kind in _SHARDED_OUT) or (point == "input" and kind in _SHARDED_IN):
            raise ValueError(
                f"site {path}:{point} is sharded by tensor parallelism: each of the {self.world_size} ranks "
                f"holds only its own part of it ({kind}); steer or record an unsharded site such as the "
                "block output (layers.i), the attention or MLP output, or load the model whole"
            )

    # -- sites -----------------------------------------------------------------------------------
    def site_dim(self, path: str, point: str) -> int | None:
        self._check_site(path, point)
        return super().site_dim(self._twin(path), point)

    def site_heads(self, path: str, point: str) -> int | None:
        return super().site_heads(self._twin(path), point)

    def attach(self, path: str, point: str, fn: Any) -> Any:
        self._check_site(path, point)
        if path not in self.modules:  # pipeline: the layer is on another rank, which runs fn
            return lambda: None
        return super().attach(path, point, fn)

    def _batch_padding_works(self, pad: list[int]) -> bool:
        if self.distributed != "pipeline":
            return super()._batch_padding_works(pad)
        # the probe builds one graph of several forwards; under pipelining each forward sends and
        # receives, and one graph can pair a send of one forward with a receive of another
        model = self.model
        self.model = _EachCallEvaluated(model)  # type: ignore[assignment]  # duck-typed for the probe
        try:
            return super()._batch_padding_works(pad)
        finally:
            self.model = model

    def forward(self, tokens: list[list[int]], recorders: Mapping[str, Recorder], *,
                keep_logits: bool, positions: np.ndarray | None = None) -> mx.array | None:
        logits = super().forward(tokens, recorders, keep_logits=keep_logits, positions=positions)
        if self.distributed == "pipeline":
            self._share(recorders)
        return logits

    def gather_recordings(self, recorders: Sequence[Mapping[str, Recorder]]) -> None:
        """Pipelined, what each layer's rank recorded reaches every rank (every rank made the same
        calls: the same recorders, in order)."""
        if self.distributed == "pipeline":
            for each in recorders:
                self._share(each)

    def _share(self, recorders: Mapping[str, Recorder]) -> None:
        """Give every rank what the owner of each recorded layer recorded (two all-sums a site:
        the shape, then the values; the other ranks add zeros)."""
        for key in sorted(recorders):
            path = key.split(":", 1)[0]
            i = self._layer_of(path)
            if i is None:
                continue
            recorder = recorders[key]
            owner = self.layer_owner[i] == self.rank
            value = recorder.result() if owner else None
            shape = np.zeros(5, dtype=np.float32)
            if value is not None:
                shape[0], shape[1 : 1 + value.ndim] = value.ndim, value.shape
            shape = np.array(mx.distributed.all_sum(mx.array(shape), group=self.group, stream=mx.cpu)).astype(int)
            if not shape[0]:
                continue
            dims = tuple(int(d) for d in shape[1 : 1 + shape[0]])
            local = value if value is not None else mx.zeros(dims, dtype=mx.float32)
            summed = mx.distributed.all_sum(local.astype(mx.float32), group=self.group, stream=mx.cpu)
            if not owner:
                recorder.set_result(summed)
            mx.eval(summed)


class _EachCallEvaluated:
    """Stands in for a model: calls it and evaluates the result before returning it."""

    def __init__(self, model: nn.Module):
        self._model = model

    def __call__(self, *args: Any, **kwargs: Any) -> mx.array:
        out = self._model(*args, **kwargs)
        mx.eval(out)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


if TYPE_CHECKING:
    def _implements(backend: ShardedMLXBackend) -> Backend:  # mypy checks it against the protocol
        return backend
