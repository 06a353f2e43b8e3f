"""``mlx-steer evaluate``: behaviour against strength per layer, and its fluency cost
(:func:`mlx_steer.evaluate.evaluate`), written as a table (CSV, JSON) and a plot."""

from __future__ import annotations

import argparse
import importlib.util
import math
from pathlib import Path
from typing import Any

from .arguments import add_model, finite, layer, positive, positive_int, seed, usage_error
from .calibrate import add_calibrated_flag
from .inputs import existing_file, read_prompts
from .loading import describe, fit_vector, model_for, vector_file
from .output_folder import check_out_dir, write_into
from .position_option import add_positions, position_selector

CAA = (  # ev.CAA_BEHAVIOURS, not imported: every mlx-steer call imports this module (a test keeps them equal)
    "coordinate-other-ais", "corrigible-neutral-HHH", "myopic-reward", "refusal", "survival-instinct")
DEFAULT_STRENGTHS = (-8.0, -4.0, -2.0, 0.0, 2.0, 4.0, 8.0)
OUTPUTS = ("table.csv", "table.json", "plot.png")

SUMMARY = "score a vector's behaviour and fluency over layers x strengths (CAA A/B, open-ended)"
OPTION_GROUPS = ("backend",)
EXAMPLES = """\
A/B items (CAA): p(matching) / (p(matching) + p(not matching)), each answer's reply "(A" / "(B" scored
whole however the tokenizer splits it, averaged over the items. Without --vector, CAA's vector is
extracted from the items first, on a seeded split that keeps --held-out items apart for the evaluation.
Open-ended prompts: a judge's score of the generated text (--score-span answer: of the answer only, not
the reasoning), its perplexity under the unsteered model (fluency = unsteered perplexity / perplexity),
distinct-n and the fraction of generations caught in a repetition loop. Writes OUT/table.csv,
OUT/table.json and OUT/plot.png, and prints the table and the best cell (--min-fluency: the best
within that fluency budget).

examples:
  mlx-steer evaluate --model PATH --caa corrigible-neutral-HHH --layers 6 12 18 24 \\
      --strengths -8 -4 0 4 8 --controls random flipped -o caa-corrigible
  mlx-steer evaluate --model PATH --vector love.safetensors --prompts-file prompts.txt \\
      --judge sentiment --layers 6 --strengths 0 2 4 8 --min-fluency 0.5 -o love-eval
  mlx-steer evaluate --model PATH --items my_items.jsonl --vector v.safetensors --layers 8 -o out"""


def fill(sp: argparse.ArgumentParser) -> None:
    """Add the ``evaluate`` options to its subparser."""
    add_model(sp)
    sp.add_argument("--vector", metavar="FILE", help="vector file or hub repo ORG/NAME[@REV][:VECTOR] "
                    "(default: CAA's vector from the A/B items)")
    src = sp.add_mutually_exclusive_group()
    src.add_argument("--items", metavar="FILE", help="A/B items, JSON list or JSONL: question, answer_matching, "
                                                     "answer_not_matching (CAA's *_behavior names work too)")
    src.add_argument("--caa", choices=CAA, metavar="BEHAVIOUR", help=f"a shipped CAA dataset: {', '.join(CAA)}")
    sp.add_argument("--held-out", type=positive_int, default=50, metavar="N",
                    help="items evaluated when the vector is extracted from them (default 50); the rest extract it")
    sp.add_argument("--train", type=positive_int, metavar="N", help="extraction items (default: all but the held-out)")
    sp.add_argument("--prompts-file", metavar="FILE", help="open-ended prompts, one per line")
    sp.add_argument("--judge", metavar="sentiment|substring:WORD,WORD",
                    help="scores the generated text: sentiment (VADER, -1..1) or substring:w1,w2 (1 if any appears)")
    sp.add_argument("--layers", nargs="+", type=layer, required=True, metavar="N", help="layers to steer, one at a time")
    sp.add_argument("--strengths", nargs="+", type=finite, default=list(DEFAULT_STRENGTHS), metavar="S",
                    help="multipliers (default -8 -4 -2 0 2 4 8)")
    add_calibrated_flag(sp)
    ctl = sp.add_mutually_exclusive_group()
    ctl.add_argument("--control-items", metavar="FILE", help="A/B items of an unrelated behaviour: adds the "
                     "control_ab_probability and selectivity columns (|target move| - |control move|)")
    ctl.add_argument("--control-caa", choices=CAA, metavar="BEHAVIOUR",
                     help="a shipped CAA dataset's --held-out items as those control items")
    sp.add_argument("--controls", nargs="*", choices=("random", "flipped"), default=[],
                    help="also score a random vector of the same norm and the sign-flipped vector")
    sp.add_argument("--ab-positions", choices=("last", "all"), default="last",
                    help="where A/B cells steer: last = the '(' after the question (CAA), all = every position")
    add_positions(sp, names=("all", "prompt", "generated"), default="all",
                  help="where open-ended cells steer (default all)")
    sp.add_argument("--score-span", type=position_selector(("generated",)), metavar="SPAN",
                    help="the judge reads only these generated tokens: answer (outside the reasoning), reasoning, "
                         "or a JSON span object (default: the whole generation)")
    sp.add_argument("--max-tokens", type=positive_int, default=40, metavar="N", help="tokens per generation (default 40)")
    sp.add_argument("--temp", type=finite, default=0.0, metavar="T", help="sampling temperature (default 0: greedy)")
    sp.add_argument("--seed", type=seed, default=0,
                    help="seeds the split, the random control and sampling (0..2**64-1, default 0)")
    sp.add_argument("--batch-size", type=positive_int, default=32, metavar="N", help="rows per forward (default 32)")
    sp.add_argument("--no-chat", dest="chat", action="store_false", help="plain text prompts (a base model)")
    sp.add_argument("--min-fluency", type=positive, metavar="F", help="best cell: fluency at least F (needs prompts)")
    sp.add_argument("--minimize", action="store_true", help="best cell: the lowest behaviour, not the highest")
    sp.add_argument("-o", "--out", required=True, metavar="DIR", help="folder for table.csv, table.json, plot.png")
    sp.add_argument("--force", action="store_true", help="overwrite those files in an existing folder")
    sp.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bar on stderr")


def run(args: argparse.Namespace) -> int:
    """``mlx-steer evaluate``."""
    from .. import evaluate as ev
    from ..evaluate.evaluation import check_max_tokens

    judge = _judge(args)
    if args.prompts_file and judge is None:
        usage_error(args, "--prompts-file needs --judge sentiment or --judge substring:WORD,...")
    if judge is not None and not args.prompts_file:
        usage_error(args, "--judge scores generated text: give --prompts-file FILE")
    if not (args.items or args.caa or args.prompts_file):
        usage_error(args, "give A/B items (--items FILE or --caa BEHAVIOUR), --prompts-file FILE, or both")
    if not args.vector and not (args.items or args.caa):
        usage_error(args, "without --vector, the vector is extracted from A/B items: give --items or --caa")
    if args.min_fluency is not None and not args.prompts_file:
        usage_error(args, "--min-fluency needs open-ended prompts (--prompts-file) to measure fluency")
    if args.score_span is not None and not args.prompts_file:
        usage_error(args, "--score-span chooses what the judge reads: give --prompts-file FILE")
    if args.temp < 0:
        usage_error(args, f"--temp must be >= 0, got {args.temp:g}")
    if (args.control_items or args.control_caa) and not (args.items or args.caa):
        usage_error(args, "--control-items/--control-caa measure selectivity against A/B items: give --items or --caa")
    if args.calibrated and not args.vector:
        usage_error(args, "--calibrated needs a calibrated --vector file (see mlx-steer calibrate)")
    if importlib.util.find_spec("matplotlib") is None:
        raise ImportError("the plot needs matplotlib: pip install matplotlib")
    out = check_out_dir(args.out, OUTPUTS, force=args.force)  # made only to write: a failed run leaves none
    items = ev.load_items(existing_file(args.items)) if args.items else ev.caa_items(args.caa) if args.caa else None
    prompts = read_prompts(args.prompts_file) if args.prompts_file else None
    control = ev.load_items(existing_file(args.control_items)) if args.control_items else \
        ev.split_items(ev.caa_items(args.control_caa), held_out=args.held_out, seed=args.seed)[1] \
        if args.control_caa else None
    vec = vector_file(args) if args.vector else None
    model = model_for(args)
    if prompts is not None:  # before the extraction's forwards too
        check_max_tokens(model, prompts, max_tokens=args.max_tokens, chat=args.chat)
    layers = list(args.layers)
    if vec is None:
        assert items is not None  # checked above
        train, items = ev.split_items(items, held_out=args.held_out, train=args.train, seed=args.seed)
        vec = ev.ab_vector(model, train, layers=layers, chat=args.chat, progress=args.progress)
        print(f"extracted CAA's vector from {len(train)} items; evaluating on {len(items)} held-out items")
    else:
        vec = fit_vector(args, model, vec, None, None)  # checked against the model
    table = ev.evaluate(model, vector=vec, layers=layers, strengths=args.strengths, items=items, prompts=prompts,
                        control_items=control, units="calibrated" if args.calibrated else "raw",
                        judge=judge, controls=args.controls, ab_positions=args.ab_positions, positions=args.positions,
                        score_span=args.score_span,
                        max_tokens=args.max_tokens, chat=args.chat, batch_size=args.batch_size, temp=args.temp,
                        seed=args.seed, progress=args.progress)
    print(f"evaluate: {describe(vec)}")
    print(table.to_text())
    title = args.caa or Path(args.items or args.prompts_file).name
    csv_path, json_path, png_path = write_into(out, OUTPUTS, lambda paths: (
        table.to_csv(paths[0]), table.to_json(paths[1]), table.plot(paths[2], title=title)))
    try:
        best = table.best(maximize=not args.minimize, min_fluency=args.min_fluency)
    except ValueError as exc:
        print(f"best: none ({exc})")
    else:
        shown = ", ".join(f"{m} {_fmt(best.value(m))}" for m in table.measures)
        print(f"best: layer {best.layer}, strength {best.strength:g} ({shown})")
    print(f"wrote {csv_path}, {json_path}, {png_path}")
    return 0


def _judge(args: argparse.Namespace) -> Any:
    from ..evaluate import judges

    spec = args.judge
    if spec is None:
        return None
    if spec == "sentiment":
        return judges.sentiment_judge()
    if spec.startswith("substring:"):
        words = [w for w in spec.split(":", 1)[1].split(",") if w]
        if not words:
            usage_error(args, "--judge substring: needs words, e.g. substring:wedding,bride")
        return judges.substring_judge(words)
    usage_error(args, f"unknown --judge {spec!r}; valid: sentiment, substring:WORD,WORD")


def _fmt(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.4f}"
