"""What every runnable example in ``examples/`` starts with: its command line (``--model``, ``--quick``)
and the model folder it runs on (the offline SmolLM2-135M-Instruct unless ``--model`` names another)."""

from __future__ import annotations

import argparse

__all__ = ["example_args", "example_model_path", "example_parser"]


def example_parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser described by the docstring's first line, with ``--model`` and ``--quick``."""
    ap = argparse.ArgumentParser(description=(doc or "").split("\n")[0])
    ap.add_argument("--model", help="model folder (default: SmolLM2-135M-Instruct, prepared offline)")
    ap.add_argument("--quick", action="store_true", help="tiny settings (for tests)")
    return ap


def example_args(argv: list[str] | None, doc: str | None) -> argparse.Namespace:
    """``argv`` parsed by :func:`example_parser` (an example with options of its own builds the parser)."""
    return example_parser(doc).parse_args(argv)


def example_model_path(args: argparse.Namespace) -> str:
    """``--model``, or the offline SmolLM2-135M-Instruct (prepared on first use)."""
    from .real_model import prepare_smollm2

    return args.model or str(prepare_smollm2(verbose=False))
