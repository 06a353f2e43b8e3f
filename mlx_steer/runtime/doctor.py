"""``mlx-steer doctor``: what this process runs on, and whether MLX got a fast BLAS.

Prints the platform, the versions of mlx, mlx-lm, torch and transformers, MLX's default device, which
BLAS MLX's ``cblas_sgemm`` is bound to (read from the dynamic linker, see :mod:`.blas`), the kernel set
an OpenBLAS runs (:mod:`.openblas_core`), and a measured
fp32 matmul rate; when MLX runs on the bundled reference BLAS it says how to get a fast one.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from . import blas, openblas_core

MATMUL = (256, 576, 1536)  # (M, K, N): a SmolLM2-sized projection over a batch of 256 token rows


def _version_of(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def matmul_gflops(*, m: int = MATMUL[0], k: int = MATMUL[1], n: int = MATMUL[2], seconds: float = 0.5) -> float:
    """GFLOP/s of an fp32 (m×k)·(k×n) MLX matmul on the default device (best of repeated timed runs)."""
    import mlx.core as mx

    a = mx.random.normal((m, k), key=mx.random.key(0))
    b = mx.random.normal((k, n), key=mx.random.key(1))
    mx.eval(a @ b)  # warm-up
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while True:
        start = time.perf_counter()
        mx.eval(a @ b)
        best = min(best, time.perf_counter() - start)
        if time.perf_counter() > deadline:
            return 2 * m * k * n / best / 1e9


def report(*, measure: bool = True) -> dict[str, Any]:
    """The facts ``mlx-steer doctor`` prints, as a dict (``--json`` prints it as is)."""
    setup = blas.setup()
    facts: dict[str, Any] = {
        "platform": f"{platform.system()} {platform.machine()} ({platform.platform()})",
        "python": sys.version.split()[0],
        "mlx_steer": _version_of("mlx-steer-lab"),
        "mlx": _version_of("mlx"), "mlx_backend": _mlx_build(),
        "mlx_lm": _version_of("mlx-lm"), "torch": _version_of("torch"), "transformers": _version_of("transformers"),
        "blas_setting": setup.setting, "blas_error": setup.error,
        "openblas_core": setup.core, "openblas_core_chosen": setup.core_chosen,
    }
    if facts["mlx"] is None:
        return facts | {"mlx_device": None, "blas": None, "blas_kind": None, "blas_fast": None,
                        "matmul_gflops": None, "advice": "mlx is not installed: pip install mlx-steer-lab's "
                        "dependencies (see the README); the torch backend works without it"}
    import mlx.core as mx

    bound = blas.bound_library()
    reference = bound is not None and "mlx_cpu.libs" in bound
    facts |= {
        "mlx_device": str(mx.default_device()), "blas": bound, "blas_kind": blas.describe(bound),
        "blas_fast": None if bound is None and sys.platform != "darwin" else not reference,
        "matmul_gflops": round(matmul_gflops(), 1) if measure else None,
        "advice": _advice(setup, reference),
    }
    return facts


def _mlx_build() -> str:
    builds = [name for name in ("mlx-metal", "mlx-cpu", "mlx-cuda") if _version_of(name) is not None]
    return ", ".join(builds) or "mlx"


def _advice(setup: blas.BlasSetup, reference: bool) -> str | None:
    if not reference:
        return None
    if setup.setting in blas.OFF_VALUES:
        return f"the optimized BLAS is turned off ({blas.ENV}={setup.setting}); unset it to use one"
    if setup.error is not None:
        return setup.error
    if setup.mlx_was_imported:
        return "mlx was imported before mlx_steer, too late to change its BLAS: import mlx_steer first"
    return f"no optimized BLAS found; {blas.HOW_TO_GET}"


def format_report(facts: dict[str, Any]) -> str:
    """The human-readable form of :func:`report`."""
    versions = ", ".join(f"{name} {facts[key]}" for name, key in
                         (("mlx", "mlx"), ("mlx-lm", "mlx_lm"), ("torch", "torch"), ("transformers", "transformers"))
                         if facts[key] is not None)
    lines = [
        ("platform", f"{facts['platform']}, Python {facts['python']}"),
        ("mlx_steer", facts["mlx_steer"] or "not installed (running from a checkout)"),
        ("versions", f"{versions} ({facts['mlx_backend']} build)" if facts["mlx"] else versions or "-"),
        ("mlx device", facts["mlx_device"] or "-"),
        ("BLAS", f"{facts['blas_kind']}: {facts['blas']}" if facts["blas"] else facts["blas_kind"] or "-"),
        (f"{blas.ENV}", facts["blas_setting"]),
    ]
    if facts["openblas_core"] is not None:
        how = (f"{openblas_core.ENV}={facts['openblas_core_chosen']}, set from the CPU's features"
               if facts["openblas_core_chosen"] else f"{openblas_core.ENV}={os.environ[openblas_core.ENV]}, set by you"
               if openblas_core.ENV in os.environ else "OpenBLAS's own detection")
        lines.append(("OpenBLAS kernels", f"{facts['openblas_core']} ({how})"))
    if facts["matmul_gflops"] is not None:
        m, k, n = MATMUL
        lines.append(("matmul", f"fp32 ({m}x{k})·({k}x{n}): {facts['matmul_gflops']:.1f} GFLOP/s"))
    if facts["advice"]:
        lines.append(("advice", facts["advice"]))
    width = max(len(key) for key, _ in lines)
    return "\n".join(f"{key:<{width}}  {value}" for key, value in lines)


def main(*, as_json: bool = False, measure: bool = True) -> int:
    """Print the report (as JSON with ``as_json``); 0 always: a slow BLAS is advice, not a failure."""
    facts = report(measure=measure)
    print(json.dumps(facts, indent=2) if as_json else format_report(facts))
    return 0
