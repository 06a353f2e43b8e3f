"""``--positions``: where a command steers, as a name or a span selector written as JSON
(:mod:`mlx_steer.engine.span_json`). A bad value is a usage error (exit 2) before anything loads."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence

from ..engine.positions import as_positions  # numpy only, as arguments.py's imports
from ..engine.span_json import SPAN_KEYS, SPAN_NAMES

EXAMPLE = '\'{"between": ["<think>", "</think>"]}\''


def valid_forms(names: Sequence[str]) -> str:
    return (f"valid: {', '.join([*names, *SPAN_NAMES])}, or a JSON span object with one of the keys "
            f"{', '.join(SPAN_KEYS)}, e.g. {EXAMPLE}")


def position_selector(names: Sequence[str]) -> Callable[[str], str | dict]:
    """An argparse ``type``: one of ``names``, a span name, or a JSON span object (returned parsed).

    Raises (from the returned function):
        argparse.ArgumentTypeError: naming the value and the valid forms.
    """
    def parse(text: str) -> str | dict:
        if text in names or text in SPAN_NAMES:
            return text
        if not text.lstrip().startswith("{"):
            raise argparse.ArgumentTypeError(f"unknown positions {text!r}; {valid_forms(names)}")
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as exc:
            raise argparse.ArgumentTypeError(f"{text!r} is not JSON ({exc.msg} at column {exc.colno}); "
                                             f"{valid_forms(names)}") from None
        try:
            as_positions(spec)
        except (ValueError, TypeError) as exc:
            raise argparse.ArgumentTypeError(f"{text}: {exc}") from None
        return spec

    return parse


def add_positions(sp: argparse.ArgumentParser, *, names: Sequence[str], default: str, help: str) -> None:
    """Add ``--positions`` taking ``names``, the span names and JSON span objects."""
    sp.add_argument("--positions", type=position_selector(names), default=default,
                    metavar="|".join([*names, *SPAN_NAMES]) + "|JSON",
                    help=f"{help}; or a span selector as JSON, e.g. {EXAMPLE} (see docs/spans.md)")
