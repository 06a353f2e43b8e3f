"""The folder an export may write: checked before any work, so a refused export touches nothing.

``overwrite`` replaces only a previous export (a folder holding export's edit record), and never the
source model's folder, one that contains it, or one inside it (compared as resolved real paths).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["EDIT_FILE", "EDIT_FORMAT", "check_target", "is_export"]

EDIT_FILE = "mlx_steer_edit.json"
EDIT_FORMAT = "mlx_steer.edit"


def is_export(folder: Path) -> bool:
    """Whether ``folder`` holds an edit record an export wrote (``{"format": "mlx_steer.edit", ...}``)."""
    record = folder / EDIT_FILE
    if not record.is_file():
        return False
    try:
        data = json.loads(record.read_text())
    except (OSError, UnicodeDecodeError, ValueError):  # unreadable or not JSON: not a record export wrote
        return False
    return isinstance(data, dict) and data.get("format") == EDIT_FORMAT


def check_target(out_dir: str | os.PathLike, *, overwrite: bool, source: str | os.PathLike | None = None) -> Path:
    """The target folder, checked before any work (ValueError naming it and why otherwise).

    Args:
        out_dir: The folder to write.
        overwrite: Replace ``out_dir`` if it is a previous export.
        source: The source model's folder (or a hub id, which has no local folder to protect).

    Raises:
        ValueError: ``out_dir`` is a file; is, contains or is inside the source model's folder; exists
            and ``overwrite`` is not given; exists and is not a previous export; or its parent is missing.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file; give a folder to export the model into")
    src = Path(source) if source is not None and str(source) and Path(source).is_dir() else None
    if src is not None:
        real_out, real_src = Path(os.path.realpath(out)), Path(os.path.realpath(src))
        if real_out == real_src:
            raise ValueError(f"{out} is the source model's folder; export into a new folder beside it")
        if real_src.is_relative_to(real_out):
            raise ValueError(f"{out} contains the source model's folder {src}; export into a new folder beside it")
        if real_out.is_relative_to(real_src):
            raise ValueError(f"{out} is inside the source model's folder {src}; export into a folder outside it")
    if out.exists() and not overwrite:
        raise ValueError(f"{out} already exists; pass overwrite=True (--overwrite) to replace it")
    if out.exists() and not is_export(out):
        raise ValueError(f"{out} is not a previous export (it holds no {EDIT_FILE} that export wrote); overwrite "
                         "replaces only an export's folder: give a new folder, or remove this one yourself")
    if not out.parent.is_dir():
        raise ValueError(f"{out.parent} does not exist; create it first (the export writes {out.name} inside it)")
    return out
