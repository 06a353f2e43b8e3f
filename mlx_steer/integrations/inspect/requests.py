"""One Inspect generate call -> the server's chat request (:class:`~mlx_steer.serve.schemas.ChatCompletionRequest`),
which the server's planner turns into an engine job.

Steering, per call, first found wins:
1. the generate config's ``extra_body``: ``{"steering": [...], "monitor": [...]}`` (what a client sends
   to ``mlx-steer serve``; e.g. ``generate(state, extra_body={"steering": []})`` runs unsteered);
2. the sample's metadata under ``"mlx_steer"``: the same two keys;
3. the model args (``-M vector=... -M scale=...``).
``steering`` and ``monitor`` are taken separately (a sample may change the steering and keep the
monitors). Whatever the config asks that this model cannot do is refused by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from inspect_ai.model import ChatMessage, GenerateConfig

from .options import ProviderOptions

METADATA_KEY = "mlx_steer"
STEERING_KEYS = ("steering", "monitor")

# GenerateConfig fields with no counterpart here, and the value that means "not asked"
_UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "best_of": (None, 1), "num_choices": (None, 1), "logit_bias": (None, {}), "frequency_penalty": (None, 0, 0.0),
    "presence_penalty": (None, 0, 0.0), "logprobs": (None, False), "top_logprobs": (None,), "prompt_logprobs": (None,),
    "response_schema": (None,), "reasoning_effort": (None,), "reasoning_tokens": (None,), "effort": (None,),
}


class RequestError(ValueError):
    """A generate call this model cannot honour (its message says what and why)."""


def chat_request(messages: list[ChatMessage], config: GenerateConfig, *, options: ProviderOptions,
                 model_id: str, metadata: Mapping[str, Any] | None, has_tools: bool) -> dict[str, Any]:
    """The chat request (a dict for :class:`~mlx_steer.serve.schemas.ChatCompletionRequest`) for one call.

    Raises:
        RequestError: tools, non-text content, or config fields this model cannot honour.
    """
    if has_tools:
        raise RequestError("mlx_steer models do not call tools; run this task without tools")
    for name, unset in _UNSUPPORTED.items():
        value = getattr(config, name, None)
        if value not in unset:
            raise RequestError(f"generate config {name}={value!r} is not supported by mlx_steer models "
                               f"(supported: max_tokens, temperature, top_p, top_k, stop_seqs, seed)")
    request: dict[str, Any] = {"model": model_id, "messages": [_message(m, i) for i, m in enumerate(messages)]}
    for ours, theirs in (("max_tokens", "max_tokens"), ("temperature", "temperature"), ("top_p", "top_p"),
                         ("top_k", "top_k"), ("stop", "stop_seqs"), ("seed", "seed")):
        value = getattr(config, theirs)
        if value is not None:
            request[ours] = float(value) if ours in ("temperature", "top_p") else value
    request.update(steering_fields(config.extra_body, metadata, options))
    return request


def steering_fields(extra_body: Mapping[str, Any] | None, metadata: Mapping[str, Any] | None,
                    options: ProviderOptions) -> dict[str, Any]:
    """``{"steering": [...], "monitor": [...]}`` for one call: ``extra_body``, else the sample's
    metadata, else the model args (each key on its own)."""
    body = _steering_dict(extra_body, "generate config extra_body")
    sample = _steering_dict((metadata or {}).get(METADATA_KEY), f"sample metadata[{METADATA_KEY!r}]")
    defaults = {"steering": [dict(s) for s in options.steering], "monitor": list(options.monitor)}
    out = {}
    for key in STEERING_KEYS:
        value = body[key] if key in body else sample[key] if key in sample else defaults[key]
        if value:
            out[key] = value
    return out


def _steering_dict(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise RequestError(f"{where} must be a dict with steering and/or monitor, got {type(value).__name__}")
    unknown = sorted(set(value) - set(STEERING_KEYS))
    if unknown:
        raise RequestError(f"{where}: unknown key {unknown[0]!r}; valid: {', '.join(STEERING_KEYS)}")
    for key in STEERING_KEYS:
        if key in value and value[key] is not None and not isinstance(value[key], list):
            raise RequestError(f"{where}[{key!r}] must be a list (as the server's {key} field), "
                               f"got {type(value[key]).__name__}")
    return {k: v for k, v in value.items() if v is not None}


def _message(message: ChatMessage, index: int) -> dict[str, str]:
    if message.role == "tool" or getattr(message, "tool_calls", None):
        raise RequestError(f"message {index} is a tool {'result' if message.role == 'tool' else 'call'}; "
                           "mlx_steer models do not call tools")
    if not isinstance(message.content, str) and any(c.type not in ("text", "reasoning") for c in message.content):
        kinds = sorted({c.type for c in message.content} - {"text", "reasoning"})
        raise RequestError(f"message {index} holds {', '.join(kinds)} content; mlx_steer models read text only")
    return {"role": message.role, "content": message.text}
