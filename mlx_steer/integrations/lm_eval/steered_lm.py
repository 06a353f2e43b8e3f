"""A steered mlx_steer model as an lm-eval ``LM``, registered as ``mlx_steer``:

    lm_eval.simple_evaluate(model="mlx_steer", model_args="pretrained=PATH,vector=v.safetensors,scale=4,layers=6",
                            tasks=[...])
    lm_eval.simple_evaluate(model=SteeredLM(model, vector="v.safetensors", scale=4), tasks=[...])

Every request gets the default steering of ``model_args``; a request whose document holds a mapping
under ``steering_field`` (default ``"mlx_steer"``, e.g. ``{"scale": 8}`` or ``{"vector": null}``)
gets that override instead (lm-eval hands the model each request's document, nothing else per request).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lm_eval import utils as lm_utils  # type: ignore[import-untyped]
from lm_eval.api.model import LM  # type: ignore[import-untyped]
from lm_eval.api.registry import register_model  # type: ignore[import-untyped]

from .generation import GenRequest, gen_options, generate_all
from .scoring import TokenPair, score_pairs
from .steering_args import Steering

__all__ = ["SteeredLM"]

DEFAULT_MAX_LENGTH = 2048


@register_model("mlx_steer")
class SteeredLM(LM):
    """An mlx_steer model (either backend) with a default steering, for lm-eval.

    Args:
        pretrained: A model folder or hub id to load, or an already loaded steerable model.
        backend: ``"mlx"`` (default) or ``"torch"``, for a path; a loaded model keeps its own.
        device: torch only (``cpu``, ``cuda``...). The MLX backend picks its device itself and
            ignores this (lm-eval's CLI passes ``--device``, default ``cuda:0``, to every model).
        vector: A vector file (``.safetensors`` from mlx_steer, or a control-vector ``.gguf``); None
            evaluates the unsteered model.
        scale: The vector's multiplier (default 1).
        layers: Restrict the vector to these layers: an int, a list, ``"6;8"`` or site names.
        batch_size: Rows per forward and per generation batch (default 8).
        max_batch_size: An upper bound on ``batch_size`` (lm-eval passes it with ``--max_batch_size``).
        max_length: Most tokens per scored row (default: the model's context length, else 2048).
        steering_field: The document key holding a request's steering override.

    Raises:
        ValueError: an unknown model_arg, a bad value (named with what is valid), or a vector that
            does not fit the model.
        FileNotFoundError: no vector file or model folder at the given path.
    """

    def __init__(
        self,
        pretrained: Any,
        *,
        backend: str | None = None,
        device: str | None = None,
        vector: str | None = None,
        scale: float | str | None = None,
        layers: Any = None,
        batch_size: int | str | None = None,
        max_batch_size: int | str | None = None,
        max_length: int | str | None = None,
        steering_field: str = "mlx_steer",
    ) -> None:
        super().__init__()
        self.steering = Steering.from_args(vector=vector, scale=scale, layers=layers)
        self.batch_size = min(_positive(batch_size, "batch_size", 8), _positive(max_batch_size, "max_batch_size", 1 << 30))
        if not isinstance(steering_field, str) or not steering_field:
            raise ValueError(f"steering_field={steering_field!r} must be a non-empty document key")
        self.steering_field = steering_field
        self.model = _load(pretrained, backend=backend, device=device)
        self.max_length = _positive(max_length, "max_length", self.model.context_length or DEFAULT_MAX_LENGTH)
        self._vectors: dict[str, Any] = {}
        self._specs: dict[Steering, dict | None] = {}
        self._spec(self.steering)  # a vector that does not fit the model is refused here, before any request

    # -- construction from lm-eval's model_args ----------------------------------------------
    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> SteeredLM:
        """From ``"pretrained=PATH,vector=FILE,scale=4,layers=6"`` (lm-eval's ``model_args``)."""
        return cls.create_from_arg_obj(lm_utils.simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict[str, Any], additional_config: dict[str, Any] | None = None) -> SteeredLM:
        """From a ``model_args`` dict; unknown keys are refused with the valid ones listed."""
        valid = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        unknown = sorted(k for k in arg_dict if k not in valid)
        if unknown:
            raise ValueError(f"unknown mlx_steer model_args {', '.join(unknown)}; valid: {', '.join(valid)}")
        if "pretrained" not in arg_dict:
            raise ValueError("mlx_steer model_args need pretrained=PATH (a model folder or hub id)")
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k in valid}
        return cls(**{**extra, **arg_dict})

    # -- lm-eval's interface -------------------------------------------------------------------
    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """``(log p(continuation | context), is_greedy)`` per request (see :mod:`.scoring`)."""
        pairs = [self._encode_pair(*r.args) for r in requests]
        out = score_pairs(self.model, pairs, [self._request_spec(r) for r in requests],
                          batch_size=self.batch_size, max_length=self.max_length)
        results = [(s.logprob, s.is_greedy) for s in out]
        for r, res in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", r.args, res)
        return results

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Each text's log-likelihood from its first token on (the prefix token before it), in
        disjoint windows of ``max_length`` tokens as lm-eval defines them."""
        pairs, owner, specs = [], [], []
        for i, r in enumerate(requests):
            (text,) = r.args
            tokens = self._raw_encode(text)
            spec = self._request_spec(r)
            for window in lm_utils.get_rolling_token_windows(tokens, self._prefix_id(), self.max_length, 1):
                ctx, cont = lm_utils.make_disjoint_window(window)
                pairs.append(TokenPair(list(ctx), list(cont)))
                owner.append(i)
                specs.append(spec)
        scored = score_pairs(self.model, pairs, specs, batch_size=self.batch_size, max_length=self.max_length)
        totals = [0.0] * len(requests)
        for i, s in zip(owner, scored):
            totals[i] += s.logprob
        for r, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", r.args, total)
        return totals

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Each context's continuation, cut at the first of its ``until`` strings (EOS also stops)."""
        batch = []
        for r in requests:
            context, kwargs = r.args
            until, max_tokens, options = gen_options(kwargs, where=_where(r))
            tokens = self.model.encode(context) if context else [self._prefix_id()]
            keep = max(1, self.max_length - max_tokens)
            batch.append(GenRequest(tokens[-keep:], until, max_tokens, options))
        texts = generate_all(self.model, batch, [self._request_spec(r) for r in requests], batch_size=self.batch_size)
        for r, text in zip(requests, texts):
            self.cache_hook.add_partial("generate_until", r.args, text)
        return texts

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The tokenizer's chat template over ``chat_history`` (lm-eval's ``--apply_chat_template``)."""
        tok = self.model.tokenizer
        if not getattr(tok, "chat_template", None):
            raise ValueError(f"the model {self.tokenizer_name} has no chat template; drop --apply_chat_template")
        return str(tok.apply_chat_template(chat_history, tokenize=False, add_generation_prompt=add_generation_prompt,
                                           continue_final_message=not add_generation_prompt))

    @property
    def tokenizer_name(self) -> str:
        """The model id, for lm-eval's request-cache fingerprint."""
        return str(self.model.model_id or "mlx_steer").replace("/", "__")

    # -- helpers ---------------------------------------------------------------------------------
    def _prefix_id(self) -> int:
        """The token an empty context stands for: BOS, else EOS (lm-eval's prefix token)."""
        tok = self.model.tokenizer
        for name in ("bos_token_id", "eos_token_id"):
            value = getattr(tok, name, None)
            if isinstance(value, int):
                return value
        raise ValueError("the tokenizer has neither a BOS nor an EOS token to stand for an empty context")

    def _raw_encode(self, text: str) -> list[int]:
        """``text``'s tokens without special tokens."""
        return [int(t) for t in self.model.tokenizer.encode(text, add_special_tokens=False)]

    def _encode_pair(self, context: str, continuation: str) -> TokenPair:
        """Context and continuation tokens as lm-eval's HFLM makes them: trailing spaces of the
        context move to the continuation; the continuation's tokens are those of the whole text past
        the context's tokens; an empty context is the prefix token."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        if not context:
            return TokenPair([self._prefix_id()], self._raw_encode(continuation))
        whole = self.model.encode(context + continuation)
        ctx = self.model.encode(context)
        return TokenPair(ctx, whole[len(ctx):])

    def _request_spec(self, request: Any) -> dict | None:
        """The interventions of ``request``: its document's override, else the default steering."""
        doc = getattr(request, "doc", None)
        change = doc.get(self.steering_field) if isinstance(doc, Mapping) else None
        steering = self.steering if change is None else self.steering.override(
            change, where=f"doc[{self.steering_field!r}] of {_where(request)}")
        return self._spec(steering)

    def _spec(self, steering: Steering) -> dict | None:
        if steering not in self._specs:
            self._specs[steering] = steering.interventions(self.model, self._vectors)
        return self._specs[steering]


def _where(request: Any) -> str:
    """How messages name a request: its task and document index."""
    return f"task {getattr(request, 'task_name', None)} doc {getattr(request, 'doc_id', None)}"


def _positive(value: object, name: str, default: int) -> int:
    """``value`` (an int or a numeric string; None: ``default``) as a positive int."""
    if value is None:
        return default
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} is not a positive int; valid: e.g. {name}=8 ('auto' is not supported)")
    return value


def _load(pretrained: Any, *, backend: str | None, device: str | None) -> Any:
    """A path loaded on ``backend``, or a loaded steerable model as it is."""
    if not isinstance(pretrained, (str, Path)):
        if not hasattr(pretrained, "run") or not hasattr(pretrained, "batch_generate"):
            raise ValueError(f"pretrained must be a model folder, a hub id or a loaded mlx_steer model, "
                             f"got {type(pretrained).__name__}")
        if backend is not None:
            raise ValueError(f"backend={backend!r} applies to a path; the loaded model keeps its own backend")
        return pretrained
    from ...loading import BACKENDS, load

    name = backend or "mlx"
    if name not in BACKENDS:
        raise ValueError(f"backend={name!r} is not a backend; valid: {', '.join(BACKENDS)}")
    return load(str(pretrained), backend=name, device=device if name == "torch" else None)
