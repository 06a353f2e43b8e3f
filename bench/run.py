"""Every benchmark, one table: the numbers in docs/benchmarks.md come from this command.

    python bench/run.py [--quick] [--json out.json]

Rows: MLX generation with steering (1 layer, all layers) and recording vs plain mlx-lm, batched vs
one-prompt-at-a-time extraction, peak memory of recording the last token vs the full sequence,
and the torch backend's overhead vs plain HF generate (with nnsight / steering-vectors if installed).
Ratios are measured within one run, interleaved, on the same machine.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402

import mlx_steer as ms  # noqa: E402
from mlx_steer.real_model import prepare_smollm2  # noqa: E402

SUBJECTS = ["the movie", "my job", "this city", "the weather", "our team", "the food", "this book", "the music",
            "my neighbour", "the game", "the new phone", "this school", "the trip", "the party", "the hotel", "the show"]
POS_TEMPLATES = ["I really love {}.", "{} is wonderful and makes me happy.", "What a delight {} is!", "I adore {}."]
NEG_TEMPLATES = ["I really hate {}.", "{} is awful and makes me sad.", "What a disaster {} is!", "I despise {}."]


def pairs(n: int) -> tuple[list[str], list[str]]:
    pos, neg = [], []
    for i in range(n):
        s = SUBJECTS[i % len(SUBJECTS)]
        t = (i // len(SUBJECTS)) % len(POS_TEMPLATES)
        pos.append(POS_TEMPLATES[t].format(s).capitalize())
        neg.append(NEG_TEMPLATES[t].format(s).capitalize())
    return pos, neg


def bench_extraction(model: ms.SteerableModel, n_pairs: int, repeats: int) -> list[dict]:
    pos, neg = pairs(n_pairs)
    site = "layers.7"
    times: dict[int, list[float]] = {32: [], 1: []}
    for _ in range(repeats):
        for bs in times:
            t = time.perf_counter()
            ms.extract(model, pos, neg, sites=[site], batch_size=bs, progress=False)
            times[bs].append(time.perf_counter() - t)
    batched, single = float(np.median(times[32])), float(np.median(times[1]))
    return [
        {"benchmark": f"extract {n_pairs} pairs (SmolLM2, {site})", "variant": "one prompt at a time", "value": single, "unit": "s"},
        {"benchmark": f"extract {n_pairs} pairs (SmolLM2, {site})", "variant": "batched (32 per forward)", "value": batched, "unit": "s",
         "ratio": single / batched, "target": ">= 5x faster", "met": single / batched >= 5},
    ]


def bench_memory(model: ms.SteerableModel, n_tokens: int) -> list[dict]:
    prompt = (model.encode("The quick brown fox jumps over the lazy dog. ") * (n_tokens // 10 + 1))[:n_tokens]
    sites = model.layer_paths
    rows = []
    for label, positions in (("record last token, all layers", "last"), ("record full sequence, all layers", "all")):
        gc.collect()
        mx.clear_cache()
        mx.reset_peak_memory()
        base = mx.get_active_memory()
        tr = model.run([prompt], record=sites, record_positions=positions, logits=False)
        peak = mx.get_peak_memory() - base
        gc.collect()
        mx.clear_cache()
        kept = mx.get_active_memory() - base
        rows.append({"benchmark": f"memory, {n_tokens}-token prompt (SmolLM2)", "variant": label,
                     "value": peak / 2**20, "unit": "MiB peak", "kept_mib": kept / 2**20})
        del tr
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer tokens and repeats (a smoke run)")
    ap.add_argument("--json", help="also write the rows here")
    ap.add_argument("--skip-torch", action="store_true")
    args = ap.parse_args()
    tokens, repeats = (24, 1) if args.quick else (64, 3)

    import generate_overhead as go

    t0 = time.time()
    smol = ms.load(str(prepare_smollm2(verbose=False)))
    rows: list[dict] = []
    rand = go.random_llama_100m(smol.tokenizer)
    for name, m in ((f"random llama {go.n_params(rand.model) / 1e6:.0f}M", rand), ("SmolLM2-135M", smol)):
        for model_name, label, tps, ratio, ok in go.bench_model(name, m, tokens, repeats):
            row = {"benchmark": f"MLX generate, {model_name}", "variant": label, "value": tps, "unit": "tok/s", "ratio": ratio}
            if ok:
                row.update(target=f">= {go.TARGETS[label]:.3f}", met=ok == "yes")
            rows.append(row)
    del rand
    rows += bench_extraction(smol, 16 if args.quick else 64, repeats)
    rows += bench_memory(smol, 256 if args.quick else 1024)
    if not args.skip_torch:
        try:
            import torch_overhead

            rows += torch_overhead.rows(quick=args.quick)
        except ImportError as exc:
            rows.append({"benchmark": "torch backend", "variant": f"skipped: {exc}", "value": float("nan"), "unit": ""})
    print(f"\nmachine: {platform.processor() or platform.machine()}, {platform.system()}, python {platform.python_version()}, "
          f"mlx {mx.__version__} on {mx.default_device()}; total {time.time() - t0:.0f}s\n")
    print(f"{'benchmark':<44} {'variant':<34} {'value':>10} {'unit':<9} {'ratio':>7}  target")
    for r in rows:
        ratio = f"{r['ratio']:.3f}" if "ratio" in r else ""
        target = f"{r['target']} ({'met' if r['met'] else 'NOT met'})" if "target" in r else ""
        print(f"{r['benchmark']:<44} {r['variant']:<34} {r['value']:>10.2f} {r['unit']:<9} {ratio:>7}  {target}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
