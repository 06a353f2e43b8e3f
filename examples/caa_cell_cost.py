"""What one CAA A/B evaluation cell costs on a model: seconds per (item, cell) and peak memory, to plan
a full curve run (e.g. on Qwen2.5-Coder-1.5B-Instruct, ``mlx_steer.demo.qwen_model``).

A few held-out items of one behaviour, CAA's vector at one layer (from a few extraction items), and
``evaluate`` with that layer and two strengths (the unsteered cell is one of them when 0 is given),
no controls. ``--positions last`` (the default, CAA's) lets ``evaluate`` run each item's prompt
once and every cell from its KV cache; ``--positions all`` steers every position, so each cell runs the
whole prompt (the cost of the path before shared prefixes). Prints the extraction and evaluation wall times, seconds per item-cell, peak process
memory (ru_maxrss) and MLX's peak array memory, and the estimate for a full grid.

    python examples/caa_cell_cost.py [--model PATH] [--items 4] [--layer 12] [--strengths -8 8] [--positions all]
"""

from __future__ import annotations

import resource
import time

import mlx_steer as ms
from mlx_steer import evaluate as ev
from mlx_steer.demo.examples import example_model_path, example_parser


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = example_parser(__doc__)
    ap.add_argument("--behaviour", default="corrigible-neutral-HHH", choices=ev.CAA_BEHAVIOURS)
    ap.add_argument("--items", type=int, default=4, help="held-out items evaluated")
    ap.add_argument("--train", type=int, default=8, help="extraction items for the vector")
    ap.add_argument("--layer", type=int, default=12)
    ap.add_argument("--strengths", nargs="+", type=float, default=[-8.0, 8.0])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--positions", default="last", choices=["last", "all"], help="where to steer (see above)")
    args = ap.parse_args(argv)
    if args.quick:
        args.items, args.train = 2, 2
    import mlx.core as mx

    t0 = time.perf_counter()
    model = ms.load(example_model_path(args))
    t_load = time.perf_counter() - t0
    train, test = ev.split_items(ev.caa_items(args.behaviour), held_out=args.items, train=args.train, seed=0)
    t1 = time.perf_counter()
    vector = ev.ab_vector(model, train, layers=[args.layer])
    t_extract = time.perf_counter() - t1
    mx.reset_peak_memory()
    t2 = time.perf_counter()
    table = ev.evaluate(model, vector=vector, layers=[args.layer], strengths=args.strengths, items=test,
                        batch_size=args.batch_size, ab_positions=args.positions, seed=0)
    t_eval = time.perf_counter() - t2
    cells = len(args.strengths)
    per = t_eval / (len(test) * cells)
    out = {
        "load_s": t_load, "extract_s": t_extract, "extract_s_per_item": t_extract / len(train),
        "positions": args.positions, "eval_s": t_eval, "items": len(test), "cells": cells, "s_per_item_cell": per,
        "mlx_peak_gb": mx.get_peak_memory() / 1e9,
        "maxrss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,  # KiB on Linux
    }
    print(table.to_text())
    for k, v in out.items():
        print(f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}")
    # CAA's curves: 2 behaviours x 50 items x 4 layers x 9 strengths x (vector, random, flipped)
    full = 2 * 50 * 4 * 9 * 3
    print(f"a full grid of {full} item-cells at this rate: {full * per / 3600:.1f} h")
    return out


if __name__ == "__main__":
    main()
