"""The ``-o DIR`` folder of a command that writes several files (evaluate, patch, lens): checked before
any work without creating anything, then made only to write, and removed again if this call made it
and a write fails — a refused or failed run leaves no empty folder behind."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from .inputs import check_output

__all__ = ["check_out_dir", "write_into"]


def check_out_dir(out: str, names: Sequence[str], *, force: bool) -> Path:
    """``out`` checked before any work, and nothing created: an existing folder whose ``names`` are
    new (or ``force``), or a new folder's name in a writable folder.

    Raises:
        ValueError: ``out`` is a file, or one of ``names`` exists there without ``force``.
    """
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"{out} is a file; -o names a folder for {', '.join(names)}")
    if path.is_dir():
        for name in names:
            check_output(str(path / name), force=force)
    else:
        check_output(out)  # its folder exists and can be written
    return path


def write_into(out: Path, names: Sequence[str], write: Callable[[list[Path]], object]) -> list[Path]:
    """Run ``write(paths)`` with ``paths`` = ``out / name`` for each of ``names``; ``out`` is made here
    if new and removed again when the write fails."""
    try:
        out.mkdir()
        created = True
    except FileExistsError:
        created = False
    paths = [out / name for name in names]
    try:
        write(paths)
    except BaseException:
        if created:
            shutil.rmtree(out)
        raise
    return paths
