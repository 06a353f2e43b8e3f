"""lm-eval's ``generate_until`` on a steerable model: requests that share their sampling options are
generated together through :meth:`~mlx_steer.engine.model.Steerable.batch_generate` (each row with its
own steering, every row what it would be alone), and each text is cut at the first of its ``until``
strings. Nothing here imports lm_eval.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["GEN_KEYS", "GenRequest", "cut_at", "gen_options", "generate_all"]

GEN_KEYS = ("until", "max_gen_toks", "do_sample", "temperature", "top_p", "top_k", "repetition_penalty")
DEFAULT_MAX_GEN_TOKS = 256


@dataclass(frozen=True)
class GenRequest:
    """One request: the context's tokens, the stop strings, and the batch options (a hashable key)."""

    tokens: list[int]
    until: tuple[str, ...]
    max_tokens: int
    options: tuple[tuple[str, Any], ...]


def cut_at(text: str, until: Sequence[str]) -> str:
    """``text`` up to the first occurrence of any of ``until`` (all of it when none occurs)."""
    cuts = [i for i in (text.find(u) for u in until if u) if i >= 0]
    return text[:min(cuts)] if cuts else text


def gen_options(gen_kwargs: object, *, where: str) -> tuple[tuple[str, ...], int, tuple[tuple[str, Any], ...]]:
    """``(until, max_tokens, sampling options)`` from lm-eval's generation kwargs.

    ``do_sample`` false (the default unless ``temperature`` > 0) is greedy decoding whatever the
    temperature, as in transformers' ``generate``.

    Raises:
        ValueError: a key outside :data:`GEN_KEYS`, or a bad value, naming the request.
    """
    if not isinstance(gen_kwargs, Mapping):
        raise ValueError(f"{where}: generation kwargs must be a mapping, got {gen_kwargs!r}")
    unknown = sorted(str(k) for k in gen_kwargs if k not in GEN_KEYS)
    if unknown:
        raise ValueError(f"{where}: unsupported generation kwarg(s) {', '.join(unknown)}; valid: {', '.join(GEN_KEYS)}")
    until = gen_kwargs.get("until") or []
    until = [until] if isinstance(until, str) else list(until)
    if not all(isinstance(u, str) for u in until):
        raise ValueError(f"{where}: until must be a string or a list of strings, got {gen_kwargs.get('until')!r}")
    max_tokens = gen_kwargs.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"{where}: max_gen_toks must be a positive int, got {max_tokens!r}")
    temperature = float(gen_kwargs.get("temperature", 0.0) or 0.0)
    sample = bool(gen_kwargs.get("do_sample", temperature > 0))
    options: dict[str, Any] = {"temp": temperature if sample else 0.0}
    if sample:
        for key, name in (("top_p", "top_p"), ("top_k", "top_k")):
            if gen_kwargs.get(key) is not None:
                options[name] = gen_kwargs[key]
    if gen_kwargs.get("repetition_penalty") is not None:
        options["repetition_penalty"] = float(gen_kwargs["repetition_penalty"])
    return tuple(until), max_tokens, tuple(sorted(options.items()))


def generate_all(model: Any, requests: Sequence[GenRequest], steering: Sequence[dict | None], *,
                 batch_size: int) -> list[str]:
    """Each request's continuation (cut at its ``until`` strings), in the given order.

    Requests with equal ``max_tokens`` and options run together, ``batch_size`` rows at a time.
    """
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(requests):
        groups.setdefault((r.max_tokens, r.options), []).append(i)
    out = [""] * len(requests)
    for (max_tokens, options), members in groups.items():
        for start in range(0, len(members), batch_size):
            chunk = members[start:start + batch_size]
            spec: Any = None if all(steering[i] is None for i in chunk) else [steering[i] for i in chunk]
            result = model.batch_generate([requests[i].tokens for i in chunk], max_tokens=max_tokens,
                                          interventions=spec, **dict(options))
            for i, text in zip(chunk, result.texts):
                out[i] = cut_at(text, requests[i].until)
    return out
