"""mlxterp's ``InterpretableModel`` on top of a :class:`~mlx_steer.SteerableModel`: tracing,
generation with interventions, tokens, and the wrapped model's own calls."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ...backends.mlx import SteerableModel, load
from .tracing import LayerList, OutputProxy, Trace, current_trace
from .translation import native_interventions, token_rows

_OUTPUT = "__model_output__"


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
        self._traces: list[Trace] = []  # the open traces, innermost last
        self.layers = LayerList(steerable, layer_attr, self._traces)

    # -- tracing --------------------------------------------------------------------------------
    def trace(self, inputs: str | Sequence | mx.array, interventions: Mapping | None = None) -> Trace:
        """A tracing context: ``with model.trace(text, interventions={"layers.3": fn}) as trace:``.

        Args:
            inputs: Text, a list of texts, token ids (list or (L,)/(B, L) ``mx.array``), or a
                list of token-id lists.
            interventions: ``{module name: intervention}``; values are facade interventions,
                plain ``fn(x) -> x`` callables, mlx_steer interventions, or lists of them.
        """
        return Trace(self.steerable, inputs, interventions, self._traces)

    @property
    def output(self) -> OutputProxy:
        """The logits of the current trace (``model.output.save()`` inside the block)."""
        trace = current_trace(self._traces, "model.output")
        assert trace.output is not None  # a trace runs with logits kept
        return OutputProxy(trace.output, _OUTPUT, trace)

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
        rows = token_rows(prompt)
        if len(rows) != 1:
            raise ValueError(f"generate takes one prompt, got {len(rows)}")
        native = native_interventions(self.steerable, interventions)
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
        ids = self.encode(inputs) if isinstance(inputs, str) else token_rows(inputs)[0]
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
