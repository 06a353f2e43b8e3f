"""Writing an exported model folder atomically: into a working folder beside the target, renamed into
place only when complete; an existing folder is replaced only when asked and only if it is a previous
export (:mod:`~mlx_steer.export.target`). Working folders a killed export left are removed first
(:mod:`~mlx_steer.export.partial`)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .partial import remove_stale, working_folder
from .target import EDIT_FILE, EDIT_FORMAT, check_target

__all__ = ["EDIT_FILE", "EDIT_FORMAT", "atomic_folder", "check_target", "write_edit_record"]


@contextlib.contextmanager
def atomic_folder(out_dir: Path, *, overwrite: bool, source: str | os.PathLike | None = None) -> Iterator[Path]:
    """Yield an empty working folder beside ``out_dir``; on success it becomes ``out_dir`` (a previous
    export there is replaced when ``overwrite``), on any exception it is deleted and ``out_dir`` is
    untouched. Its permissions are those ``mkdir`` gives under the user's umask."""
    out = check_target(out_dir, overwrite=overwrite, source=source)
    remove_stale(out)
    with working_folder(out, "partial") as tmp:
        try:
            yield tmp
            if out.exists():
                with working_folder(out, "old") as old:
                    os.replace(out, old / out.name)  # out moves aside in one rename, then the new one takes its name
                    os.replace(tmp, out)
                    shutil.rmtree(old, ignore_errors=True)  # what stays is removed as stale by a later export
            else:
                os.replace(tmp, out)
        finally:
            if tmp.exists():  # what stays is removed as stale by a later export
                shutil.rmtree(tmp, ignore_errors=True)


def write_edit_record(folder: Path, record: dict[str, Any]) -> None:
    """``mlx_steer_edit.json``: what was baked into this folder's weights."""
    (folder / EDIT_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
