"""Every benchmark, one table: the numbers in docs/benchmarks.md come from this command.

    python bench/run.py [--quick] [--json out.json] [--markdown table.md]

Rows: on Linux first, MLX with the bundled reference BLAS vs the optimized one mlx_steer loads, each in its
own process (bench/blas.py: matmul GFLOP/s, SmolLM2 prefill and decode); then, with the optimized BLAS, MLX
generation with steering (1 layer, all layers) and recording vs plain mlx-lm; batched vs one-prompt-per-forward
extraction on both backends (with the matmul throughput that explains it); an 8-strength sweep with its cells
batched as rows of one forward vs one cell per forward, scored by forwards and by generation (bench/sweep.py),
on both backends; memory kept by recording the last token vs the full sequence; the steered server with 8
concurrent clients vs 8 sequential on MLX (bench/serve.py, in its own process); the torch backend's generation
overhead vs plain HF generate (torch_overhead.py, in its own process), the CAA A/B evaluation of one behaviour
from shared prefixes vs main 433fce3's path (bench/ab_eval.py, each variant in its own process), with nnsight and
steering-vectors rows when those import (e.g. installed with ``pip install --target DIR --no-deps``
and put on ``PYTHONPATH``: a plain install would change transformers); and MLX decode ÷ torch decode.
Ratios are measured within one run, interleaved, on the same machine.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata as md
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import mlx_steer as ms  # noqa: E402  -- before mlx: on Linux it gives MLX the optimized BLAS

import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402

from mlx_steer.demo.real_model import prepare_smollm2  # noqa: E402

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


def bench_extraction(model, label: str, n_pairs: int, repeats: int, batch: int = 32) -> list[dict]:
    """Wall time of ``ms.extract`` (mean difference at layers.7) batched vs one prompt per forward."""
    pos, neg = pairs(n_pairs)
    site = "layers.7"
    ms.extract(model, pos[:2], neg[:2], sites=[site], batch_size=2, progress=False)  # warm-up
    times: dict[int, list[float]] = {batch: [], 1: []}
    for _ in range(repeats):
        for bs in times:
            t = time.perf_counter()
            ms.extract(model, pos, neg, sites=[site], batch_size=bs, progress=False)
            times[bs].append(time.perf_counter() - t)
    batched, single = float(np.median(times[batch])), float(np.median(times[1]))
    name = f"extract {n_pairs} pairs, {label}"
    return [
        {"benchmark": name, "variant": "one prompt per forward", "value": single, "unit": "s"},
        {"benchmark": name, "variant": f"batched ({batch} per forward)", "value": batched, "unit": "s",
         "ratio": single / batched, "target": ">= 5x", "met": single / batched >= 5},
    ]


def bench_matmul() -> list[dict]:
    """Context for the extraction rows: does the backend's matmul get faster per row with more rows?"""
    import torch

    rows = []
    for lib in ("mlx", "torch"):
        rate = {}
        for m in (15, 480):  # one short prompt vs 32 of them
            if lib == "mlx":
                a, w = mx.random.normal((m, 576)), mx.random.normal((1536, 576))
                mx.eval(a, w)
                run = lambda: mx.eval(a @ w.T)  # noqa: E731
            else:
                a, w = torch.randn(m, 576), torch.randn(1536, 576)
                run = lambda: a @ w.T  # noqa: E731
            run()
            t, n = time.perf_counter(), 0
            while time.perf_counter() - t < 0.5:
                run()
                n += 1
            rate[m] = 2 * m * 576 * 1536 * n / (time.perf_counter() - t) / 1e9
        rows.append({"benchmark": "context: fp32 matmul (M x 576) @ (576 x 1536)", "variant": f"{lib}, M=15 -> M=480",
                     "value": rate[480], "unit": "GFLOP/s", "ratio": rate[480] / rate[15],
                     "note": f"{rate[15]:.1f} GFLOP/s at M=15; ratio = batching gain per row"})
    return rows


def bench_memory(model: ms.SteerableModel, n_tokens: int) -> list[dict]:
    """MLX memory of recording every layer: last token vs full sequence, one prompt."""
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
        expected = sum(tr.activations[k].nbytes for k in sites) / 2**20
        rows.append({"benchmark": f"memory, {n_tokens}-token prompt, SmolLM2 (MLX)", "variant": label,
                     "value": kept / 2**20, "unit": "MiB kept", "note": f"{peak / 2**20:.1f} MiB peak during the forward; "
                     f"recorded arrays {expected:.2f} MiB"})
        del tr
    return rows


def bench_torch(tokens: int, repeats: int) -> list[dict]:
    """torch_overhead.py in its own process (its own torch threads and memory), rows merged here."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "torch.json"
        cmd = [sys.executable, str(Path(__file__).with_name("torch_overhead.py")),
               "--tokens", str(tokens), "--repeats", str(repeats), "--json", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not out.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            return [{"benchmark": "torch backend generate", "variant": f"failed: {tail[0]}", "value": float("nan"), "unit": ""}]
        data = json.loads(out.read_text())
    rows = []
    for r in data["rows"]:
        note = " / ".join(x for x in (r.get("version"), r.get("note")) if x)
        row = {"benchmark": "torch generate, SmolLM2 fp32 (CPU)", "variant": r["variant"],
               "value": r.get("tok_s", float("nan")), "unit": "tok/s", "note": note}
        if "ratio" in r:
            row["ratio"] = r["ratio"]
        if r.get("target_ratio"):
            row.update(target=f">= {r['target_ratio']:.2f}", met=bool(r["target_met"]))
        rows.append(row)
    return rows


def bench_serve(max_tokens: int, repeats: int) -> list[dict]:
    """bench/serve.py on MLX in its own process (the server is a process of its own too), rows merged here."""
    name = f"mlx-steer serve, 8 clients x {max_tokens} tokens, SmolLM2 (MLX)"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "serve.json"
        cmd = [sys.executable, str(Path(__file__).with_name("serve.py")), "--backend", "mlx", "--max-tokens",
               str(max_tokens), "--repeats", str(repeats), "--json", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not out.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            return [{"benchmark": name, "variant": f"failed: {tail[0]}", "value": float("nan"), "unit": ""}]
        data = json.loads(out.read_text())
    by = {r["variant"]: r for r in data["rows"]}
    none, steered, seq = (by[k] for k in ("8 concurrent, none steered", "8 concurrent, each steered by its own vector",
                                          "8 sequential, none steered"))
    note = lambda r: f"TTFT p50 {r['ttft_p50']:.2f} s, latency p50 {r['lat_p50']:.2f} s"  # noqa: E731
    return [
        {"benchmark": name, "variant": "8 sequential, none steered", "value": seq["tok_s"], "unit": "tok/s",
         "note": note(seq)},
        {"benchmark": name, "variant": "8 concurrent, none steered", "value": none["tok_s"], "unit": "tok/s",
         "ratio": none["tok_s"] / seq["tok_s"], "target": ">= 2x vs sequential",
         "met": none["tok_s"] / seq["tok_s"] >= 2, "note": note(none)},
        {"benchmark": name, "variant": "8 concurrent, each steered by its own vector", "value": steered["tok_s"],
         "unit": "tok/s", "ratio": steered["tok_s"] / none["tok_s"], "target": ">= 0.9 vs none steered",
         "met": steered["tok_s"] / none["tok_s"] >= 0.9, "note": note(steered)},
    ]


def decode_vs_torch(rows: list[dict]) -> list[dict]:
    """MLX decode ÷ torch decode on SmolLM2: plain mlx-lm vs plain HF generate, from this run's rows."""
    mlx_row = next((r for r in rows if r["benchmark"] == "MLX generate, SmolLM2-135M" and r["variant"] == "plain mlx-lm"), None)
    torch_row = next((r for r in rows if r["benchmark"].startswith("torch generate") and "HF" in r["variant"]), None)
    if mlx_row is None or torch_row is None:
        return []
    return [{"benchmark": "MLX decode / torch decode, SmolLM2 fp32, 48 greedy tokens", "variant": "plain mlx-lm / plain HF generate",
             "value": mlx_row["value"] / torch_row["value"], "unit": "x",
             "note": f"{mlx_row['value']:.2f} vs {torch_row['value']:.2f} tok/s"}]


def machine() -> str:
    from machine import cpu_name

    cpu = cpu_name()
    versions = ", ".join(f"{d} {md.version(d)}" for d in ("mlx", "mlx-lm", "torch", "transformers") if _installed(d))
    return (f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}, python {platform.python_version()}, "
            f"{versions}; MLX device {mx.default_device()}")


def blas_applies() -> bool:
    """MLX here is the Linux CPU build whose reference BLAS mlx_steer replaces (the BLAS rows apply)."""
    from mlx_steer.runtime import blas

    return blas.setup().applies


def _installed(dist: str) -> bool:
    try:
        md.version(dist)
    except md.PackageNotFoundError:
        return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer tokens, pairs and repeats (a smoke run)")
    ap.add_argument("--json", help="also write the machine and the rows here")
    ap.add_argument("--skip-torch", action="store_true", help="MLX rows only")
    ap.add_argument("--markdown", help="also write the table as markdown here (as docs/benchmarks.md shows it)")
    args = ap.parse_args()
    repeats = 1 if args.quick else 3
    gen_tokens, gen_repeats = (16, 1) if args.quick else (48, 9)
    n_pairs = 8 if args.quick else 64
    has_torch = not args.skip_torch and _installed("torch") and _installed("transformers")

    import blas as blas_bench
    import generate_overhead as go
    import patching as patching_bench
    import sweep as sweep_bench

    t0 = time.time()
    folder = str(prepare_smollm2(verbose=False))
    rows_blas = blas_bench.rows(blas_bench.run_variants(1 if args.quick else 3)) if blas_applies() else []
    smol = ms.load(folder)
    rows: list[dict] = []
    rand = go.random_llama_100m(smol.tokenizer)
    for name, m in ((f"random llama {go.n_params(rand.model) / 1e6:.0f}M", rand), ("SmolLM2-135M", smol)):
        for model_name, label, tps, ratio, ok, best in go.bench_model(name, m, gen_tokens, gen_repeats):
            row = {"benchmark": f"MLX generate, {model_name}", "variant": label, "value": tps, "unit": "tok/s",
                   "ratio": ratio, "note": f"best-run ratio {best:.3f}"}
            if ok:
                row.update(target=f">= {go.TARGETS[label]:.3f}", met=ok == "yes")
            rows.append(row)
    del rand
    rows += bench_extraction(smol, "SmolLM2 (MLX)", n_pairs, repeats)
    rows += sweep_bench.bench(smol, "MLX", repeats, target=3.0)
    rows += sweep_bench.bench_last_token(smol, "MLX", repeats, target=3.0)
    rows += sweep_bench.bench_generation(smol, "MLX", repeats, target=3.0)
    rows += patching_bench.bench(smol, "MLX", repeats)
    rows += bench_memory(smol, 64 if args.quick else 512)
    rows += bench_serve(8 if args.quick else 32, 1 if args.quick else 2)
    if has_torch:
        import torch

        from mlx_steer.torch_backend import load as torch_load

        tsmol = torch_load(folder, dtype=torch.float32)
        rows += bench_extraction(tsmol, "SmolLM2 (torch CPU)", n_pairs, repeats)
        rows += sweep_bench.bench(tsmol, "torch CPU, fp32", repeats, target=3.0)
        rows += sweep_bench.bench_last_token(tsmol, "torch CPU, fp32", repeats, target=3.0)
        rows += sweep_bench.bench_generation(tsmol, "torch CPU, fp32", repeats, target=3.0)
        del tsmol
        rows += bench_matmul()
        rows += bench_torch(24 if args.quick else 48, 1 if args.quick else 5)
        rows += decode_vs_torch(rows)
    else:
        rows.append({"benchmark": "torch rows", "variant": "skipped (--skip-torch or torch not installed)",
                     "value": float("nan"), "unit": ""})

    import ab_eval  # the CAA A/B evaluation from shared prefixes vs 433fce3's path, each variant in its own process

    rows += ab_eval.bench(["mlx", "torch"] if has_torch else ["mlx"], args.quick)
    rows = rows_blas + rows
    where = machine()
    print(f"\nmachine: {where}\n{'quick run, ' if args.quick else ''}total {time.time() - t0:.0f}s; "
          "ratio = variant / plain (speed) or one-at-a-time / batched (extraction)\n")
    w = max(len(r["benchmark"]) for r in rows)
    print(f"{'benchmark':<{w}} {'variant':<34} {'value':>9} {'unit':<8} {'ratio':>7}  target")
    for r in rows:
        ratio = f"{r['ratio']:.3f}" if "ratio" in r else ""
        target = f"{r['target']} ({'met' if r['met'] else 'NOT met'})" if "target" in r else ""
        note = f"  [{r['note']}]" if r.get("note") else ""
        print(f"{r['benchmark']:<{w}} {r['variant']:<34} {r['value']:>9.2f} {r['unit']:<8} {ratio:>7}  {target}{note}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": where, "quick": args.quick, "rows": rows}, indent=2))
    if args.markdown:
        from table import markdown

        Path(args.markdown).write_text(markdown(rows))


if __name__ == "__main__":
    main()
