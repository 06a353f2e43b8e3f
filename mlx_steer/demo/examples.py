"""What every runnable example in ``examples/`` starts with: its settings (quick mode, the model folder
it runs on: the offline SmolLM2-135M-Instruct unless another is named) and, for the tutorials that are
also notebooks, showing a figure.

The scripts parse ``--model``/``--quick`` (:func:`example_args`); the tutorials run both as scripts and
as notebooks, where a kernel's own command line must not be parsed, so :func:`notebook_settings` also
reads ``$MLX_STEER_EXAMPLE_QUICK`` and ``$MLX_STEER_EXAMPLE_MODEL``.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "MODEL_ENV", "QUICK_ENV", "NotebookSettings", "continuation", "example_args", "example_model_path",
    "example_parser", "in_notebook", "notebook_settings", "show",
]

QUICK_ENV = "MLX_STEER_EXAMPLE_QUICK"
MODEL_ENV = "MLX_STEER_EXAMPLE_MODEL"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


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
    return _model_path(args.model)


@dataclass(frozen=True)
class NotebookSettings:
    """What a tutorial runs with.

    Attributes:
        quick: Tiny settings (for tests): a smoke run in seconds.
        model: The model folder; None for the offline SmolLM2-135M-Instruct.
    """

    quick: bool
    model: str | None

    def model_path(self) -> str:
        """``model``, or the offline SmolLM2-135M-Instruct (prepared on first use)."""
        return _model_path(self.model)


def notebook_settings(description: str = "", argv: list[str] | None = None) -> NotebookSettings:
    """The settings of a tutorial that runs both as a notebook and as a script.

    Quick mode comes from ``$MLX_STEER_EXAMPLE_QUICK`` (``1``/``true``/``yes``, or ``0``/``false``/``no``/unset)
    and the model folder from ``$MLX_STEER_EXAMPLE_MODEL``. Outside a Jupyter kernel the command line is
    read too (``--quick``, ``--model PATH``, ``--help``) and wins; inside one it is the kernel's own
    (``-f kernel.json``) and is left alone.

    Args:
        description: The ``--help`` text's first line.
        argv: The command line to read instead of ``sys.argv[1:]`` (ignored inside a kernel).

    Returns:
        A :class:`NotebookSettings`.

    Raises:
        ValueError: ``$MLX_STEER_EXAMPLE_QUICK`` is neither a true nor a false word.
    """
    raw = os.environ.get(QUICK_ENV, "").strip().lower()
    if raw not in _TRUE + _FALSE:
        raise ValueError(f"{QUICK_ENV}={os.environ[QUICK_ENV]!r} is not a yes/no value; "
                         f"valid: {', '.join(v for v in _TRUE + _FALSE if v)} (or unset)")
    quick, model = raw in _TRUE, os.environ.get(MODEL_ENV) or None
    if not in_notebook():
        args = example_parser(description).parse_args(sys.argv[1:] if argv is None else argv)
        quick, model = quick or args.quick, args.model or model
    return NotebookSettings(quick=quick, model=model)


def in_notebook() -> bool:
    """Whether this runs inside a Jupyter kernel (where figures are shown inline)."""
    kernelapp = sys.modules.get("ipykernel.kernelapp")  # imported by every running kernel, rarely otherwise
    return kernelapp is not None and bool(kernelapp.IPKernelApp.initialized())


def show(fig: Figure) -> None:
    """Show ``fig`` inline as a PNG in a notebook; as a script do nothing.

    A script prints its numbers and never opens a window (nor picks a GUI backend: ``fig`` is a plain
    :class:`matplotlib.figure.Figure`, drawn by Agg).
    """
    if not in_notebook():
        return
    from IPython.display import Image, display

    png = io.BytesIO()
    fig.savefig(png, format="png", bbox_inches="tight")
    display(Image(data=png.getvalue(), format="png"))


def continuation(prompt: str, text: str) -> str:
    """A prompt and its generated text on one line, each quoted: ``'I hate you because' + ' of it'``.

    Where the prompt ends and the generation starts stays visible, and so does the generation's own
    leading space (or its lack): a prompt glued to a quoted string (``because"of it``) hides both.
    """
    return f"{prompt!r} + {text!r}"


def _model_path(model: str | None) -> str:
    from .real_model import prepare_smollm2

    return model or str(prepare_smollm2(verbose=False))
