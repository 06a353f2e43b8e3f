"""Limits a call is checked against before anything is installed: loop options, and the positions a
learned position table has."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["check_length", "check_loop"]


def check_loop(max_tokens: object, options: Mapping[str, Any]) -> None:
    """Loop options are checked at the call, before anything is installed or computed."""
    for name, value in (("max_tokens", max_tokens), ("prefill_step_size", options.get("prefill_step_size", 1))):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def check_length(max_positions: int | None, n_tokens: int, what: str) -> None:
    """Refuse sequences longer than a learned position table (GPT-2-style models)."""
    if max_positions is not None and n_tokens > max_positions:
        raise ValueError(f"{what} is {n_tokens} tokens but this model has {max_positions} positions "
                         f"(a learned position table); at most {max_positions} tokens fit")
