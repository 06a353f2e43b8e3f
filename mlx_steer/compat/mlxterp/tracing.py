"""Tracing: ``with model.trace(...) as trace:`` runs one forward on entry and keeps its logits and
recorded activations; ``model.output`` and ``model.layers[i].output`` read them inside the block."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import mlx.core as mx

from ...backends.mlx import SteerableModel
from .translation import MODULE_PREFIX, native_interventions, native_key, token_rows


class OutputProxy:
    """A value read inside a trace; ``save()`` stores it in the trace and returns it."""

    def __init__(self, value: mx.array, name: str, trace: Trace):
        self._value, self._name, self._trace = value, name, trace

    def save(self) -> mx.array:
        self._trace.saved_values[self._name] = self._value
        return self._value

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._value, name)

    def __repr__(self) -> str:
        return f"OutputProxy({self._name})"


class Trace:
    """``with model.trace(inputs, interventions={...}) as trace:`` — runs the forward on entry.

    Args:
        steerable: The model that runs.
        inputs, interventions: As :meth:`InterpretableModel.trace` takes them.
        open_traces: The model's open traces: the trace is on it inside the block, innermost last.

    Attributes (filled on entry, kept after the block):
        output: Logits, (B, L, V).
        activations: ``{"model." + module path: (B, L, D)}`` for every decoder layer and
            intervened site, after the site's interventions.
        saved_values: What ``.save()`` stored, by name.
        tokens: The token ids of each row (rows are left-padded to the longest).
    """

    def __init__(self, steerable: SteerableModel, inputs: object, interventions: Mapping | None,
                 open_traces: list[Trace]):
        self._steerable, self._inputs, self._interventions = steerable, inputs, interventions
        self._open_traces = open_traces
        self.output: mx.array | None = None
        self.activations: dict[str, mx.array] = {}
        self.saved_values: dict[str, mx.array] = {}
        self.tokens: list[list[int]] = []

    def __enter__(self) -> Trace:
        steerable = self._steerable
        native = native_interventions(steerable, self._interventions)  # validated before anything runs
        record = list(dict.fromkeys([*steerable.layer_paths, *(native or {})]))
        result = steerable.run(token_rows(self._inputs), record=record, interventions=native)
        self.output, self.tokens = result.logits, result.tokens
        self.activations = {MODULE_PREFIX + key: result.activations[key] for key in result.activations}
        self._open_traces.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self._open_traces.remove(self)

    def get(self, name: str) -> mx.array | None:
        """A value saved with ``.save()`` (e.g. ``"layers.3.output"``), or None."""
        return self.saved_values.get(name)

    def get_activation(self, name: str) -> mx.array | None:
        """A recorded activation by mlxterp name (``model.model.layers.3``) or short form, or None."""
        if name in self.activations:
            return self.activations[name]
        try:
            key = MODULE_PREFIX + self._steerable.resolve_key(native_key(self._steerable, name))
        except ValueError:
            return None
        return self.activations.get(key)

    def __repr__(self) -> str:
        return f"Trace(saved_values={len(self.saved_values)}, activations={len(self.activations)})"


def current_trace(open_traces: list[Trace], what: str) -> Trace:
    """The innermost open trace; ``what`` (``model.output``...) names the read in the error."""
    if not open_traces:
        raise RuntimeError(f"{what} is only available inside `with model.trace(...):`")
    return open_traces[-1]


class _LayerProxy:
    """``model.layers[i]``: ``.output`` inside a trace; other attributes are the layer's."""

    def __init__(self, layers: LayerList, index: int):
        self._layers, self._index = layers, index

    @property
    def output(self) -> OutputProxy:
        layers, i = self._layers, self._index
        trace = current_trace(layers.open_traces, f"{layers.layer_attr}[{i}].output")
        value = trace.activations[MODULE_PREFIX + layers.steerable.layer_paths[i]]
        return OutputProxy(value, f"{layers.layer_attr}.{i}.output", trace)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._layers.steerable.model.layers[self._index](*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._layers.steerable.model.layers[self._index], name)

    def __repr__(self) -> str:
        return f"ModuleProxy({self._layers.layer_attr}.{self._index})"


class LayerList(Sequence):
    """``model.layers``: one proxy per decoder layer (``model.layers[i].output`` in a trace).

    Args:
        steerable: The model whose layers these are.
        layer_attr: The name saved layer outputs go by (``layers.3.output``).
        open_traces: The model's open traces, innermost last.
    """

    def __init__(self, steerable: SteerableModel, layer_attr: str, open_traces: list[Trace]):
        self.steerable, self.layer_attr, self.open_traces = steerable, layer_attr, open_traces

    def __len__(self) -> int:
        return self.steerable.num_layers

    def __getitem__(self, index: Any) -> Any:
        n = len(self)
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(n))]
        if not -n <= index < n:
            raise IndexError(f"layer {index} out of range for a {n}-layer model; valid: {-n}..{n - 1}")
        return _LayerProxy(self, index % n)

    def __repr__(self) -> str:
        return f"LayerListProxy(length={len(self)})"
