"""OpenAI response bodies and stream chunks for chat and text completions, built from engine events.

Extensions, all optional: ``steering`` and ``monitor`` (what was applied and read) at the top
level; per choice ``projections`` (``{vector: float}`` per stream chunk, ``{vector: [float, ...]}``
in a whole response, one per generated token) and, with ``return_token_ids``, ``token_ids``. With
``steering``, a whole response's choice (a stream's last chunk) has ``steered_tokens`` (a bool per
generated token); with ``monitor``, ``projection_spans`` (each monitor's projections split into
the reasoning and the answer: :mod:`mlx_steer.serve.steered`); with ``loops``, ``loops`` (the
generation's repetition loops, each with the span it occurred in).
"""

from __future__ import annotations

import math
import time
import uuid
from typing import Any

from .engine import Finished, Token
from .planning import Plan

_FLOOR = -9999.0  # JSON has no -inf: impossible tokens get this log-probability


def _lp(x: float) -> float:
    return x if math.isfinite(x) else _FLOOR


class Format:
    """A response under construction; subclasses say how a choice looks."""

    object = ""
    chunk_object = ""
    prefix = ""

    def __init__(self, plan: Plan, *, model_id: str, decode: Any, token_ids: bool = False):
        self.plan, self.model_id, self.decode, self.token_ids = plan, model_id, decode, token_ids
        self.id = f"{self.prefix}{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.offset = 0  # characters released so far (text_offset of completions logprobs)
        self.streamed: list[Token] = []  # a stream's tokens, for what its last chunk reports on all of them

    # -- what a subclass supplies ----------------------------------------------------------------
    def _delta(self, text: str, *, first: bool = False) -> dict[str, Any]:
        raise NotImplementedError

    def _whole(self, text: str) -> dict[str, Any]:
        raise NotImplementedError

    def _logprobs(self, tokens: list[Token]) -> dict[str, Any] | None:
        raise NotImplementedError

    # -- chunks ----------------------------------------------------------------------------------
    def head(self) -> dict[str, Any]:
        """The first chunk: no text yet, what the request applies."""
        return self._envelope([{"index": 0, **self._delta("", first=True), "logprobs": None, "finish_reason": None}],
                              extras=True)

    def chunk(self, tok: Token) -> dict[str, Any]:
        choice = {"index": 0, **self._delta(tok.text), "logprobs": self._logprobs([tok]), "finish_reason": None}
        self.offset += len(tok.text)
        self.streamed.append(tok)
        if tok.projections:
            choice["projections"] = tok.projections
        if self.token_ids:
            choice["token_ids"] = [tok.token]
        return self._envelope([choice])

    def finish(self, fin: Finished) -> dict[str, Any]:
        choice = {"index": 0, **self._delta(fin.text), "logprobs": None, "finish_reason": fin.reason}
        body = self._envelope([{**choice, **self._spans(self.streamed, fin)}])
        if fin.conditions is not None:
            body["conditions"] = conditions_of(fin.conditions)
        return body

    def usage_chunk(self, completion_tokens: int) -> dict[str, Any]:
        return {**self._envelope([]), "usage": self._usage(completion_tokens)}

    # -- a whole response ------------------------------------------------------------------------
    def response(self, tokens: list[Token], fin: Finished) -> dict[str, Any]:
        choice = {"index": 0, **self._whole(fin.full_text), "logprobs": self._logprobs(tokens),
                  "finish_reason": fin.reason}
        if self.plan.monitor:
            choice["projections"] = {m["vector"]: [t.projections.get(m["vector"]) for t in tokens]
                                     for m in self.plan.monitor}
        if self.token_ids:
            choice["token_ids"] = [t.token for t in tokens]
        body = self._envelope([{**choice, **self._spans(tokens, fin)}], extras=True, stream=False)
        body["usage"] = self._usage(len(tokens))
        if fin.conditions is not None:
            body["conditions"] = conditions_of(fin.conditions)
        return body

    def _spans(self, tokens: list[Token], fin: Finished) -> dict[str, Any]:
        """``steered_tokens`` (with steering) and ``projection_spans`` (with monitors) of a finished choice."""
        spans, out = self.plan.spans, dict[str, Any]()
        if spans is None:
            return out
        prompt, ids = self.plan.job.prompt, [t.token for t in tokens]
        if self.plan.steering is not None:
            decided = conditions_of(fin.conditions) if fin.conditions is not None else None
            out["steered_tokens"] = spans.steered(prompt, ids, decided)
        if self.plan.monitor:
            projections = {m["vector"]: [t.projections.get(m["vector"]) for t in tokens] for m in self.plan.monitor}
            out["projection_spans"] = spans.monitor_split(prompt, ids, projections)
        if self.plan.loops:
            out["loops"] = spans.loops(prompt, ids)
        return out

    def _envelope(self, choices: list[dict], *, extras: bool = False, stream: bool = True) -> dict[str, Any]:
        body: dict[str, Any] = {"id": self.id, "object": self.chunk_object if stream else self.object,
                                "created": self.created, "model": self.model_id, "choices": choices}
        if extras:
            if self.plan.steering is not None:
                body["steering"] = self.plan.steering
            if self.plan.monitor is not None:
                body["monitor"] = self.plan.monitor
        return body

    def _usage(self, completion_tokens: int) -> dict[str, int]:
        p = self.plan.prompt_tokens
        return {"prompt_tokens": p, "completion_tokens": completion_tokens, "total_tokens": p + completion_tokens}

    def _token_text(self, token: int) -> str:
        return self.decode([token])


class ChatFormat(Format):
    object, chunk_object, prefix = "chat.completion", "chat.completion.chunk", "chatcmpl-"

    def _delta(self, text: str, *, first: bool = False) -> dict[str, Any]:
        return {"delta": {"role": "assistant", "content": ""} if first else ({"content": text} if text else {})}

    def _whole(self, text: str) -> dict[str, Any]:
        return {"message": {"role": "assistant", "content": text}}

    def _logprobs(self, tokens: list[Token]) -> dict[str, Any] | None:
        if self.plan.job.top_logprobs is None:
            return None
        return {"content": [{**self._entry(t.token, t.logprob or 0.0),
                             "top_logprobs": [self._entry(i, lp) for i, lp in t.top_logprobs or []]}
                            for t in tokens]}

    def _entry(self, token: int, lp: float) -> dict[str, Any]:
        s = self._token_text(token)
        return {"token": s, "logprob": _lp(lp), "bytes": list(s.encode("utf-8"))}


class CompletionFormat(Format):
    object, chunk_object, prefix = "text_completion", "text_completion", "cmpl-"

    def _delta(self, text: str, *, first: bool = False) -> dict[str, Any]:
        return {"text": text}

    def _whole(self, text: str) -> dict[str, Any]:
        return {"text": text}

    def _logprobs(self, tokens: list[Token]) -> dict[str, Any] | None:
        if self.plan.job.top_logprobs is None:
            return None
        texts = [self._token_text(t.token) for t in tokens]
        offsets, at = [], self.offset
        for t in tokens:
            offsets.append(at)
            at += len(t.text)
        return {"tokens": texts, "token_logprobs": [_lp(t.logprob or 0.0) for t in tokens],
                "top_logprobs": [{self._token_text(i): _lp(lp) for i, lp in t.top_logprobs or []} for t in tokens],
                "text_offset": offsets}


def conditions_of(decided: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Conditional steering's decisions as a response reports them: per steering entry with ``when``,
    ``{"steering": i, "condition_met": bool, "value": measured}``."""
    out = []
    for d in decided:
        for name, value in d["values"].items():  # one condition per entry, named steering[i]
            index = int(name[len("steering["):-1]) if name.startswith("steering[") else name
            out.append({"steering": index, "condition_met": bool(d["met"]), "value": float(value)})
    return sorted(out, key=lambda c: str(c["steering"]).zfill(8))
