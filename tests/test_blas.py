"""MLX's BLAS on Linux: mlx_steer loads an optimized one before MLX, the switch turns it off, doctor names it.

Each case runs in a fresh interpreter, since what MLX binds is fixed when ``mlx.core`` is first imported.
The oracle for "which library MLX calls" is the dynamic linker's own answer, checked against what the
setting asked for; the matmul MLX computes is checked against numpy's either way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mlx_steer.runtime import blas

pytestmark = pytest.mark.skipif(blas.bundled_reference() is None or not sys.platform.startswith("linux"),
                                reason="MLX here is not the Linux CPU build with the bundled reference BLAS")

FAST = next((p for p in blas.auto_candidates() if os.path.exists(p)), None)
needs_fast = pytest.mark.skipif(FAST is None and not os.environ.get("CI"),
                                reason="no optimized BLAS installed (CI installs libopenblas0-pthread)")

# Runs in the child: what MLX binds, its matmul against numpy's, and whether mlx was imported eagerly.
PROBE = """
import json, sys, warnings
warnings.simplefilter("always")
{before}
import mlx_steer
eager = "mlx.core" in sys.modules
from mlx_steer.runtime import blas
import mlx.core as mx, numpy as np
a = np.random.default_rng(0).standard_normal((64, 96), dtype=np.float32)
b = np.random.default_rng(1).standard_normal((96, 80), dtype=np.float32)
err = float(np.abs(np.array(mx.array(a) @ mx.array(b)) - a @ b).max())
print(json.dumps({{"bound": blas.bound_library(), "loaded": blas.setup().loaded, "eager": eager, "err": err}}))
"""


def probe(*, env: dict[str, str] | None = None, before: str = "") -> tuple[dict, str]:
    full = {k: v for k, v in os.environ.items() if k != blas.ENV} | (env or {})
    done = subprocess.run([sys.executable, "-c", PROBE.format(before=before)], env=full, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


@needs_fast
def test_auto_detect_binds_mlx_to_the_optimized_blas_without_importing_mlx_eagerly():
    assert FAST is not None, "CI must install an optimized BLAS (libopenblas0-pthread)"
    facts, stderr = probe()
    assert facts["eager"] is False  # import mlx_steer alone still does not import mlx
    assert facts["loaded"] == FAST and facts["bound"] == os.path.realpath(FAST)
    assert facts["err"] < 1e-3 and "RuntimeWarning" not in stderr


def test_the_switch_keeps_the_bundled_reference_blas():
    facts, stderr = probe(env={blas.ENV: "off"})
    assert facts["loaded"] is None and facts["bound"] == os.path.realpath(blas.bundled_reference() or "")
    assert facts["err"] < 1e-3 and "RuntimeWarning" not in stderr


@needs_fast
def test_a_path_picks_that_library():
    assert FAST is not None
    facts, _ = probe(env={blas.ENV: FAST})
    assert facts["bound"] == os.path.realpath(FAST)


@needs_fast
def test_mlx_imported_first_keeps_the_reference_blas_and_warns_once_saying_what_to_do():
    facts, stderr = probe(before="import mlx.core")
    assert facts["loaded"] is None and facts["bound"] == os.path.realpath(blas.bundled_reference() or "")
    assert stderr.count("RuntimeWarning") == 1
    assert "mlx was imported before mlx_steer" in stderr and "import mlx_steer before mlx" in stderr
    assert f"{blas.ENV}=off" in stderr


def test_an_unusable_library_is_named_with_what_is_valid_and_mlx_still_computes_right():
    facts, stderr = probe(env={blas.ENV: "/no/such/libblas.so"})
    assert facts["loaded"] is None and facts["bound"] == os.path.realpath(blas.bundled_reference() or "")
    assert "MLX_STEER_BLAS='/no/such/libblas.so' cannot be used" in stderr
    assert "valid: 'auto' (default), 'off', or the path of a shared library exporting cblas_sgemm" in stderr
    assert facts["err"] < 1e-3


def test_nothing_is_loaded_where_mlx_does_not_use_the_bundled_blas():
    # as on macOS (Accelerate): the platform check alone decides; nothing is loaded, MLX keeps its own
    facts, stderr = probe(before="import sys; sys.platform = 'darwin'")
    assert facts["loaded"] is None and facts["bound"] is None and "RuntimeWarning" not in stderr


def doctor(env: dict[str, str]) -> dict:
    full = {k: v for k, v in os.environ.items() if k != blas.ENV} | env
    done = subprocess.run([sys.executable, "-m", "mlx_steer.cli", "doctor", "--json", "--no-measure"], env=full,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    return json.loads(done.stdout)


@needs_fast
def test_doctor_names_the_blas_both_ways_and_says_how_to_get_the_fast_one():
    on, off = doctor({}), doctor({blas.ENV: "off"})
    assert on["blas_kind"] == blas.describe(FAST) and on["blas_fast"] is True and on["advice"] is None
    assert on["blas"] == os.path.realpath(FAST or "") and on["mlx_device"].startswith("Device(")
    assert off["blas_kind"] == "reference BLAS (netlib) bundled with the mlx-cpu wheel" and off["blas_fast"] is False
    assert off["advice"] == f"the optimized BLAS is turned off ({blas.ENV}=off); unset it to use one"
    assert on["mlx"] == off["mlx"] and on["mlx"] is not None
