"""MLX on Linux with the bundled reference BLAS vs the optimized one mlx_steer loads, each in its own process.

    python bench/blas.py [--repeats 3] [--json out.json]

One child process per variant (what MLX binds is fixed at ``import mlx.core``): ``MLX_STEER_BLAS=off`` keeps
the reference BLAS, unset loads the optimized one, and ``OPENBLAS_CORETYPE=Prescott`` loads it with the
generic kernels OpenBLAS falls back to on a CPU it does not recognize (``runtime/openblas_core.py``). Each
child measures an fp32 (256×576)·(576×1536) matmul on MLX and, where torch is installed, on torch in the
same process (its BLAS calls reach the globally loaded library too), SmolLM2-135M-Instruct prefill of 1×64
and 8×64 tokens, and greedy decode, and says which BLAS MLX called and which kernels an OpenBLAS ran.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

VARIANTS = {"reference BLAS (MLX_STEER_BLAS=off)": {"MLX_STEER_BLAS": "off"},
            "OpenBLAS, generic kernels (OPENBLAS_CORETYPE=Prescott)": {"OPENBLAS_CORETYPE": "Prescott"},
            "optimized BLAS (mlx_steer's default)": {}}
PREFILL_TOKENS = 64
DECODE_TOKENS = 32


def measure(repeats: int) -> dict:
    """In this process: which BLAS, matmul GFLOP/s, prefill and decode tokens/s on SmolLM2 (medians)."""
    import mlx_steer as ms  # before mlx: decides the BLAS
    from mlx_steer.demo.real_model import prepare_smollm2
    from mlx_steer.runtime import blas, doctor

    import generate_overhead as go
    import mlx.core as mx
    import numpy as np
    from mlx_lm.models.cache import make_prompt_cache

    model = ms.load(str(prepare_smollm2(verbose=False)))
    ids = (model.encode("The quick brown fox jumps over the lazy dog. ") * PREFILL_TOKENS)[:PREFILL_TOKENS]
    library = blas.bound_library()
    out: dict = {"blas": blas.describe(library), "library": library, "core": blas.setup().core,
                 "matmul_gflops": doctor.matmul_gflops(seconds=1.0), "torch_matmul_gflops": _torch_gflops()}

    def prefill(batch: int) -> float:
        x = mx.array([ids] * batch)
        cache = make_prompt_cache(model.model)
        t = time.perf_counter()
        mx.eval(model.model(x, cache=cache))
        return batch * PREFILL_TOKENS / (time.perf_counter() - t)

    eos_free = go.eos_banned(model)

    def decode() -> float:  # plain mlx-lm stream_generate, as the generation-overhead rows time it
        return go.decode_tps(model, {}, DECODE_TOKENS, eos_free)[0]

    prefill(1)  # warm-up
    for name, run in (("prefill_1x64_tok_s", lambda: prefill(1)), ("prefill_8x64_tok_s", lambda: prefill(8)),
                      ("decode_tok_s", decode)):
        out[name] = float(np.median([run() for _ in range(repeats)]))
    return out


def _torch_gflops(seconds: float = 1.0) -> float | None:
    """GFLOP/s of torch's fp32 (256×576)·(576×1536) in this process (best of repeated runs), None without torch."""
    try:
        import torch
    except ImportError:
        return None
    from mlx_steer.runtime.doctor import MATMUL

    m, k, n = MATMUL
    a, b = torch.randn(m, k), torch.randn(k, n)
    a @ b
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * m * k * n / best / 1e9


def run_variants(repeats: int) -> dict[str, dict]:
    """Each variant in a child process of this script; {variant: measure()'s dict}."""
    results = {}
    for label, setting in VARIANTS.items():
        env = {k: v for k, v in os.environ.items() if k not in ("MLX_STEER_BLAS", "OPENBLAS_CORETYPE")} | setting
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "blas.json"
            proc = subprocess.run([sys.executable, __file__, "--child", "--repeats", str(repeats), "--json", str(out)],
                                  env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"{label} failed:\n{proc.stderr[-2000:]}")
            results[label] = json.loads(out.read_text())
    return results


def rows(results: dict[str, dict]) -> list[dict]:
    """bench/run.py's rows: each measure per variant, the others' speed-up over the reference (the target
    asked of mlx_steer's default)."""
    ref_label, *_, fast_label = VARIANTS
    ref = results[ref_label]
    table = []
    for key, bench, unit, target in (
            ("matmul_gflops", "MLX fp32 matmul (256x576)·(576x1536)", "GFLOP/s", 5.0),
            ("torch_matmul_gflops", "torch fp32 matmul (256x576)·(576x1536), same process", "GFLOP/s", None),
            ("prefill_1x64_tok_s", f"MLX prefill 1x{PREFILL_TOKENS}, SmolLM2", "tok/s", None),
            ("prefill_8x64_tok_s", f"MLX prefill 8x{PREFILL_TOKENS}, SmolLM2", "tok/s", None),
            ("decode_tok_s", f"MLX greedy decode, SmolLM2 ({DECODE_TOKENS} tokens)", "tok/s", None)):
        if any(r.get(key) is None for r in results.values()):
            continue  # torch not installed
        for label, r in results.items():
            note = r["blas"] + (f", {r['core']} kernels" if r.get("core") else "")
            row = {"benchmark": bench, "variant": label, "value": r[key], "unit": unit, "note": note}
            if label != ref_label:
                row["ratio"] = r[key] / ref[key]
                if target is not None and label == fast_label:
                    row.update(target=f">= {target:g}x", met=row["ratio"] >= target)
            table.append(row)
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        assert args.json is not None
        args.json.write_text(json.dumps(measure(args.repeats)))
        return
    table = rows(run_variants(args.repeats))
    from table import markdown

    print(markdown(table))
    if args.json:
        args.json.write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
