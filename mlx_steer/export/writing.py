"""An export from start to end: the edit baked (everything refused before anything is written), the
backend writing its framework's folder into a temporary folder, the edit record, the rename."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .bake import bake
from .folder import EDIT_FORMAT, atomic_folder, check_target, write_edit_record

if TYPE_CHECKING:
    from ..engine.protocols import Backend

__all__ = ["DTYPES", "export_model"]

DTYPES = ("float32", "float16", "bfloat16")


def export_model(backend: Backend, out_dir: str | os.PathLike, interventions: Mapping | Any, *,
                 dtype: str | None = None, overwrite: bool = False, version: str,
                 note: Mapping[str, Any] | None = None) -> Path:
    """Bake ``interventions`` and write the model folder at ``out_dir`` (see ``Steerable.export``)."""
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)} or None (keep the model's)")
    out = check_target(out_dir, overwrite=overwrite, source=backend.model_id)
    baked = bake(backend, interventions)
    with atomic_folder(out, overwrite=overwrite, source=backend.model_id) as tmp:
        backend.write_model(tmp, baked, dtype=dtype)
        write_edit_record(tmp, {
            "format": EDIT_FORMAT, "format_version": 1, "created_by": version,
            "source_model": backend.model_id, "backend": type(backend).__name__, "model_type": backend.model_type,
            "dtype": dtype, "edits": baked.edits, "modules_changed": sorted(baked.modules),
            "config_changes": {**baked.config, **({"tie_word_embeddings": False} if baked.untie else {})},
            "zero_biases_added": len(baked.bias_modules), **({"note": dict(note)} if note else {}),
        })
    return out
