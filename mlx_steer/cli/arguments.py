"""What the commands share on the argument side: the option groups several commands take, the
option types (a bad value is a usage error, exit 2, before anything loads), and how usage and
user errors are reported. Imports nothing heavy, so argument errors stay fast."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping
from typing import Any, NoReturn

from ..engine.limits import SEED_MAX  # numpy only, which the package has loaded already
from ..extraction.method_table import METHODS  # import-free: argument errors stay fast

BACKENDS = ("mlx", "torch")
RAW = argparse.RawDescriptionHelpFormatter


# -- errors ------------------------------------------------------------------------------------
def report_error(exc: BaseException, code: int) -> int:
    """Print ``error: ...`` for ``exc`` to stderr and return ``code``."""
    # str(KeyError("x")) is "'x'": use the message itself
    msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    print(f"error: {msg}", file=sys.stderr)
    return code


def usage_error(args: argparse.Namespace, message: str) -> NoReturn:
    """Exit with status 2, printing ``message`` under the (sub)command's usage line."""
    parser: argparse.ArgumentParser = args.parser
    parser.error(message)


def check_chat(args: argparse.Namespace) -> None:
    """--system and --assistant-prefix only with --chat."""
    given = [f"--{n.replace('_', '-')}" for n in ("system", "assistant_prefix") if getattr(args, n, None) is not None]
    if given and not args.chat:
        usage_error(args, f"{' and '.join(given)} only apply to chat prompts: add --chat, or drop them")


# -- shared options ----------------------------------------------------------------------------
def option_groups() -> dict[str, argparse.ArgumentParser]:
    """The option groups several commands share, as parent parsers: backend, pairs, encode."""
    def parent() -> argparse.ArgumentParser:
        return argparse.ArgumentParser(add_help=False)

    backend = parent()
    g = backend.add_argument_group("backend")
    # SUPPRESS: given after the command it overrides the global option; absent, the global one stands
    g.add_argument("--backend", choices=BACKENDS, default=argparse.SUPPRESS,
                   help="mlx (default) or torch; also accepted before the command")
    g.add_argument("--device", default=None, help="torch backend only: cpu (default), cuda, mps ...")

    pairs = parent()
    g = pairs.add_argument_group("on-the-fly vector (instead of --vector)")
    g.add_argument("--positive", action="append", metavar="TEXT", default=[],
                   help="positive contrast prompt (repeat for several)")
    g.add_argument("--negative", action="append", metavar="TEXT", default=[],
                   help="negative contrast prompt (repeat for several)")
    g.add_argument("--pairs", metavar="FILE", help="contrast pairs from a JSONL or CSV file (see 'extract')")
    add_method_options(g)

    encode = parent()
    g = encode.add_argument_group("prompt format")
    g.add_argument("--chat", action="store_true", help="wrap prompts as a user turn with the chat template")
    g.add_argument("--system", metavar="TEXT", help="system message (with --chat)")
    g.add_argument("--assistant-prefix", metavar="TEXT", help="text that starts the assistant's reply (with --chat)")
    return {"backend": backend, "pairs": pairs, "encode": encode}


def add_commands(sub: Any, commands: Mapping[str, Any]) -> None:
    """A subparser per command module of ``commands`` (name -> module giving ``SUMMARY``,
    ``OPTION_GROUPS``, ``EXAMPLES``, ``fill`` and ``run``), its handler set as ``run``."""
    groups = option_groups()
    for name, command in commands.items():
        sp = sub.add_parser(name, help=command.SUMMARY, description=command.SUMMARY, formatter_class=RAW,
                            epilog=command.EXAMPLES, parents=[groups[g] for g in command.OPTION_GROUPS])
        command.fill(sp)
        sp.set_defaults(run=command.run, parser=sp)


def add_method_options(g: Any) -> None:
    """--method and --read."""
    g.add_argument("--method", choices=list(METHODS), default="mean_diff",
                   help="direction-finding method (default mean_diff)")
    add_read_option(g)


def add_read_option(g: Any) -> None:
    g.add_argument("--read", type=read_spec, default="last", metavar="last|mean|assistant_start|INT",
                   help="which prompt positions are read: the last, their mean, the assistant turn's first, "
                        "or an index (default last)")


def add_model(sp: argparse.ArgumentParser, *, required: bool = True) -> None:
    sp.add_argument("--model", required=required, metavar="PATH_OR_ID",
                    help="model folder or Hugging Face id" + ("" if required else " (checks the vector against it)"))


def add_output(sp: argparse.ArgumentParser, *flags: str, help: str, required: bool = False) -> None:
    sp.add_argument(*flags, required=required, metavar="OUT", help=help)
    sp.add_argument("--force", action="store_true", help="overwrite an existing output file")


def add_reading(sp: argparse.ArgumentParser) -> None:
    """Where and how prompts are read (extract, record)."""
    where = sp.add_mutually_exclusive_group(required=True)
    where.add_argument("--sites", nargs="+", metavar="SITE",
                       help="sites to read, e.g. layers.6 layers.8 or layers.6:input")
    where.add_argument("--layers", nargs="+", type=int, metavar="N", help="decoder layers to read (their outputs)")
    sp.add_argument("--batch-size", type=positive_int, default=16, metavar="N", help="prompts per forward pass (default 16)")
    sp.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                    help="show a progress bar on stderr (default on)")


# -- option types: a bad value is a usage error (exit 2) before anything loads -------------------
def number(text: str, *, kind: type = float, low: float | None = None, high: float | None = None,
           low_open: bool = False) -> Any:
    """``text`` as a finite ``kind`` within [low, high] (``low_open``: strictly above low)."""
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise argparse.ArgumentTypeError(f"must be {'>' if low_open else '>='} {low:g}, got {text}")
    if high is not None and value > high:
        raise argparse.ArgumentTypeError(f"must be <= {high:g}, got {text}")
    return value


def finite(text: str) -> float:
    return number(text)


def positive_int(text: str) -> int:
    return number(text, kind=int, low=1)


def non_negative_int(text: str) -> int:
    return number(text, kind=int, low=0)


def non_negative(text: str) -> float:
    return number(text, low=0)


def probability(text: str) -> float:
    return number(text, low=0, high=1)


def positive(text: str) -> float:
    return number(text, low=0, low_open=True)


def seed(text: str) -> int:
    """A seed every backend takes: an integer in 0..2**64-1 (what MLX, torch and numpy all accept)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer in 0..2**64-1, got {text!r}") from None
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"seed {value} out of range; valid: 0..2**64-1")
    return value


def read_spec(text: str) -> str | int:
    return int(text) if text.lstrip("-").isdigit() else text


def site(text: str) -> str:
    """``6`` -> ``layers.6``; anything else is a site path as typed."""
    return f"layers.{int(text)}" if text.lstrip("-").isdigit() else text


def layer(text: str) -> int | str:
    return int(text) if text.lstrip("-").isdigit() else text
