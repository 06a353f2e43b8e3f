"""Typed request bodies: validated at the boundary, before anything reaches the engine.

Field names follow the OpenAI API (and mlx-lm's server for ``top_k``, ``min_p``,
``repetition_penalty``); ``steering``, ``monitor``, ``return_token_ids``, ``loops`` and ``ignore_eos`` (as
in vLLM) are this server's extensions. Numbers are strict (no ``"4"`` for 4, no ``true`` for 1)
and finite (JSON ``NaN`` / ``Infinity`` are refused). Unknown fields are ignored, as OpenAI-compatible servers do, except
the known ones this server cannot honour, which are refused by name.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_STEERING = 16  # steering entries per request
MAX_INLINE = 65536  # floats in one inline vector
MAX_STOP = 4


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="forbid")


class ConditionSpec(_Strict):
    """Steer a request only when its prompt is about something (CAST): the prompt's hidden state at
    ``layer`` (mean over its tokens, or its last token) measured along a registered vector's direction
    (cosine, or projection on the unit direction) and compared with ``threshold``."""

    vector: str
    layer: int | str | None = Field(None, description="default: the vector's first layer")
    threshold: float = Field(ge=-1e6, le=1e6)
    compare: Literal[">", "<"] = ">"
    read: Literal["mean", "last"] = "mean"
    measure: Literal["cosine", "projection"] = "cosine"


class HeadSteeringSpec(_Strict):
    """One attention head's vector (``d_head`` floats), added to that head's output at ``layer``."""

    layer: int
    head: int
    vector: list[float] = Field(min_length=1, max_length=MAX_INLINE)


class SteeringSpec(_Strict):
    """One steering entry: a registered vector's name or an inline direction, scaled.

    ``vector`` and ``positions`` are checked against the model when the request is planned
    (see :mod:`mlx_steer.serve.planning`), where the field at fault is named.
    """

    vector: Any = Field(None, description="a registered vector's name, or an inline list of hidden_size floats")
    sae: str | None = Field(None, description="instead of vector: a registered SAE's name (with feature)")
    feature: int | None = Field(None, ge=0, description="the SAE feature to add (scale) or clamp")
    clamp: float | None = Field(None, ge=-1e4, le=1e4, description="set the SAE feature to this value instead of adding")
    scale: float = Field(1.0, ge=-1e4, le=1e4)
    units: Literal["raw", "calibrated"] = Field("raw", description='"calibrated": scale 1 is the registered '
                                                "vector's calibrated coefficient at each layer (mlx-steer calibrate)")
    layers: list[int | str] | None = Field(None, min_length=1, max_length=512)
    heads: list[HeadSteeringSpec] | None = Field(None, min_length=1, max_length=512,
                                                 description="instead of vector: head steering, "
                                                             '[{"layer": l, "head": h, "vector": [d_head floats]}]')
    positions: Any = Field("all", description='"all" | "last" | "prompt" | "generated" | int | [int, ...] | '
                                              '{"first_generated": n} | {"start": a, "stop": b} | a span '
                                              'selector: "reasoning" | "answer" | "special" | {"between": '
                                              '[open, close], "from_token": n} | {"after": m} | {"before": m} | '
                                              '{"outside": [open, close]} | {"not": s} | {"and": [s, ...]} | '
                                              '{"or": [s, ...]} (markers: text or token ids)')
    when: ConditionSpec | None = Field(None, description="steer only where this holds for the prompt; then "
                                                         "the steering acts on the generated tokens")


class MonitorSpec(_Strict):
    """Stream each token's projection on a registered vector's direction at one layer."""

    vector: str
    layer: int | str | None = None
    before_steering: bool = False


class StreamOptions(_Strict):
    include_usage: bool = False


class GenerationRequest(BaseModel):
    """Fields shared by chat and text completions."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="ignore")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, lt=2**63)
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    steering: list[SteeringSpec] | None = Field(None, max_length=MAX_STEERING)
    monitor: list[str | MonitorSpec] | None = Field(None, max_length=MAX_STEERING)
    return_token_ids: bool = False
    loops: bool = Field(False, description="report each choice's repetition loops (with the span they occurred in)")
    ignore_eos: bool = False

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> list[str]:
        stops = [] if v is None else [v] if isinstance(v, str) else v
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings, got {len(stops)}")
        if any(not s for s in stops):
            raise ValueError("stop strings must not be empty")
        return stops

    @field_validator("n")
    @classmethod
    def _one(cls, v: int) -> int:
        if v != 1:
            raise ValueError(f"only n=1 is supported, got {v}")
        return v

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, v: float) -> float:
        if v != 0.0:
            raise ValueError("not supported (only 0); use repetition_penalty")
        return v


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatCompletionRequest(GenerationRequest):
    """``POST /v1/chat/completions``."""

    messages: list[Message] = Field(min_length=1, max_length=1024)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)


class CompletionRequest(GenerationRequest):
    """``POST /v1/completions``."""

    prompt: str | list[int] | list[str]
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False
    suffix: str | None = None

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, v: bool) -> bool:
        if v:
            raise ValueError("echo is not supported")
        return v

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, v: str | None) -> str | None:
        if v:
            raise ValueError("suffix is not supported")
        return v
