"""OpenBLAS's kernel set: chosen from the CPU's flags before OpenBLAS loads, a user's value kept, doctor names it.

The oracle for "which kernels run" is OpenBLAS's own answer (``openblas_get_corename``) in a fresh
interpreter; the matmul MLX computes on them is checked against numpy's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mlx_steer.runtime import blas, openblas_core

FAST = next((p for p in blas.auto_candidates() if os.path.exists(p) and "openblas" in p), None)
FLAGS = openblas_core.cpu_flags()
EXPECTED = openblas_core.core_for(FLAGS)
needs_openblas_here = pytest.mark.skipif(
    FAST is None or blas.bundled_reference() is None or EXPECTED is None or not sys.platform.startswith("linux"),
    reason="needs Linux x86-64 with AVX2, the mlx-cpu build and a system OpenBLAS")

PROBE = """
import json, os
import mlx_steer
from mlx_steer.runtime import blas
import mlx.core as mx, numpy as np
a = np.random.default_rng(0).standard_normal((256, 576), dtype=np.float32)
b = np.random.default_rng(1).standard_normal((576, 1536), dtype=np.float32)
err = float(np.abs(np.array(mx.array(a) @ mx.array(b)) - a @ b).max())
s = blas.setup()
print(json.dumps({"core": s.core, "chosen": s.core_chosen, "env": os.environ.get("OPENBLAS_CORETYPE"), "err": err}))
"""


def probe(env: dict[str, str]) -> dict:
    full = {k: v for k, v in os.environ.items() if k not in (blas.ENV, openblas_core.ENV)} | env
    done = subprocess.run([sys.executable, "-c", PROBE], env=full, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_kernel_set_follows_the_cpu_flags(tmp_path):
    avx512 = {"sse3", "avx", "avx2", "fma", "avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}
    assert openblas_core.core_for(avx512) == "SkylakeX"
    assert openblas_core.core_for(avx512 - {"avx512bw"}) == "Haswell"  # AVX-512 F alone (Knights Landing) is not SkylakeX
    assert openblas_core.core_for({"sse3", "avx", "avx2", "fma"}) == "Haswell"
    assert openblas_core.core_for({"sse3", "avx", "avx2"}) is None and openblas_core.core_for(set()) is None
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\nflags\t\t: fpu sse3 avx2 fma\n\n"
                    "processor\t: 1\nflags\t\t: fpu\n")
    assert openblas_core.cpu_flags(info) == {"fpu", "sse3", "avx2", "fma"}  # the first CPU's line
    assert openblas_core.cpu_flags(tmp_path / "missing") == frozenset()


def test_only_an_unset_variable_and_an_openblas_are_touched(monkeypatch):
    monkeypatch.setenv(openblas_core.ENV, "Prescott")
    assert openblas_core.choose("/usr/lib/libopenblas.so.0") is None and os.environ[openblas_core.ENV] == "Prescott"
    monkeypatch.delenv(openblas_core.ENV)
    assert openblas_core.choose("/opt/intel/libmkl_rt.so.2") is None and openblas_core.ENV not in os.environ
    if sys.platform.startswith("linux") and EXPECTED is not None:
        assert openblas_core.choose("/usr/lib/libopenblas.so.0") == EXPECTED == os.environ[openblas_core.ENV]


@needs_openblas_here
def test_openblas_runs_the_kernels_chosen_from_the_flags_and_mlx_computes_right():
    facts = probe({})
    assert facts["chosen"] == EXPECTED == facts["env"]  # set for the processes this one starts too
    assert facts["core"] is not None and facts["core"].lower() == EXPECTED.lower()  # OpenBLAS's own answer
    assert facts["err"] < 1e-2  # 576-term fp32 sums of N(0,1) products, against numpy's


@needs_openblas_here
def test_a_users_kernel_set_is_kept_and_doctor_says_whose_it_is():
    facts = probe({openblas_core.ENV: "Prescott"})
    assert facts["chosen"] is None and facts["core"] == "Prescott" and facts["err"] < 1e-2
    full = {k: v for k, v in os.environ.items() if k not in (blas.ENV, openblas_core.ENV)}
    for env, says in (({}, f"{EXPECTED} (OPENBLAS_CORETYPE={EXPECTED}, set from the CPU's features)"),
                      ({openblas_core.ENV: "Prescott"}, "Prescott (OPENBLAS_CORETYPE=Prescott, set by you)")):
        done = subprocess.run([sys.executable, "-m", "mlx_steer.cli", "doctor", "--no-measure"], env=full | env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
        assert f"OpenBLAS kernels  {says}" in done.stdout
