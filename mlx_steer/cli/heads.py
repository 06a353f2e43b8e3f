"""``mlx-steer heads``: a group of attention-head analyses, one subcommand per module
(:data:`SUBCOMMANDS`; ``heads scores`` is :mod:`.heads_scores`). A subcommand module gives what a
command gives (``SUMMARY``, ``OPTION_GROUPS``, ``EXAMPLES``, ``fill``, ``run``); adding one is a
module and a line in :data:`SUBCOMMANDS`."""

from __future__ import annotations

import argparse

from . import heads_probe, heads_scores
from .arguments import add_commands

SUMMARY = "attention heads: scores per layer x head (induction, previous-token, sink), ITI probe accuracies"
OPTION_GROUPS: tuple[str, ...] = ()
EXAMPLES = """\
examples:
  mlx-steer heads scores ./my-model --kind induction --top 5
  mlx-steer heads scores ./my-model --kind previous --out previous.csv --plot previous.png
  mlx-steer heads probe ./my-model --pos honest.txt --neg dishonest.txt --top 5"""

# name -> subcommand module, in the order `mlx-steer heads --help` lists them
SUBCOMMANDS = {"scores": heads_scores, "probe": heads_probe}


def fill(sp: argparse.ArgumentParser) -> None:
    """Add the ``heads`` subcommands to its subparser."""
    add_commands(sp.add_subparsers(dest="heads_command", required=True, metavar="SUBCOMMAND"), SUBCOMMANDS)


def run(args: argparse.Namespace) -> int:
    """``mlx-steer heads SUBCOMMAND``: the subcommand's handler."""
    return SUBCOMMANDS[args.heads_command].run(args)
