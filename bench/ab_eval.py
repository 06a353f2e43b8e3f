"""The CAA evaluation of one behaviour on SmolLM2 (the A/B scoring ``evaluate`` runs: 50 held-out items,
4 layers, strengths -8..8, random and flipped controls): from shared prefixes (the default) vs main
433fce3's path, on both backends, each variant in its own process (its peak memory is that process's).

    python bench/ab_eval.py [--quick] [--backends mlx torch] [--json out.json]

433fce3's path is reproduced by ``ab_scores(shared_prefix=False, share_layers=True, _all_logits=True)``:
every (item, cell) row a whole forward of the prompt (from the lowest steered layer, the layers below once
per chunk), full (B, L, V) logits. The timed part is the scoring (the vector, extracted once from 100 other
items, is the same file for every variant); each process warms up on 2 items first. Memory: the process's
peak resident set (``ru_maxrss``, the model's weights included) and, on MLX, ``mx.get_peak_memory()`` over
the scoring alone. The variants' probabilities are checked equal within 1e-5 (SmolLM2 in fp32: today's
whole-forward path differs from itself by ~2e-6 when only its chunking changes).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from table import markdown, speedup_rows  # noqa: E402

BEHAVIOUR = "refusal"
LAYERS = [6, 9, 12, 15]
STRENGTHS = [-8.0, -4.0, -2.0, 0.0, 2.0, 4.0, 8.0]
CONTROLS = ("random", "flipped")
BATCH = 32
VARIANTS = {
    "433fce3's path (whole forwards from the steered layer, full logits)":
        dict(shared_prefix=False, share_layers=True, _all_logits=True),
    "shared prefixes (default)": {},
}


def _setup(quick: bool) -> tuple[list, list, list[int], list[float]]:
    from mlx_steer.evaluate import caa_items, split_items

    train, held = split_items(caa_items(BEHAVIOUR), held_out=8 if quick else 50, train=16 if quick else 100, seed=0)
    return held, train, LAYERS[:2] if quick else LAYERS, [-4.0, 0.0, 4.0] if quick else STRENGTHS


def _load(backend: str, folder: str):
    if backend == "mlx":
        import mlx_steer as ms

        return ms.load(folder)
    from mlx_steer.torch_backend import load

    return load(folder, dtype="float32")


def child(backend: str, variant: str, folder: str, vector: str, out: str, quick: bool) -> None:
    """One variant in this process: time its scoring, write its probabilities to ``out`` (npz), print
    the figures as one JSON line."""
    import mlx_steer  # noqa: F401  -- first: the optimized BLAS for MLX on Linux
    from mlx_steer import evaluate as ev
    from mlx_steer.vectors.vector_file import load_vector

    held, _, layers, strengths = _setup(quick)
    m = _load(backend, folder)
    vec = load_vector(vector)
    opts = VARIANTS[variant]
    ev.ab.ab_scores(m, held[:2], ev.Grid(m, vector=vec, layers=layers[:1], strengths=[4.0], positions="last"),
                    batch_size=BATCH, **opts)  # warm-up
    grid = ev.Grid(m, vector=vec, layers=layers, strengths=strengths, controls=CONTROLS, positions="last", seed=0)
    mlx_peak = None
    if backend == "mlx":
        import mlx.core as mx

        mx.reset_peak_memory()
    t = time.perf_counter()
    scores = ev.ab.ab_scores(m, held, grid, batch_size=BATCH, **opts)
    seconds = time.perf_counter() - t
    if backend == "mlx":
        mlx_peak = mx.get_peak_memory() / 2**20
    np.savez(out, **{"|".join(map(str, k)): v for k, v in scores.items()})
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"seconds": seconds, "rss_mb": rss, "mlx_peak_mb": mlx_peak, "cells": len(scores)}))


def bench(backends: list[str], quick: bool) -> list[dict]:
    """Rows in bench/run.py's format: per backend, each variant's time (ratio, target >= 10x) and memory."""
    import mlx_steer as ms
    from mlx_steer import evaluate as ev
    from mlx_steer.demo.real_model import prepare_smollm2
    from mlx_steer.vectors.vector_file import save_vector

    folder = str(prepare_smollm2(verbose=False))
    held, train, layers, strengths = _setup(quick)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        vector = str(Path(tmp) / "vector.safetensors")
        save_vector(ev.ab_vector(ms.load(folder), train, layers=layers, progress=False), vector)
        for backend in backends:
            figures, scores = {}, {}
            for i, variant in enumerate(VARIANTS):
                out = str(Path(tmp) / f"{backend}{i}.npz")
                cmd = [sys.executable, __file__, "--child", backend, variant, folder, vector, out] + (["--quick"] if quick else [])
                done = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if done.returncode:
                    raise RuntimeError(f"{backend} {variant!r} failed:\n{done.stderr[-3000:]}")
                figures[variant] = json.loads(done.stdout.strip().splitlines()[-1])
                print(f"{backend} {variant}: {figures[variant]}", file=sys.stderr, flush=True)
                with np.load(out) as z:
                    scores[variant] = {k: z[k] for k in z.files}
            first, *rest = scores.values()
            worst = max(float(np.nanmax(np.abs(first[k] - other[k]))) for other in rest for k in first)
            assert worst <= 1e-5, f"{backend}: the variants differ by {worst:g}"  # SmolLM2's fp32 floor, see the docstring
            label = "MLX" if backend == "mlx" else "torch CPU, fp32"
            n_cells = next(iter(figures.values()))["cells"]
            name = (f"CAA A/B evaluation, {BEHAVIOUR}, {len(held)} items x {n_cells} cells ({len(layers)} layers, "
                    f"{len(strengths)} strengths, 2 controls), SmolLM2 ({label})")
            timed = speedup_rows(name, {v: f["seconds"] for v, f in figures.items()}, 10.0)
            timed[-1]["note"] = f"max |difference| {worst:.1e}"
            rows += timed
            for v, f in figures.items():
                peak = f"; MLX peak {f['mlx_peak_mb']:.0f} MB" if f["mlx_peak_mb"] is not None else ""
                rows.append({"benchmark": f"{name}: process peak RSS", "variant": v + peak, "value": f["rss_mb"],
                             "unit": "MB"})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="8 items, 2 layers, 3 strengths (a smoke run)")
    ap.add_argument("--backends", nargs="+", choices=["mlx", "torch"], default=["mlx", "torch"])
    ap.add_argument("--json", type=Path)
    ap.add_argument("--child", nargs=5, metavar=("BACKEND", "VARIANT", "MODEL", "VECTOR", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child, quick=args.quick)
        return
    rows = bench(args.backends, args.quick)
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
