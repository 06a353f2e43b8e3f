"""Vector files: a SteeringVector as safetensors (or, named ``*.gguf``, as a llama.cpp / repeng
control vector, see :mod:`mlx_steer.vectors.gguf_vector`). No pickle: raw arrays plus a JSON header.

Layout, format version 1:

- one tensor per site, named by its resolved path (``model.layers.8``), shape (D,) or (n, D), in
  the vector's dtype;
- string metadata: ``format`` = ``mlx_steer.vector``, ``format_version`` = ``1``, ``sites`` (JSON
  list: safetensors sorts tensor names, this keeps the vector's site order), ``hidden_size``,
  ``hook_point``, ``dtype``, ``created_by``, and, when set, ``model_id``, ``method``,
  ``read_positions``; each ``extra`` entry as ``extra.<key>``. A field that is None is left out.
- ``calibration`` (when the vector is calibrated): the JSON of its
  :class:`~mlx_steer.vectors.calibration.Calibration`. Files without it load uncalibrated, and a
  reader that predates it ignores it, so the format version stays 1. A GGUF control vector holds
  no calibration.

Loading with ``model=`` checks the hidden size and every site against that model and reports all
differences in one error. A different ``model_id`` alone is accepted, because vectors port between
fine-tunes of one base model; it is only mentioned when something else differs. Decoder-layer
paths are ported between backends that name the layer container differently (gpt2 is
``model.h.3`` in mlx-lm and ``transformer.h.3`` in transformers); the loaded vector carries the
model's own paths.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .calibration import Calibration
from .steering_vector import SteeringVector

FORMAT = "mlx_steer.vector"
FORMAT_VERSION = "1"
_REQUIRED = ("hidden_size", "hook_point", "dtype", "created_by")
_OPTIONAL = ("model_id", "method", "read_positions")


def save_vector(
    vec: SteeringVector,
    path: str | os.PathLike,
    *,
    model_hint: str | None = None,
    layer_path_template: str = "model.layers.{}",
) -> Path:
    """Write ``vec`` to ``path`` (replacing it atomically): a safetensors vector file, or, when
    the name ends in ``.gguf``, a llama.cpp / repeng control-vector GGUF.

    Args:
        vec: The vector to save.
        path: Destination, conventionally ``*.safetensors``; ``*.gguf`` writes a control vector.
            Its folder must exist.
        model_hint: GGUF only: the model type stored in the file (e.g. ``"llama"``); by default
            ``vec.extra["model_hint"]``, else the ``model_type`` in ``config.json`` of the folder
            named by ``vec.model_id``.
        layer_path_template: GGUF only: how a decoder layer's path is spelled (``{}`` is its index).

    Returns:
        The path written.

    Raises:
        ValueError: ``vec`` is not a SteeringVector; for GGUF, a vector GGUF cannot hold (see
            :func:`mlx_steer.vectors.gguf_vector.export_gguf`) or no model hint.
        FileNotFoundError: the destination folder does not exist.
        ImportError: GGUF needs the ``gguf`` package.
    """
    if not isinstance(vec, SteeringVector):
        raise ValueError(f"save_vector takes a SteeringVector, got {type(vec).__name__}")
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot save to {path}: folder {path.parent} does not exist")
    if path.suffix.lower() == ".gguf":
        from .gguf_vector import export_gguf

        hint = model_hint or vec.extra.get("model_hint") or _model_type(vec.model_id)
        if not hint:
            raise ValueError(f"saving {path} as a GGUF control vector needs model_hint (the model type, e.g. 'llama'); "
                             f"the vector names no model folder to read it from")
        return replace_atomically(path, lambda tmp: export_gguf(vec, tmp, model_hint=hint,
                                                      layer_path_template=layer_path_template))
    from safetensors.numpy import save_file

    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "sites": json.dumps(list(vec.sites))}
    meta |= {k: str(getattr(vec, k)) for k in (*_REQUIRED, *_OPTIONAL) if getattr(vec, k) is not None}
    meta |= {f"extra.{k}": v for k, v in vec.extra.items()}
    if vec.calibration is not None:
        meta["calibration"] = vec.calibration.to_json()
    return replace_atomically(path, lambda tmp: save_file({s: a.copy() for s, a in vec.directions.items()}, tmp, metadata=meta))


def replace_atomically(path: Path, write: Callable[[str], object]) -> Path:
    """``write(tmp)`` to a temporary file beside ``path``, then rename it onto ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _model_type(model_id: str | None) -> str | None:
    """``model_type`` from ``<model_id>/config.json`` when model_id is a local model folder."""
    if model_id is None:
        return None
    try:
        config = json.loads((Path(model_id).expanduser() / "config.json").read_text(encoding="utf-8"))
    except (TypeError, OSError, ValueError):
        return None
    value = config.get("model_type") if isinstance(config, dict) else None
    return value if isinstance(value, str) and value else None


def load_vector(
    path: str | os.PathLike,
    *,
    model: Any = None,
    revision: str | None = None,
    filename: str | None = None,
    name: str | None = None,
) -> SteeringVector:
    """Read a vector file written by :func:`save_vector`, from disk or from a hub repo.

    Args:
        path: The ``.safetensors`` vector file, or a control-vector GGUF (told by its content); a
            vector-pack folder (:func:`~mlx_steer.vectors.pack.save_vector_pack`); or a Hugging Face
            hub repo id ``org/name`` (from the hub cache; downloaded when not cached unless
            ``HF_HUB_OFFLINE`` is set). A local path that exists always wins.
        revision: Hub ids only: a branch, tag or commit hash (default: ``main``).
        filename: Which vector file of a folder or repo; without it (and ``name``) it must hold one.
        name: Which vector of a pack, by the name in its card (or a file's stem).
        model: Optional model (anything with ``hidden_size``, ``resolve_path`` and optionally
            ``model_id`` and ``layer_paths``, like both backends' models) to check the vector
            against; the returned vector's sites are then that model's paths.

    Returns:
        The SteeringVector, arrays bit-identical to the saved ones.

    Raises:
        FileNotFoundError: no file at ``path`` and not a hub repo id; a repo id not in the hub
            cache when offline (at once), or not found on the hub.
        ValueError: a folder or repo with no vector file, or several and no ``filename``/``name``
            (lists them); not a safetensors file, not an mlx_steer vector file (says what was found), an
            unsupported format version or malformed metadata, or it does not fit ``model`` (every
            difference listed).
    """
    from .hub import vector_source

    path = vector_source(path, revision=revision, filename=filename, name=name)
    vec = _read_gguf(path) if _is_gguf(path) else _read_safetensors(path)
    if model is None:
        return vec
    layer_paths = getattr(model, "layer_paths", ())
    try:
        validate_against(vec, hidden_size=model.hidden_size, resolve_path=model.resolve_path,
                         model_id=getattr(model, "model_id", None), layer_paths=layer_paths)
    except ValueError as exc:
        raise ValueError(f"vector file {path} does not fit this model: {exc}") from None
    ported = {s: _port(s, model.resolve_path, layer_paths) for s in vec.sites}
    return vec.with_sites({s: p for s, p in ported.items() if p != s})


def _is_gguf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def _read_gguf(path: Path) -> SteeringVector:
    from .gguf_vector import import_gguf

    return import_gguf(path)


def _read_safetensors(path: Path) -> SteeringVector:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, TypeError, ValueError) as exc:
        raise ValueError(f"{path} is not a safetensors file we can read ({exc}); expected an mlx_steer vector file") from exc
    if meta.get("format") != FORMAT:
        names = ", ".join(sorted(tensors)[:5]) + (", ..." if len(tensors) > 5 else "")
        raise ValueError(
            f"{path} is not an mlx_steer vector file: metadata format is {meta.get('format')!r} "
            f"(expected {FORMAT!r}); it holds {len(tensors)} tensors ({names or 'none'})"
        )
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} has format version {meta.get('format_version')!r}; this mlx_steer reads {FORMAT_VERSION!r}")
    fields = _fields(path, meta)
    dtypes = sorted({str(a.dtype) for a in tensors.values()})
    if dtypes != [fields["dtype"]]:
        raise ValueError(f"{path}: metadata dtype {fields['dtype']!r} does not match its tensors ({', '.join(dtypes)})")
    try:
        return SteeringVector(directions={s: tensors[s] for s in _site_order(path, meta, tensors)}, **fields)
    except ValueError as exc:
        raise ValueError(f"{path}: malformed vector file: {exc}") from None


def validate_against(
    vec: SteeringVector,
    *,
    hidden_size: int,
    resolve_path: Callable[[str], str],
    model_id: str | None = None,
    layer_paths: Sequence[str] = (),
) -> None:
    """Check that ``vec`` fits a model: same hidden size, and every site a path of the model.

    Shared by both backends and :func:`load_vector`. A differing ``model_id`` is not a problem by
    itself (vectors port between fine-tunes); it is added as context when something else differs.

    Args:
        vec: The vector.
        hidden_size: The model's residual width.
        resolve_path: The model's resolver (``model.resolve_path``); raises ValueError for
            unknown paths.
        model_id: The model's id, quoted when it differs from the vector's.
        layer_paths: The model's decoder-layer paths; with them a site under another backend's
            layer container (``transformer.h.3``) is tried as ``layers.3``.

    Raises:
        ValueError: listing hidden size (file vs model), every site unknown to the model, and
            the model-id note, with the resolver's reason for the first unknown site.
    """
    problems, reasons = [], []
    if vec.hidden_size != hidden_size:
        problems.append(f"hidden size: file {vec.hidden_size}, model {hidden_size}")
    for site in vec.sites:
        try:
            _port(site, resolve_path, layer_paths)
        except ValueError as exc:
            reasons.append((site, str(exc)))
    if reasons:
        problems.append(f"sites unknown to the model: {', '.join(s for s, _ in reasons)}")
    if not problems:
        return
    if vec.model_id and model_id and vec.model_id != model_id:
        problems.append(f"model id: file {vec.model_id!r}, model {model_id!r}")
    detail = f" ({reasons[0][0]}: {reasons[0][1]})" if reasons else ""
    raise ValueError("; ".join(problems) + detail)


def _port(site: str, resolve_path: Callable[[str], str], layer_paths: Sequence[str]) -> str:
    """The model's path for ``site``; a path under some decoder-layer container
    (``transformer.h.3.mlp``) falls back to the short form ``layers.3.mlp``."""
    try:
        return resolve_path(site)
    except ValueError:
        if not layer_paths:
            raise
        containers = {"layers", layer_paths[0].rsplit(".", 2)[-2]}
        parts = site.split(".")
        for i, (name, index) in enumerate(zip(parts, parts[1:])):
            if name in containers and index.isdigit():
                return resolve_path(".".join(["layers", *parts[i + 1 :]]))  # its error is the more specific
        raise


def _site_order(path: Path, meta: dict[str, str], tensors: dict) -> list[str]:
    if "sites" not in meta:  # safetensors sorts names; put model.layers.10 after model.layers.9
        return sorted(tensors, key=lambda s: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)])
    try:
        sites = json.loads(meta["sites"])
    except (json.JSONDecodeError, RecursionError):
        sites = None
    if not isinstance(sites, list) or not all(isinstance(x, str) for x in sites):
        raise ValueError(f"{path}: metadata 'sites' is not a JSON list of site paths: {meta['sites'][:200]!r}")
    if sorted(sites) != sorted(tensors):
        raise ValueError(f"{path}: metadata sites {sites!r} do not match its tensors {sorted(tensors)}")
    return sites


def _fields(path: Path, meta: dict[str, str]) -> dict[str, Any]:
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise ValueError(f"{path} lacks metadata {', '.join(missing)}; a version-{FORMAT_VERSION} vector file has them all")
    if not re.fullmatch(r"[0-9]+", meta["hidden_size"]) or int(meta["hidden_size"]) == 0:
        raise ValueError(f"{path}: metadata hidden_size must be a positive integer, got {meta['hidden_size']!r}")
    fields: dict[str, Any] = {k: meta[k] for k in (*_REQUIRED, *_OPTIONAL) if k in meta}
    fields["hidden_size"] = int(meta["hidden_size"])
    fields["extra"] = {k[len("extra."):]: v for k, v in meta.items() if k.startswith("extra.")}
    if "calibration" in meta:
        try:
            fields["calibration"] = Calibration.from_json(meta["calibration"])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: malformed calibration metadata: {exc}") from None
    return fields
