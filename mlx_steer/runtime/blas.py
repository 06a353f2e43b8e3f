"""An optimized BLAS for MLX's Linux CPU build, loaded before MLX is.

The ``mlx-cpu`` wheel on Linux links the reference (netlib) BLAS it bundles
(``mlx_cpu.libs/libblas-*.so.3.10.0``, a few GFLOP/s). MLX binds its ``cblas_sgemm`` and LAPACK calls when
``mlx.core`` is first imported (Python loads extensions with ``RTLD_NOW``), and the dynamic linker looks in
the libraries loaded with ``RTLD_GLOBAL`` before MLX's own dependencies. So a BLAS loaded globally *before*
that import is the one MLX uses; one loaded after is not. ``import mlx_steer`` calls
:func:`prefer_fast_blas` first thing, which does that when it applies:

- Linux, and the installed MLX is the ``mlx-cpu`` build that bundles the reference BLAS (not macOS, where
  MLX uses Accelerate, and not another MLX backend);
- ``MLX_STEER_BLAS`` unset or ``auto``: the first installed of :func:`auto_candidates` (system OpenBLAS,
  then Intel MKL from ``pip install mkl`` in this environment); a path: that library; ``off``: nothing.

Nothing of MLX is imported here. When ``mlx.core`` was imported before ``mlx_steer`` (too late to change),
a fast BLAS is installed and the switch is not ``off``, one warning says so and what to do.
"""

from __future__ import annotations

import ctypes
import glob
import os
import platform
import sys
import warnings
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from . import openblas_core

ENV = "MLX_STEER_BLAS"
OFF_VALUES = ("off", "0", "none", "reference")
HOW_TO_GET = ("install one: `sudo apt-get install libopenblas0-pthread` (Debian/Ubuntu; other distributions "
              "have an OpenBLAS package too) or `pip install mkl`, or set MLX_STEER_BLAS to a BLAS library's "
              "path; and import mlx_steer before mlx")


def auto_candidates() -> list[str]:
    """The libraries auto-detection tries, in order (whether or not they exist here)."""
    arch = platform.machine()
    system = [f"/usr/lib/{arch}-linux-gnu/openblas-{flavour}/libopenblas.so.0"  # Debian/Ubuntu
              for flavour in ("pthread", "openmp", "serial")]
    system += [f"/usr/lib/{arch}-linux-gnu/libopenblas.so.0", "/usr/lib64/libopenblas.so.0",  # Fedora
               "/usr/lib64/libopenblasp.so.0", "/usr/lib/libopenblas.so.0"]  # Arch
    mkl = sorted(glob.glob(os.path.join(sys.prefix, "lib", "libmkl_rt.so.*")), reverse=True)  # pip install mkl
    return system + mkl


@dataclass(frozen=True)
class BlasSetup:
    """What :func:`prefer_fast_blas` found and did in this process.

    Attributes:
        applies: MLX here is the Linux CPU build that bundles the reference BLAS.
        setting: ``MLX_STEER_BLAS`` as read (``"auto"`` when unset).
        wanted: the library the setting asks for (auto-detected or a path), or None.
        loaded: the library this module loaded globally before MLX, or None.
        mlx_was_imported: ``mlx.core`` was already imported when mlx_steer was (too late to change).
        error: why the requested library could not be used, or None.
        core: the kernel set the loaded OpenBLAS runs (``openblas_get_corename``), or None.
        core_chosen: the ``OPENBLAS_CORETYPE`` this module set from the CPU's features before loading
            it (see :mod:`.openblas_core`), or None (the user's own value, or nothing set).
    """

    applies: bool
    setting: str
    wanted: str | None = None
    loaded: str | None = None
    mlx_was_imported: bool = False
    error: str | None = None
    core: str | None = None
    core_chosen: str | None = None


_SETUP: BlasSetup | None = None


def setup() -> BlasSetup:
    """What happened in this process (runs :func:`prefer_fast_blas` if nothing has yet)."""
    return _SETUP if _SETUP is not None else prefer_fast_blas()


def bundled_reference() -> str | None:
    """The reference BLAS bundled with the installed ``mlx-cpu`` wheel, found without importing MLX."""
    spec = find_spec("mlx")
    for root in (spec.submodule_search_locations or []) if spec is not None else []:
        found = sorted(glob.glob(str(Path(root).parent / "mlx_cpu.libs" / "libblas-*.so*")))
        if found:
            return found[0]
    return None


def prefer_fast_blas() -> BlasSetup:
    """Load an optimized BLAS globally before MLX is imported, where that applies (see the module doc).

    Runs once per process; later calls return the first result. Never raises: a library that cannot be
    used is reported in the result's ``error`` and in a warning, and MLX keeps its bundled BLAS.
    """
    global _SETUP
    if _SETUP is None:
        _SETUP = _decide()
        if _SETUP.error is not None:
            warnings.warn(_SETUP.error, RuntimeWarning, stacklevel=3)
        elif (_SETUP.mlx_was_imported and _SETUP.wanted is not None
              and bound_library() != os.path.realpath(_SETUP.wanted)):
            warnings.warn("mlx was imported before mlx_steer, so MLX runs on the reference BLAS bundled with "
                          "the mlx-cpu wheel (20-50x slower prefill and batched work) instead of "
                          f"{_SETUP.wanted}; import mlx_steer before mlx, or set {ENV}=off to keep the "
                          "reference BLAS without this warning", RuntimeWarning, stacklevel=3)
    return _SETUP


def _decide() -> BlasSetup:
    setting = os.environ.get(ENV, "").strip() or "auto"
    if setting.lower() in (*OFF_VALUES, "auto"):
        setting = setting.lower()  # a path keeps its case
    applies = sys.platform.startswith("linux") and bundled_reference() is not None
    mlx_was_imported = "mlx.core" in sys.modules
    if not applies or setting in OFF_VALUES:
        return BlasSetup(applies=applies, setting=setting, mlx_was_imported=mlx_was_imported)
    path = _installed_fast() if setting == "auto" else setting
    if path is None or mlx_was_imported:
        return BlasSetup(applies=True, setting=setting, wanted=path, mlx_was_imported=mlx_was_imported)
    chosen = openblas_core.choose(path)  # before loading: OpenBLAS reads it once, when it loads
    try:
        lib = ctypes.CDLL(path, mode=os.RTLD_GLOBAL | os.RTLD_NOW)
        lib.cblas_sgemm  # noqa: B018 -- AttributeError when it is not a CBLAS
    except (OSError, AttributeError) as exc:
        return BlasSetup(applies=True, setting=setting, wanted=path, error=(
            f"{ENV}={setting!r} cannot be used as MLX's BLAS ({exc}); valid: 'auto' (default), 'off', or the "
            "path of a shared library exporting cblas_sgemm (e.g. OpenBLAS's libopenblas.so.0); MLX keeps "
            "its bundled reference BLAS"))
    return BlasSetup(applies=True, setting=setting, wanted=path, loaded=path, core=openblas_core.core_name(lib),
                     core_chosen=chosen)


def _installed_fast() -> str | None:
    return next((p for p in auto_candidates() if os.path.exists(p)), None)


def bound_library() -> str | None:
    """The library whose ``cblas_sgemm`` MLX calls in this process (its real path).

    None where that cannot be told: MLX not loaded yet, or not Linux. Read from the dynamic linker: the global
    definition wins when it was loaded before ``libmlx.so``, otherwise ``libmlx.so``'s own dependency does.
    """
    if not sys.platform.startswith("linux"):
        return None
    order = _loaded_objects()
    mlx_at = next((i for i, name in enumerate(order) if os.path.basename(name) == "libmlx.so"), None)
    if mlx_at is None:
        return None
    provider = _provider(ctypes.CDLL(None))  # the global scope: startup libraries, then RTLD_GLOBAL ones
    if provider is not None and _index(order, provider) < mlx_at:
        return provider
    try:
        own = ctypes.CDLL(order[mlx_at], mode=os.RTLD_NOLOAD | os.RTLD_LOCAL)  # searches libmlx's dependencies
    except OSError:
        return None
    return _provider(own)


class _DlInfo(ctypes.Structure):
    _fields_ = [("fname", ctypes.c_char_p), ("fbase", ctypes.c_void_p),
                ("sname", ctypes.c_char_p), ("saddr", ctypes.c_void_p)]


class _PhdrInfo(ctypes.Structure):  # the leading fields of struct dl_phdr_info
    _fields_ = [("addr", ctypes.c_void_p), ("name", ctypes.c_char_p)]


def _provider(lib: ctypes.CDLL) -> str | None:
    try:
        address = ctypes.cast(lib.cblas_sgemm, ctypes.c_void_p).value
    except AttributeError:
        return None
    info = _DlInfo()
    libc = ctypes.CDLL(None)
    libc.dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(_DlInfo)]
    if not libc.dladdr(address, ctypes.byref(info)) or not info.fname:
        return None
    return os.path.realpath(info.fname.decode())


def _loaded_objects() -> list[str]:
    """Real paths of the shared objects loaded in this process, in load order."""
    names: list[str] = []
    callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(_PhdrInfo), ctypes.c_size_t, ctypes.c_void_p)

    def collect(info: Any, size: int, data: Any) -> int:
        name = info.contents.name
        names.append(os.path.realpath(name.decode()) if name else "")
        return 0

    ctypes.CDLL(None).dl_iterate_phdr(callback_type(collect), None)
    return names


def _index(order: list[str], path: str) -> int:
    return order.index(path) if path in order else len(order)


def describe(path: str | None) -> str:
    """A short name for a BLAS library path: OpenBLAS, Intel MKL, BLIS, the bundled reference, Accelerate."""
    if path is None:
        return "Accelerate (macOS)" if sys.platform == "darwin" else "unknown"
    name = os.path.basename(path).lower()
    if "mlx_cpu.libs" in path:
        return "reference BLAS (netlib) bundled with the mlx-cpu wheel"
    for key, label in (("openblas", "OpenBLAS"), ("mkl", "Intel MKL"), ("blis", "BLIS")):
        if key in name:
            return label
    return "a BLAS"
