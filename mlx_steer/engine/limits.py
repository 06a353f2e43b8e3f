"""Limits a call is checked against before anything is installed: loop options (seeds among them),
the positions a learned position table has, and the context length a model's config declares."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["CONTEXT_KEYS", "SEED_MAX", "check_length", "check_loop", "check_seed", "declared_context"]

# the seeds MLX (mx.random.seed, mx.random.key), torch (manual_seed) and numpy (default_rng) all take
SEED_MAX = 2**64 - 1
# where model configs give their context window (a transformers config, mlx-lm's config.json)
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "n_ctx", "max_sequence_length")


def check_loop(max_tokens: object, options: Mapping[str, Any]) -> None:
    """Loop options are checked at the call, before anything is installed or computed."""
    for name, value in (("max_tokens", max_tokens), ("prefill_step_size", options.get("prefill_step_size", 1))):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if options.get("seed") is not None:
        check_seed(options["seed"])


def check_seed(seed: object, *, name: str = "seed") -> int:
    """``seed`` as an int every backend's generator and numpy take: 0..2**64-1 (not a bool).

    Raises:
        ValueError: naming the value and the valid range.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"{name} must be an int in 0..2**64-1, got {seed!r}")
    if not 0 <= int(seed) <= SEED_MAX:
        raise ValueError(f"{name} {int(seed)} out of range; valid: 0..2**64-1")
    return int(seed)


def check_length(max_positions: int | None, n_tokens: int, what: str, *,
                 source: str = "positions (a learned position table)") -> None:
    """Refuse sequences longer than a learned position table (GPT-2-style models), or than the
    context length ``max_positions`` another ``source`` gives."""
    if max_positions is not None and n_tokens > max_positions:
        raise ValueError(f"{what} is {n_tokens} tokens but this model has {max_positions} {source}; "
                         f"at most {max_positions} tokens fit")


def declared_context(config: object) -> int | None:
    """The context window a model config declares (a dict, or a transformers config), also under its
    ``text_config``; None when it does not say."""
    to_dict = getattr(config, "to_dict", None)  # a transformers PretrainedConfig
    if not isinstance(config, Mapping) and callable(to_dict):
        config = to_dict()
    if not isinstance(config, Mapping):
        return None
    for cfg in (config, config.get("text_config") or {}):
        for key in CONTEXT_KEYS:
            value = cfg.get(key) if isinstance(cfg, Mapping) else None
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None
