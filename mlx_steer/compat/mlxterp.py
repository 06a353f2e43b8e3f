"""An mlxterp-compatible facade over :class:`~mlx_steer.SteerableModel`.

mlxterp code runs with only its import changed:

    from mlx_steer.compat.mlxterp import InterpretableModel, interventions as iv

    model = InterpretableModel("path/or/hf-id")
    with model.trace("This product is", interventions={"layers.8": iv.add_vector(v * 2.0)}) as trace:
        logits = model.output.save()
    trace.activations["model.model.layers.8"]       # (1, L, D), after the intervention

What maps onto what:

- ``trace(inputs, interventions=)`` runs one :meth:`SteerableModel.run` on entering the block (as
  mlxterp does) and records every decoder layer's output (plus each intervened site), keyed the
  mlxterp way: ``"model." + module path`` (``model.model.layers.3`` for mlx-lm models).
- Intervention keys are mlxterp's (``layers.3``, ``model.layers.3``, ``model.model.layers.3``,
  ``layers.3.self_attn``) or mlx_steer sites (``layers.3:input``).
- ``interventions`` (``add_vector``, ``scale``, ``zero_out``, ``replace_with``, ``clamp``,
  ``noise``, ``compose``) return callables, as in mlxterp, that carry their mlx_steer equivalent;
  a trace installs the equivalent, so ``iv.add_vector(v)`` steers exactly like
  ``mlx_steer.interventions.add_vector(v)``. Plain callables become ``interventions.custom``;
  mlx_steer interventions are accepted as they are.
- ``generate(...)`` applies the interventions at every step through mlx-lm's cached generation
  loop (mlxterp recomputes the whole sequence per token; the results agree).

Differences from mlxterp, all deliberate: batches of texts are left-padded and masked (mlxterp
right-pads with token 0 unmasked), so ``[:, -1]`` is every row's last real token; only decoder
layers and intervened sites are recorded (mlxterp records every module); vectors are cast to the
activation dtype (a float32 vector does not upcast a bfloat16 stream); ``model.output`` outside a
trace raises instead of returning an empty proxy.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..engine import interventions as _iv
from ..backends.mlx import SteerableModel, load
from ..backends.mlx.arrays import XP
from ..engine.ops import Op, compile_op

__all__ = [
    "GenerationResult", "InterpretableModel", "Intervention", "InterventionComposer", "OutputProxy",
    "Trace", "add_vector", "clamp", "compose", "interventions", "noise", "replace_with", "scale", "zero_out",
]

_PREFIX = "model."  # mlxterp names modules from the wrapped model, called "model"
_OUTPUT = "__model_output__"


# -- interventions ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Intervention:
    """An mlxterp-style intervention: ``fn(activation) -> activation``, carrying the mlx_steer
    interventions that do the same inside a trace.

    Attributes:
        native: mlx_steer interventions, applied in order.
        name: What made it (``add_vector``, ``scale``...), for messages.
    """

    native: tuple[_iv.Intervention, ...]
    name: str
    _compiled: dict[int, list[Op]] = field(default_factory=dict, compare=False, repr=False)

    def __repr__(self) -> str:
        return f"Intervention({self.name}: {', '.join(type(n).__name__ for n in self.native)})"

    def __call__(self, x: mx.array) -> mx.array:
        """Apply to an array directly (mlxterp interventions are plain functions): every
        position of ``x`` is selected."""
        for op in self._ops(x.shape[-1]):
            x = op.apply(x, None)  # type: ignore[arg-type]  # no positions: these ops do not read them
        return x

    def _ops(self, dim: int) -> list[Op]:
        """The compiled ops for activations of size ``dim``, compiled once."""
        ops = self._compiled.get(dim)
        if ops is None:
            ops = self._compiled[dim] = [compile_op(s, xp=XP, site=self.name, dim=dim, n_heads=None)
                                         for s in self.native]
        return ops


def _numpy(value: object) -> np.ndarray:
    if isinstance(value, mx.array):
        return np.array(value.astype(mx.float32))
    return np.asarray(value, dtype=np.float32)


def _flat(v: np.ndarray) -> np.ndarray | None:
    """``v`` as (D,) when it is one vector ((D,), (1, D), (1, 1, D)); None for other shapes."""
    return v.reshape(-1) if v.ndim >= 1 and v.size == v.shape[-1] else None


def _broadcast(name: str, fn: Callable[[mx.array], mx.array]) -> Intervention:
    return Intervention((_iv.custom(fn),), name)


def add_vector(vector: object) -> Intervention:
    """Add ``vector`` (a (D,) steering vector, or any array broadcastable to the activation)."""
    v = _numpy(vector)
    flat = _flat(v)
    if flat is not None:
        return Intervention((_iv.add_vector(flat),), "add_vector")
    arr = mx.array(v)
    return _broadcast("add_vector", lambda x: x + arr.astype(x.dtype))


def scale(factor: float) -> Intervention:
    """Multiply the activation by ``factor``."""
    return Intervention((_iv.scale(factor),), "scale")


def replace_with(value: object) -> Intervention:
    """Replace the activation by a scalar, a (D,) vector, or an array broadcastable to it."""
    if np.isscalar(value):
        return Intervention((_iv.set(float(value)),), "replace_with")  # type: ignore[arg-type]
    v = _numpy(value)
    flat = _flat(v)
    if flat is not None:
        return Intervention((_iv.set(flat),), "replace_with")
    arr = mx.array(v)
    return _broadcast("replace_with", lambda x: mx.broadcast_to(arr.astype(x.dtype), x.shape))


zero_out = Intervention((_iv.zero(),), "zero_out")
"""Zero the activation (used bare, as in mlxterp: ``{"layers.4": iv.zero_out}``)."""


def clamp(min_val: float | None = None, max_val: float | None = None) -> Intervention:
    """Clamp the activation to ``[min_val, max_val]`` (either bound may be None)."""
    if min_val is None and max_val is None:
        raise ValueError("clamp needs min_val, max_val or both")

    def fn(x: mx.array) -> mx.array:
        return mx.clip(x, min_val, max_val)

    return _broadcast("clamp", fn)


def noise(std: float = 0.1) -> Intervention:
    """Add Gaussian noise of standard deviation ``std`` (seed with ``mx.random.seed``)."""
    return _broadcast("noise", lambda x: x + (mx.random.normal(x.shape) * std).astype(x.dtype))


def _as_native(value: object, *, site: str) -> list[_iv.Intervention]:
    """mlx_steer interventions for one ``interventions=`` value."""
    if isinstance(value, Intervention):
        return list(value.native)
    if isinstance(value, _iv.Intervention):
        return [value]
    if isinstance(value, (list, tuple)):
        return [n for item in value for n in _as_native(item, site=site)]
    if callable(value):
        return [_iv.custom(value)]
    raise ValueError(
        f"intervention for {site!r} must be a callable (e.g. interventions.add_vector(v), "
        f"interventions.scale(0.5), interventions.zero_out), got {type(value).__name__}"
    )


class InterventionComposer:
    """Chain interventions: ``compose().add(scale(0.8)).add(add_vector(v)).build()``."""

    def __init__(self) -> None:
        self._parts: list[object] = []

    def add(self, fn: Callable[[mx.array], mx.array]) -> InterventionComposer:
        self._parts.append(fn)
        return self

    def build(self) -> Intervention:
        """One intervention applying the added ones in order."""
        return Intervention(tuple(_as_native(self._parts, site="compose")), "compose")


def compose() -> InterventionComposer:
    """Start a chain of interventions (``compose().add(a).add(b).build()``)."""
    return InterventionComposer()


interventions = SimpleNamespace(
    add_vector=add_vector, scale=scale, replace_with=replace_with, zero_out=zero_out, clamp=clamp,
    noise=noise, compose=compose, InterventionComposer=InterventionComposer,
)
"""mlxterp's ``interventions`` module: ``from mlx_steer.compat.mlxterp import interventions as iv``."""


# -- tracing ------------------------------------------------------------------------------------
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

    Attributes (filled on entry, kept after the block):
        output: Logits, (B, L, V).
        activations: ``{"model." + module path: (B, L, D)}`` for every decoder layer and
            intervened site, after the site's interventions.
        saved_values: What ``.save()`` stored, by name.
        tokens: The token ids of each row (rows are left-padded to the longest).
    """

    def __init__(self, owner: InterpretableModel, inputs: object, interventions: Mapping | None):
        self._owner, self._inputs, self._interventions = owner, inputs, interventions
        self.output: mx.array | None = None
        self.activations: dict[str, mx.array] = {}
        self.saved_values: dict[str, mx.array] = {}
        self.tokens: list[list[int]] = []

    def __enter__(self) -> Trace:
        owner = self._owner
        native = owner._native_interventions(self._interventions)  # validated before anything runs
        record = list(dict.fromkeys([*owner.steerable.layer_paths, *(native or {})]))
        result = owner.steerable.run(owner._token_rows(self._inputs), record=record, interventions=native)
        self.output, self.tokens = result.logits, result.tokens
        self.activations = {_PREFIX + key: result.activations[key] for key in result.activations}
        owner._traces.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self._owner._traces.remove(self)

    def get(self, name: str) -> mx.array | None:
        """A value saved with ``.save()`` (e.g. ``"layers.3.output"``), or None."""
        return self.saved_values.get(name)

    def get_activation(self, name: str) -> mx.array | None:
        """A recorded activation by mlxterp name (``model.model.layers.3``) or short form, or None."""
        if name in self.activations:
            return self.activations[name]
        try:
            key = _PREFIX + self._owner.steerable.resolve_key(self._owner._native_key(name))
        except ValueError:
            return None
        return self.activations.get(key)

    def __repr__(self) -> str:
        return f"Trace(saved_values={len(self.saved_values)}, activations={len(self.activations)})"


class _LayerProxy:
    """``model.layers[i]``: ``.output`` inside a trace; other attributes are the layer's."""

    def __init__(self, owner: InterpretableModel, index: int):
        self._owner, self._index = owner, index

    @property
    def output(self) -> OutputProxy:
        owner, i = self._owner, self._index
        trace = owner._current_trace(f"{owner.layer_attr}[{i}].output")
        value = trace.activations[_PREFIX + owner.steerable.layer_paths[i]]
        return OutputProxy(value, f"{owner.layer_attr}.{i}.output", trace)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._owner.model.layers[self._index](*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._owner.model.layers[self._index], name)

    def __repr__(self) -> str:
        return f"ModuleProxy({self._owner.layer_attr}.{self._index})"


class _LayerList(Sequence):
    def __init__(self, owner: InterpretableModel):
        self._owner = owner

    def __len__(self) -> int:
        return self._owner.steerable.num_layers

    def __getitem__(self, index: Any) -> Any:
        n = len(self)
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(n))]
        if not -n <= index < n:
            raise IndexError(f"layer {index} out of range for a {n}-layer model; valid: {-n}..{n - 1}")
        return _LayerProxy(self._owner, index % n)

    def __repr__(self) -> str:
        return f"LayerListProxy(length={len(self)})"


# -- generation ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class GenerationResult:
    """What :meth:`InterpretableModel.generate` returns.

    Attributes:
        text: The generated text (the continuation only).
        tokens: Generated token ids (stop tokens excluded).
        token_logits: (n, V) raw logits each token was chosen from (None when nothing was generated).
        prompt: The prompt text ("" for token input).
    """

    text: str
    tokens: list[int]
    token_logits: mx.array | None
    prompt: str = ""


# -- the model ----------------------------------------------------------------------------------
class InterpretableModel:
    """mlxterp's ``InterpretableModel`` on top of a :class:`SteerableModel`.

    Args:
        model: A model folder or hub id (loaded with mlx-lm), an mlx-lm ``nn.Module``, or a
            :class:`SteerableModel`.
        tokenizer: The tokenizer (replaces the loaded one when ``model`` is a path).
        layer_attr: Name of the decoder-layer list (``layers``; ``h`` for GPT-2); names saved
            layer outputs (``layers.3.output``). Layers are found through the model's ``layers``
            property, as mlx-lm defines it for every model.

    Raises:
        AttributeError: the model has no attribute ``layer_attr`` (nor ``model.<layer_attr>``).
    """

    def __init__(self, model: nn.Module | str | os.PathLike | SteerableModel, tokenizer: Any = None,
                 layer_attr: str = "layers"):
        if isinstance(model, SteerableModel):
            steerable = model if tokenizer is None else SteerableModel(model.model, tokenizer, model_id=model.model_id)
        elif isinstance(model, (str, os.PathLike)):
            steerable = load(str(model))
            if tokenizer is not None:
                steerable = SteerableModel(steerable.model, tokenizer, model_id=str(model))
        elif isinstance(model, nn.Module):
            steerable = SteerableModel(model, tokenizer)
        else:
            raise ValueError(f"model must be a path, an mlx-lm nn.Module or a SteerableModel, got {type(model).__name__}")
        if not any(_has_path(obj, layer_attr) for obj in (steerable.model, getattr(steerable.model, "model", None))):
            raise AttributeError(
                f"could not find layers attribute {layer_attr!r} (nor model.{layer_attr}) on "
                f"{type(steerable.model).__name__}; decoder layers are at {steerable.resolver.container}"
            )
        self.steerable = steerable
        self.model = steerable.model
        self.tokenizer = steerable.tokenizer
        self.layer_attr = layer_attr
        self.layers = _LayerList(self)
        self._traces: list[Trace] = []

    # -- tracing --------------------------------------------------------------------------------
    def trace(self, inputs: str | Sequence | mx.array, interventions: Mapping | None = None) -> Trace:
        """A tracing context: ``with model.trace(text, interventions={"layers.3": fn}) as trace:``.

        Args:
            inputs: Text, a list of texts, token ids (list or (L,)/(B, L) ``mx.array``), or a
                list of token-id lists.
            interventions: ``{module name: intervention}``; values are facade interventions,
                plain ``fn(x) -> x`` callables, mlx_steer interventions, or lists of them.
        """
        return Trace(self, inputs, interventions)

    @property
    def output(self) -> OutputProxy:
        """The logits of the current trace (``model.output.save()`` inside the block)."""
        trace = self._current_trace("model.output")
        assert trace.output is not None  # a trace runs with logits kept
        return OutputProxy(trace.output, _OUTPUT, trace)

    def _current_trace(self, what: str) -> Trace:
        if not self._traces:
            raise RuntimeError(f"{what} is only available inside `with model.trace(...):`")
        return self._traces[-1]

    def _native_key(self, name: str) -> str:
        """mlxterp's ``model.<path>`` names to mlx_steer paths; other forms pass through."""
        if not isinstance(name, str):
            raise ValueError(f"intervention keys must be module names like 'layers.3', got {name!r}")
        path, sep, point = name.partition(":")
        if path.startswith(_PREFIX) and path[len(_PREFIX):] in self.steerable.modules:
            path = path[len(_PREFIX):]
        return path + sep + point

    def _native_interventions(self, spec: Mapping | None) -> dict[str, list[_iv.Intervention]] | None:
        if spec is None:
            return None
        if not isinstance(spec, Mapping):
            raise ValueError(f"interventions must be a dict {{module name: fn}}, got {type(spec).__name__}")
        out: dict[str, list[_iv.Intervention]] = {}
        for name, value in spec.items():
            key = self.steerable.resolve_key(self._native_key(name))
            out.setdefault(key, []).extend(_as_native(value, site=str(name)))
        return out

    def _token_rows(self, inputs: object) -> list[list[int]] | list[str]:
        if isinstance(inputs, mx.array):
            inputs = inputs.tolist()
        if isinstance(inputs, str):
            return [inputs]
        if isinstance(inputs, (list, tuple)) and inputs:
            if all(isinstance(x, str) for x in inputs):
                return list(inputs)
            if all(isinstance(x, (int, np.integer)) for x in inputs):
                return [[int(x) for x in inputs]]
            if all(isinstance(x, (list, tuple)) for x in inputs):
                return [[int(t) for t in row] for row in inputs]
        raise ValueError(
            f"unsupported input {type(inputs).__name__}: give text, a list of texts, token ids "
            "(a list or an mx.array) or a list of token-id lists"
        )

    # -- generation -----------------------------------------------------------------------------
    def generate(
        self,
        prompt: str | Sequence[int] | mx.array,
        max_tokens: int = 50,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        interventions: Mapping | None = None,
        stop_tokens: Sequence[int] | None = None,
        callback: Callable[[int, int, mx.array], bool] | None = None,
    ) -> GenerationResult:
        """Generate with ``interventions`` applied at every step.

        Args:
            prompt: Text or one sequence of token ids.
            temperature, top_k, top_p: Sampling (0 temperature = greedy; seed with ``mx.random.seed``).
            stop_tokens: Ids that end generation (default: the tokenizer's EOS ids). The
                tokenizer's EOS always ends it (mlx-lm's loop stops there).
            callback: ``callback(step, token_id, logits) -> stop``, called before each token is kept.

        Returns:
            A :class:`GenerationResult`.
        """
        rows = self._token_rows(prompt)
        if len(rows) != 1:
            raise ValueError(f"generate takes one prompt, got {len(rows)}")
        native = self._native_interventions(interventions)
        stops = {int(t) for t in stop_tokens} if stop_tokens is not None else self.steerable.eos_token_ids
        seen: list[mx.array] = []

        def keep_logits(_tokens: mx.array, logits: mx.array) -> mx.array:
            seen.append(logits[0])
            return logits

        tokens: list[int] = []
        stream = self.steerable.stream_generate(
            rows[0], max_tokens=max_tokens, interventions=native, temp=temperature, top_k=top_k,
            top_p=top_p if top_p < 1.0 else 0.0, logits_processors=[keep_logits],
        )
        try:
            for step, response in enumerate(stream):
                token = int(response.token)
                if callback is not None and callback(step, token, seen[step]):
                    break
                if token in stops or response.finish_reason == "stop":
                    break
                tokens.append(token)
        finally:
            stream.close()  # undoes the interventions even when stopped early
        logits = mx.stack(seen[: len(tokens)]) if tokens else None
        return GenerationResult(self.decode(tokens) if tokens else "", tokens, logits,
                                prompt if isinstance(prompt, str) else "")

    # -- tokens ---------------------------------------------------------------------------------
    def _require_tokenizer(self) -> Any:
        if self.tokenizer is None:
            raise ValueError("no tokenizer: pass tokenizer= to InterpretableModel or use token ids")
        return self.tokenizer

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, as a trace encodes it."""
        self._require_tokenizer()
        return self.steerable.encode(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, tokens: Sequence[int] | mx.array) -> str:
        ids = np.asarray(tokens) if isinstance(tokens, mx.array) else tokens
        return self._require_tokenizer().decode([int(t) for t in ids])

    def token_to_str(self, token_id: int) -> str:
        """The text of one token."""
        return self._require_tokenizer().decode([int(token_id)])

    def to_str_tokens(self, inputs: str | Sequence[int] | mx.array) -> list[str]:
        ids = self.encode(inputs) if isinstance(inputs, str) else self._token_rows(inputs)[0]
        if isinstance(ids, str):
            raise ValueError(f"to_str_tokens takes one text or one sequence of token ids, got {inputs!r}")
        return [self.token_to_str(t) for t in ids]

    @property
    def vocab_size(self) -> int | None:
        tok = self.tokenizer
        if tok is None:
            return None
        size = getattr(tok, "vocab_size", None)
        return int(size) if size is not None else len(tok)

    # -- the wrapped model ----------------------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """A plain forward of the wrapped model, no tracing."""
        return self.model(*args, **kwargs)

    def named_modules(self) -> Iterator[tuple[str, nn.Module]]:
        return iter(self.model.named_modules())

    def parameters(self) -> dict:
        return self.model.parameters()

    def __repr__(self) -> str:
        return (f"InterpretableModel(model={type(self.model).__name__}, layers={len(self.layers)}, "
                f"tokenizer={'yes' if self.tokenizer is not None else 'no'})")


def _has_path(obj: object, dotted: str) -> bool:
    for part in dotted.split("."):
        if obj is None or not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True
