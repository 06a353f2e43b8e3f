"""``mlx-steer doctor``: the platform, versions, MLX device and which BLAS MLX uses (see
:mod:`mlx_steer.runtime.doctor`)."""

from __future__ import annotations

import argparse

SUMMARY = "show the platform, versions, MLX device and which BLAS MLX uses, with a measured matmul rate"
OPTION_GROUPS: tuple[str, ...] = ()
EXAMPLES = """\
On Linux, MLX's CPU build bundles the reference (netlib) BLAS; mlx_steer loads an optimized one (system
OpenBLAS, or Intel MKL from `pip install mkl`) before MLX is imported, and this says which one MLX uses.
MLX_STEER_BLAS=off keeps the bundled one; MLX_STEER_BLAS=/path/to/libblas.so picks a library.

examples:
  mlx-steer doctor
  MLX_STEER_BLAS=off mlx-steer doctor --json"""


def fill(sp: argparse.ArgumentParser) -> None:
    """Add the ``doctor`` options to its subparser."""
    sp.add_argument("--json", action="store_true", help="print the facts as one JSON object")
    sp.add_argument("--no-measure", action="store_true", help="skip the matmul timing")


def run(args: argparse.Namespace) -> int:
    from ..runtime import doctor

    return doctor.main(as_json=args.json, measure=not args.no_measure)
