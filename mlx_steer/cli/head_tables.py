"""Where the ``heads`` subcommands write their layer x head tables: ``--out`` (.csv or .json) and
``--plot`` (a heatmap), checked before any model loads and written once the table exists."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from typing import Any

from .arguments import usage_error
from .inputs import check_output


def table_outputs(args: argparse.Namespace) -> tuple[Path | None, Path | None]:
    """The checked ``--out`` and ``--plot`` paths (a usage error for a bad name or an existing file)."""
    if args.out is not None and not args.out.endswith((".csv", ".json")):
        usage_error(args, f"--out {args.out}: give a .csv or .json file name")
    out = check_output(args.out, force=args.force) if args.out else None
    plot = check_output(args.plot, force=args.force) if args.plot else None
    if plot is not None and importlib.util.find_spec("matplotlib") is None:
        raise ImportError("--plot needs matplotlib: pip install matplotlib (or drop --plot)")
    return out, plot


def write_table(table: Any, out: Path | None, plot: Path | None, *, quiet: bool) -> None:
    """Save ``table`` (a :class:`~mlx_steer.heads.HeadScoreTable`) and its heatmap where asked."""
    if out is not None:
        table.to_json(out) if out.suffix == ".json" else table.to_csv(out)
    if plot is not None:
        table.heatmap(plot)
    if not quiet and (out or plot):
        print(f"wrote {', '.join(str(p) for p in (out, plot) if p is not None)}")
