"""``mlx-steer heads probe``: ITI's per-head probes on contrast prompts (one per line in --pos and
--neg): each head's held-out probe accuracy, printed best first; with --out the whole table as CSV
(or JSON, by the suffix), with --plot its layers x heads heatmap (PNG)."""

from __future__ import annotations

import argparse

from .arguments import number, positive_int, seed
from .head_tables import table_outputs, write_table
from .inputs import read_prompts

SUMMARY = "probe every head on contrast prompts (ITI): held-out accuracy per layer x head"
OPTION_GROUPS = ("backend",)
EXAMPLES = """\
Each head's output z is read at each prompt's last token (--read mean: averaged over its tokens), a
logistic-regression probe per head is fitted on the training split and scored on the held-out
fraction (--holdout) of each class. In Python, HeadProbes.interventions(model, k=, alpha=) turns the
top heads into the ITI shift (see docs/heads.md).

examples:
  mlx-steer heads probe ./my-model --pos honest.txt --neg dishonest.txt --top 5
  mlx-steer heads probe ./my-model --pos a.txt --neg b.txt --read mean --out probes.csv --plot probes.png"""


def fill(sp: argparse.ArgumentParser) -> None:
    """Add the ``heads probe`` options to its subparser."""
    sp.add_argument("model", metavar="MODEL", help="model folder or Hugging Face id")
    sp.add_argument("--pos", required=True, metavar="FILE", help="positive prompts, one per line")
    sp.add_argument("--neg", required=True, metavar="FILE", help="negative prompts, one per line")
    sp.add_argument("--layers", nargs="+", type=int, metavar="N", help="decoder layers (default all)")
    sp.add_argument("--read", choices=("last", "mean"), default="last",
                    help="z at each prompt's last token, or averaged over its tokens (default last)")
    sp.add_argument("--holdout", type=_fraction, default=0.25, metavar="F",
                    help="fraction of each class held out to score the probes (default 0.25)")
    sp.add_argument("--seed", type=seed, default=0, help="seed of the held-out split (default 0)")
    sp.add_argument("--chat", action="store_true", help="wrap each prompt as a chat user turn")
    sp.add_argument("--batch-size", type=positive_int, default=16, metavar="N", help="prompts per forward (default 16)")
    sp.add_argument("--top", type=positive_int, default=10, metavar="K",
                    help="heads printed, best first (default 10); --out and --plot get every head")
    sp.add_argument("--out", metavar="FILE", help="write every head's accuracy: .csv or .json")
    sp.add_argument("--plot", metavar="FILE", help="write the layers x heads heatmap (PNG)")
    sp.add_argument("--force", action="store_true", help="overwrite --out and --plot files")
    sp.add_argument("--json", action="store_true", help="print the top heads as JSON")


def run(args: argparse.Namespace) -> int:
    """``mlx-steer heads probe``."""
    from .loading import load_model
    from .arguments import usage_error

    positive, negative = read_prompts(args.pos), read_prompts(args.neg)
    for prompts, flag in ((positive, "--pos"), (negative, "--neg")):
        if len(prompts) < 2:
            usage_error(args, f"{flag} {getattr(args, flag[2:])} has {len(prompts)} prompt; each class needs at "
                        "least 2 (one to train on, one held out)")
    out, plot = table_outputs(args)
    from ..heads import probe_heads

    model = load_model(args.model, backend=getattr(args, "backend", "mlx"), device=args.device)
    probes = probe_heads(model, positive, negative, layers=args.layers, read=args.read, chat=args.chat,
                         holdout=args.holdout, seed=args.seed, batch_size=args.batch_size)
    table = probes.table()
    top = table.top(min(args.top, len(table)))
    if args.json:
        print(top.to_json())
    else:
        print(f"{probes.n_train} prompts trained on, {probes.n_heldout} held out\n{top.to_text()}")
    write_table(table, out, plot, quiet=args.json)
    return 0


def _fraction(text: str) -> float:
    value = number(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be a fraction in (0, 1), got {text}")
    return value
