"""The ``mlx-steer`` entry point: :func:`main` and :func:`build_parser`, over the command modules
(each a :class:`Command`; ``demo`` passes its options through to the demo's own parser)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Protocol

from ..serve import command as serve  # import-free too: FastAPI loads when serving
from . import calibrate, demo, doctor, evaluate, export, extract, generate, heads, inspect, lens, patch, record, sae, sweep
from .arguments import BACKENDS, RAW, add_commands, report_error, usage_error


class Command(Protocol):
    """What a command module gives (read-only): its help, the shared option groups it takes
    (see :func:`.arguments.option_groups`), its options and its handler."""

    @property
    def SUMMARY(self) -> str: ...
    @property
    def OPTION_GROUPS(self) -> tuple[str, ...]: ...
    @property
    def EXAMPLES(self) -> str: ...
    def fill(self, sp: argparse.ArgumentParser) -> None: ...
    def run(self, args: argparse.Namespace) -> int: ...


# name -> command module, in the order `mlx-steer --help` lists them
COMMANDS: dict[str, Command] = {"extract": extract, "record": record, "generate": generate, "sweep": sweep,
                                "evaluate": evaluate, "calibrate": calibrate, "patch": patch, "lens": lens, "heads": heads, "inspect": inspect, "export": export, "sae": sae, "serve": serve,
                                "doctor": doctor}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``mlx-steer`` command line.

    Args:
        argv: Arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        0 on success, 2 on a user error (message on stderr), 1 on a missing optional dependency.
    """
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "demo":
        return demo.run(extra)
    if extra:
        usage_error(args, f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.run(args)
    except (ValueError, KeyError, OSError) as exc:
        if isinstance(exc, BrokenPipeError):  # e.g. piped into `head`
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
        return report_error(exc, 2)
    except ImportError as exc:
        return report_error(exc, 1)
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    ap = argparse.ArgumentParser(
        prog="mlx-steer", formatter_class=RAW,
        description="Activation steering for mlx-lm (and transformers) models.",
        epilog="run 'mlx-steer COMMAND --help' for a command's options and examples",
    )
    ap.add_argument("--backend", choices=BACKENDS, default="mlx",
                    help="mlx (mlx-lm, default) or torch (Hugging Face transformers)")
    ap.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_commands(sub, COMMANDS)
    sp = sub.add_parser("demo", help=demo.SUMMARY, description=demo.SUMMARY, add_help=False,
                        formatter_class=RAW, epilog=demo.EXAMPLES)
    sp.set_defaults(parser=sp)
    return ap


def _version() -> str:
    from .. import __version__

    return __version__
