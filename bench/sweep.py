"""An 8-strength sweep of one layer on SmolLM2: one cell per forward (every forward whole) vs the
cells batched as rows of one forward, whole or starting at the steered layer, on both backends
(same numbers; the time is what differs).

    python bench/sweep.py [--repeats 3] [--backends torch mlx] [--json out.json]

The same sweep steering only each prompt's last token (:func:`bench_last_token`) runs its cells from shared
prefixes (the prompts but their last token run once with a KV cache).

Also the same cells scored by generation (:func:`bench_generation`): one ``batch_generate`` per cell vs one
for all cells. On Linux, MLX needs the optimized BLAS mlx_steer loads (docs/blas.md) for batching to pay.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from table import markdown, speedup_rows  # noqa: E402

PROMPTS = ["I think that", "The weather today is", "My neighbour told me that", "Yesterday at work, I",
           "In my opinion, the movie was", "When I look at the world, I feel"]
POS = ["I love this.", "What a wonderful day.", "I am so happy.", "This is great."]
NEG = ["I hate this.", "What an awful day.", "I am so sad.", "This is terrible."]
STRENGTHS = [-8.0, -4.0, -2.0, -1.0, 1.0, 2.0, 4.0, 8.0]
LAYER = 12


def bench(model, label: str, repeats: int, target: float | None = None) -> list[dict]:
    """Median wall time of the sweep: one cell per forward, every forward whole (what ``sweep`` did
    before); all cells in one forward, whole; and all cells in one forward starting at the steered
    layer (the default). Rows in bench/run.py's format; ``target`` is the speed-up asked of the default."""
    import mlx_steer as ms

    vec = ms.extract(model, POS, NEG, sites=[f"layers.{LAYER}"], progress=False)
    kw = dict(vector=vec, layers=[LAYER], strengths=STRENGTHS, prompts=PROMPTS, target_tokens=[" good"],
              contrast_tokens=[" bad"], progress=False)
    variants = {
        "one cell per forward, whole forwards": dict(batch_size=len(PROMPTS), share_layers=False),
        "8 cells per forward, whole forwards": dict(batch_size=8 * len(PROMPTS), share_layers=False),
        f"8 cells per forward, layers below {LAYER} run once (default)": dict(batch_size=8 * len(PROMPTS)),
    }
    medians = _timed_sweeps(model, kw, variants, repeats)
    return speedup_rows(f"8-strength sweep of layers.{LAYER}, SmolLM2 ({label})", medians, target)


def bench_last_token(model, label: str, repeats: int, target: float | None = None) -> list[dict]:
    """The same sweep steering each prompt's last token only (``positions="last"``): one cell per forward,
    every forward whole, vs the default, where each batch's prompts but their last token run once from a
    shared prefix and each cell runs one token per prompt (KL is 0 before the last position, where no cell
    steers). The tables are checked equal."""
    import mlx_steer as ms

    vec = ms.extract(model, POS, NEG, sites=[f"layers.{LAYER}"], progress=False)
    kw = dict(vector=vec, layers=[LAYER], strengths=STRENGTHS, prompts=PROMPTS, target_tokens=[" good"],
              contrast_tokens=[" bad"], positions="last", progress=False)
    variants = {
        "one cell per forward, whole forwards": dict(batch_size=len(PROMPTS), share_layers=False, shared_prefix=False),
        "8 cells per forward from shared prefixes (default)": dict(batch_size=8 * len(PROMPTS)),
    }
    medians = _timed_sweeps(model, kw, variants, repeats)
    return speedup_rows(f"8-strength sweep of layers.{LAYER} steering the last token, SmolLM2 ({label})", medians, target)


def _timed_sweeps(model, kw: dict, variants: dict[str, dict], repeats: int) -> dict[str, float]:
    """Median seconds of ``sweep(model, **kw, **variant)`` per variant, run interleaved after a warm-up;
    the variants' tables are checked equal."""
    from mlx_steer.analysis import sweep

    sweep(model, **{**kw, "strengths": [1.0]}, batch_size=len(PROMPTS))  # warm-up
    times: dict[str, list[float]] = {k: [] for k in variants}
    tables = {}
    for _ in range(repeats):
        for name, opts in variants.items():
            t = time.perf_counter()
            tables[name] = sweep(model, **kw, **opts).table
            times[name].append(time.perf_counter() - t)
    first, *rest = (np.array(t, dtype=float) for t in tables.values())
    for other in rest:
        assert np.allclose(first, other, atol=1e-3), "every variant must give the same table"
    return {k: float(np.median(t)) for k, t in times.items()}


def bench_generation(model, label: str, repeats: int, target: float | None = None, max_tokens: int = 16) -> list[dict]:
    """The same 8 cells scored by generation: each cell's 6 prompts generate ``max_tokens`` greedy tokens
    and the cell scores the share of generated tokens that are " good" minus those that are " bad". One
    ``batch_generate`` per cell (6 rows) vs one for all cells (48 rows, each steered by its cell); the
    generated tokens are checked equal."""
    import mlx_steer as ms

    site = f"layers.{LAYER}"
    vec = ms.extract(model, POS, NEG, sites=[site], progress=False)
    good, bad = (model.tokenizer.encode(t, add_special_tokens=False)[0] for t in (" good", " bad"))
    cells = [vec.to_interventions(scale=s) for s in STRENGTHS]

    def score(token_ids: list[list[int]]) -> list[float]:
        n = len(PROMPTS)
        cell_ids = [np.concatenate([token_ids[c * n + i] for i in range(n)]) for c in range(len(cells))]
        return [float((ids == good).mean() - (ids == bad).mean()) for ids in cell_ids]

    gen = dict(max_tokens=max_tokens)

    def one_per_call() -> list[list[int]]:
        return [ids for cell in cells for ids in model.batch_generate(PROMPTS, interventions=cell, **gen).token_ids]

    def all_in_one() -> list[list[int]]:
        every = [cell for cell in cells for _ in PROMPTS]
        return model.batch_generate(PROMPTS * len(cells), interventions=every, **gen).token_ids

    model.batch_generate(PROMPTS[:2], max_tokens=2)  # warm-up
    variants = {"one cell per batch_generate (6 rows)": one_per_call,
                f"8 cells in one batch_generate ({8 * len(PROMPTS)} rows)": all_in_one}
    times: dict[str, list[float]] = {k: [] for k in variants}
    scores = {}
    for _ in range(repeats):
        for name, run in variants.items():
            t = time.perf_counter()
            ids = run()
            times[name].append(time.perf_counter() - t)
            scores[name] = (ids, score(ids))
    (ids_a, score_a), (ids_b, score_b) = scores.values()
    assert ids_a == ids_b, "each row must generate what its cell generates alone"
    medians = {k: float(np.median(t)) for k, t in times.items()}
    name = f"8-strength sweep of layers.{LAYER} scored by {max_tokens} generated tokens, SmolLM2 ({label})"
    rows = speedup_rows(name, medians, target)
    rows[0]["note"] = "scores " + " ".join(f"{x:+.2f}" for x in score_a)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--backends", nargs="+", choices=["torch", "mlx"], default=["torch", "mlx"])
    args = ap.parse_args()
    import mlx_steer as ms
    from mlx_steer.demo.real_model import prepare_smollm2
    from mlx_steer.torch_backend import load as torch_load

    path = str(prepare_smollm2(verbose=False))
    rows = []
    if "torch" in args.backends:
        tmodel = torch_load(path, dtype="float32")
        rows += bench(tmodel, "torch CPU, fp32", args.repeats, target=3.0)
        rows += bench_last_token(tmodel, "torch CPU, fp32", args.repeats, target=3.0)
        rows += bench_generation(tmodel, "torch CPU, fp32", args.repeats, target=3.0)
    if "mlx" in args.backends:
        mmodel = ms.load(path)
        rows += bench(mmodel, "MLX", args.repeats, target=3.0)
        rows += bench_last_token(mmodel, "MLX", args.repeats, target=3.0)
        rows += bench_generation(mmodel, "MLX", args.repeats, target=3.0)
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
