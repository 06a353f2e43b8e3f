"""Writing an exported model folder atomically: into a temporary folder beside the target, renamed
into place only when complete; an existing folder is replaced only when asked."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["EDIT_FILE", "atomic_folder", "write_edit_record"]

EDIT_FILE = "mlx_steer_edit.json"


def check_target(out_dir: str | os.PathLike, *, overwrite: bool) -> Path:
    """The target folder, checked before any work: not a file, not an existing folder unless
    ``overwrite``, inside a folder that exists (ValueError naming it otherwise)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file; give a folder to export the model into")
    if out.exists() and not overwrite:
        raise ValueError(f"{out} already exists; pass overwrite=True (--overwrite) to replace it")
    if not out.parent.is_dir():
        raise ValueError(f"{out.parent} does not exist; create it first (the export writes {out.name} inside it)")
    return out


@contextlib.contextmanager
def atomic_folder(out_dir: Path, *, overwrite: bool) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``out_dir``; on success it becomes ``out_dir`` (an old
    one is replaced when ``overwrite``), on any exception it is deleted and ``out_dir`` is untouched."""
    out = check_target(out_dir, overwrite=overwrite)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / out.name)  # out moves aside in one rename, then the new one takes its name
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_edit_record(folder: Path, record: dict[str, Any]) -> None:
    """``mlx_steer_edit.json``: what was baked into this folder's weights."""
    (folder / EDIT_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
