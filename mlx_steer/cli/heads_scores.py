"""``mlx-steer heads scores``: induction, previous-token or sink scores of every head of a model,
printed best first; with --out the whole table as CSV (or JSON, by the suffix), with --plot its
layers x heads heatmap (PNG)."""

from __future__ import annotations

import argparse

from .arguments import non_negative_int, number, positive_int, seed, usage_error
from .head_tables import table_outputs, write_table

SUMMARY = "score every head: induction (repeated random tokens), previous-token, or attention sink"
OPTION_GROUPS = ("backend",)
EXAMPLES = """\
induction: the mean attention from each token of the second copy of --length random tokens
(repeated twice, after BOS) to the token after its earlier occurrence, over --batch sequences.
previous: the mean attention from each position to the one before it; sink: to position 0 (or, with
--token, to the positions holding that token id). Both read --prompt texts, or without them the
random sequences of induction.

examples:
  mlx-steer heads scores ./my-model --kind induction --top 5
  mlx-steer heads scores ./my-model --kind previous --prompt "The cat sat on the mat" --top 3
  mlx-steer heads scores ./my-model --kind sink --out sink.csv --plot sink.png"""
KINDS = ("induction", "previous", "sink")


def fill(sp: argparse.ArgumentParser) -> None:
    """Add the ``heads scores`` options to its subparser."""
    sp.add_argument("model", metavar="MODEL", help="model folder or Hugging Face id")
    sp.add_argument("--kind", choices=KINDS, default="induction", help="what to score (default induction)")
    sp.add_argument("--top", type=positive_int, default=10, metavar="K",
                    help="heads printed, best first (default 10); --out and --plot get every head")
    sp.add_argument("--layers", nargs="+", type=int, metavar="N", help="decoder layers (default all)")
    sp.add_argument("--length", type=_length, default=50, help="random tokens per copy (default 50)")
    sp.add_argument("--batch", type=positive_int, default=8, help="random sequences (default 8)")
    sp.add_argument("--seed", type=seed, default=0, help="seed of the random tokens (default 0)")
    sp.add_argument("--prompt", action="append", metavar="TEXT",
                    help="previous / sink: a prompt to read (repeat for several; default the random sequences)")
    sp.add_argument("--token", type=non_negative_int, metavar="ID", help="sink: score attention to this token id")
    sp.add_argument("--out", metavar="FILE", help="write every head's score: .csv or .json")
    sp.add_argument("--plot", metavar="FILE", help="write the layers x heads heatmap (PNG)")
    sp.add_argument("--force", action="store_true", help="overwrite --out and --plot files")
    sp.add_argument("--json", action="store_true", help="print the top heads as JSON")


def run(args: argparse.Namespace) -> int:
    """``mlx-steer heads scores``."""
    from .loading import load_model

    if args.kind == "induction" and args.prompt:
        usage_error(args, "--prompt does not apply to --kind induction (it reads repeated random tokens)")
    if args.token is not None and args.kind != "sink":
        usage_error(args, f"--token applies to --kind sink only, not {args.kind}")
    out, plot = table_outputs(args)
    from ..heads import head_scores

    model = load_model(args.model, backend=getattr(args, "backend", "mlx"), device=args.device)
    table = head_scores(model, args.kind, args.prompt, layers=args.layers, length=args.length, batch=args.batch,
                        seed=args.seed, token=args.token)
    top = table.top(args.top)
    print(top.to_json() if args.json else top.to_text())
    write_table(table, out, plot, quiet=args.json)
    return 0


def _length(text: str) -> int:
    return number(text, kind=int, low=2)
