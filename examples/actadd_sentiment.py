"""ActAdd's sentiment table (Turner et al. 2023) on SmolLM2-135M-Instruct: the "Love" - "Hate"
vector against coefficient, scored by a sentiment judge, with the fluency it costs.

The paper's vector: one contrast pair, front-aligned (position i of "Love" minus position i of
"Hate", read entering a block and added there at position i). Completions (no chat template) of
prompts that lean negative or neutral, greedy; each is scored by VADER's compound sentiment (-1..+1),
by its perplexity under the unsteered model (fluency = unsteered perplexity / perplexity) and by
distinct-n; a random tensor of the same per-position norms is the control. Writes
docs/results/actadd_sentiment{TAG}.{csv,json} and docs/img/actadd_sentiment{TAG}.png.

    python examples/actadd_sentiment.py [--model PATH] [--tag TAG] [--quick]
"""

from __future__ import annotations

import time
from pathlib import Path

import mlx_steer as ms
from mlx_steer import evaluate as ev
from mlx_steer.demo.examples import continuation, example_model_path, example_parser

ROOT = Path(__file__).resolve().parents[1]
PAIR = ("Love", "Hate")
PROMPTS = [
    "I hate you because",
    "I went up to my friend and said",
    "My neighbour is the kind of person who",
    "The worst thing about my job is",
    "Yesterday my boss told me that",
    "When I think about the future, I feel",
    "The movie we watched last night was",
    "Honestly, this city is",
    "My brother and I always",
    "The food at that restaurant was",
]


def main(argv: list[str] | None = None) -> ev.EvalTable:
    ap = example_parser(__doc__)
    ap.add_argument("--layers", nargs="+", type=int, default=[2, 6, 10])
    ap.add_argument("--strengths", nargs="+", type=float, default=[0, 1, 2, 5, 10])
    ap.add_argument("--max-tokens", type=int, default=30)
    ap.add_argument("--out", type=Path, default=ROOT / "docs")
    ap.add_argument("--tag", default="", help="suffix of the output files' names (e.g. _qwen2.5-coder-1.5b)")
    args = ap.parse_args(argv)
    prompts = PROMPTS
    if args.quick:
        args.layers, args.strengths, args.max_tokens, prompts = [6], [0, 5], 6, PROMPTS[:2]
    t0 = time.perf_counter()
    model = ms.load(example_model_path(args))
    vector = ms.extract(model, [PAIR[0]], [PAIR[1]], sites=[f"layers.{i}:input" for i in args.layers], method="actadd")
    table = ev.evaluate(model, vector=vector, layers=args.layers, strengths=args.strengths, prompts=prompts,
                        judge=ev.sentiment_judge(), chat=False, max_tokens=args.max_tokens, controls=["random"], seed=0)
    (args.out / "results").mkdir(parents=True, exist_ok=True)
    (args.out / "img").mkdir(parents=True, exist_ok=True)
    stem = f"actadd_sentiment{args.tag}"
    table.to_csv(args.out / "results" / f"{stem}.csv")
    table.to_json(args.out / "results" / f"{stem}.json")
    name = Path(args.model).name if args.model else "SmolLM2-135M-Instruct"
    table.plot(args.out / "img" / f"{stem}.png",
               title=f"ActAdd Love - Hate on {name} ({len(prompts)} prompts, greedy)")
    print(table.to_text())
    for budget in (dict(min_fluency=0.5), dict(min_fluency=0.5, min_distinct=0.5)):
        best = table.best(**budget)
        print(f"best within {budget}: layer {best.layer}, coefficient {best.strength:g}: sentiment "
              f"{best.behaviour:+.3f}, perplexity {best.perplexity:.2f}, distinct-2 {best.distinct_2:.2f}")
    for s in args.strengths:
        text = table.texts[("steering", best.layer, float(s))][0]
        print(f"\n[layer {best.layer}, x{s:g}] {continuation(prompts[0], text)}")
    print(f"\ndone in {time.perf_counter() - t0:.0f} s")
    return table


if __name__ == "__main__":
    main()
