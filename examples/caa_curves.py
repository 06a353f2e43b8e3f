"""CAA's behaviour-probability curves (Rimsky et al. 2024, Figure 6's form) on SmolLM2-135M-Instruct.

For each behaviour: a fixed seeded split of the shipped CAA items into extraction items and 50
held-out items; CAA's vector at each layer (mean activation at the matching answer letter minus at
the other); then p(matching letter) / (p(A) + p(B)) after the assistant prefix "(" on the held-out
items, for each layer and multiplier, against a random vector of the same norm and the sign-flipped
vector. Writes docs/results/caa_<behaviour>.{csv,json} and docs/img/caa_<behaviour>.png.

    python examples/caa_curves.py [--model PATH] [--tag TAG] [--behaviours corrigible-neutral-HHH myopic-reward]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import mlx_steer as ms
from mlx_steer import evaluate as ev
from mlx_steer.demo.examples import example_model_path, example_parser

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> dict[str, ev.EvalTable]:
    ap: argparse.ArgumentParser = example_parser(__doc__)
    ap.add_argument("--behaviours", nargs="+", default=["corrigible-neutral-HHH", "myopic-reward"],
                    choices=ev.CAA_BEHAVIOURS)
    ap.add_argument("--layers", nargs="+", type=int, default=[6, 12, 18, 24])
    ap.add_argument("--strengths", nargs="+", type=float, default=[-8, -4, -2, 0, 2, 4, 8])
    ap.add_argument("--held-out", type=int, default=50)
    ap.add_argument("--train", type=int, default=150, help="extraction items per behaviour")
    ap.add_argument("--positions", default="last", choices=["last", "all"],
                    help="where to steer: last = CAA's 'after the instruction' (the '(' token)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs")
    ap.add_argument("--tag", default="", help="suffix of the output files' names (e.g. _qwen2.5-coder-1.5b)")
    args = ap.parse_args(argv)
    if args.quick:
        args.behaviours, args.layers, args.strengths, args.held_out, args.train = args.behaviours[:1], [6], [-8, 0, 8], 4, 8
    model = ms.load(example_model_path(args))
    tables = {}
    for name in args.behaviours:
        t0 = time.perf_counter()
        train, test = ev.split_items(ev.caa_items(name), held_out=args.held_out, train=args.train, seed=0)
        vector = ev.ab_vector(model, train, layers=args.layers)
        t1 = time.perf_counter()
        table = ev.evaluate(model, vector=vector, layers=args.layers, strengths=args.strengths, items=test,
                            controls=["random", "flipped"], ab_positions=args.positions, seed=0)
        tag = (name if args.positions == "last" else f"{name}-all-positions") + args.tag
        (args.out / "results").mkdir(parents=True, exist_ok=True)
        (args.out / "img").mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out / "results" / f"caa_{tag}.csv")
        table.to_json(args.out / "results" / f"caa_{tag}.json")
        model_name = Path(args.model).name if args.model else "SmolLM2-135M-Instruct"
        title = f"CAA {name} on {model_name} ({args.held_out} held-out items, steering {args.positions})"
        table.plot(args.out / "img" / f"caa_{tag}.png", title=title)
        table.plot(args.out / "img" / f"caa_{tag}_zoom.png", title=title + ", zoomed", full_scale=False)
        best = table.best()
        print(f"\n== {name}: {len(train)} extraction items, {len(test)} held out, {time.perf_counter() - t0:.0f} s "
              f"({t1 - t0:.0f} s extracting)")
        print(table.to_text())
        print(f"best: layer {best.layer}, strength {best.strength:g}: p = {best.ab_probability:.4f} "
              f"(unsteered {table.cell(args.layers[0], 0.0).ab_probability:.4f})" if 0.0 in args.strengths else "")
        tables[name] = table
    return tables


if __name__ == "__main__":
    main()
