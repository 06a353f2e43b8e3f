"""Which kernel set OpenBLAS runs: chosen from the CPU's features where OpenBLAS would not recognize the CPU.

An OpenBLAS built with ``DYNAMIC_ARCH`` (Debian's and Ubuntu's ``libopenblas0-pthread``) picks its kernels
from the CPU's model number when it loads. A CPU newer than the library, or one a virtual machine reports
as a bare "Intel(R) Xeon(R) Processor", gets the generic ``Prescott`` (SSE3) kernels: on an AVX-512 machine
with OpenBLAS 0.3.21 that made a (256×576)·(576×1536) fp32 matmul take 10.4 ms instead of 3.1 ms, and
SmolLM2's whole forward several times slower (``bench/blas.py``).

OpenBLAS reads ``OPENBLAS_CORETYPE`` once, when it is loaded. So before :mod:`.blas` loads an OpenBLAS,
:func:`choose` sets it from the CPU's feature flags (``/proc/cpuinfo``) where the user has not:
``SkylakeX`` (the AVX-512 kernels) where the CPU has AVX-512 F/CD/BW/DQ/VL, ``Haswell`` (AVX2 and FMA)
where it has those, nothing otherwise. A value the user set is left as it is (``OPENBLAS_CORETYPE=Prescott``
restores the generic kernels). An OpenBLAS built without a kernel set answers its name with the nearest it
has (its ``dynamic.c`` aliases SkylakeX to Haswell, Haswell to Sandybridge, ...), never with less than
it would detect. The variable is set in ``os.environ``, so processes this one starts (the
data-parallel workers, a served model) load OpenBLAS the same way. :func:`core_name` reads back what the
loaded library runs (``mlx-steer doctor`` prints it).
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from pathlib import Path

__all__ = ["ENV", "choose", "core_for", "core_name", "cpu_flags"]

ENV = "OPENBLAS_CORETYPE"
AVX512 = frozenset({"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"})
AVX2 = frozenset({"avx2", "fma"})


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The feature flags of the first CPU listed in ``cpuinfo`` (empty where it cannot be read)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def core_for(flags: frozenset[str] | set[str]) -> str | None:
    """The OpenBLAS kernel set for a CPU with these flags: ``SkylakeX``, ``Haswell``, or None (let OpenBLAS pick)."""
    if AVX512 <= flags:
        return "SkylakeX"
    if AVX2 <= flags:
        return "Haswell"
    return None


def choose(library: str) -> str | None:
    """Set ``OPENBLAS_CORETYPE`` for ``library`` before it is loaded, where it applies (see the module doc).

    Returns the value set, or None where nothing was set: the variable already set (kept as the user's
    choice), not an OpenBLAS, not Linux on x86-64, or a CPU without AVX2.
    """
    if ENV in os.environ or "openblas" not in os.path.basename(library).lower():
        return None
    if not sys.platform.startswith("linux") or platform.machine() not in ("x86_64", "AMD64"):
        return None
    core = core_for(cpu_flags())
    if core is not None:
        os.environ[ENV] = core
    return core


def core_name(lib: ctypes.CDLL) -> str | None:
    """The kernel set a loaded OpenBLAS runs (``openblas_get_corename``), or None for another BLAS."""
    try:
        get = lib.openblas_get_corename
    except AttributeError:
        return None
    get.restype = ctypes.c_char_p
    name = get()
    return name.decode() if name else None
