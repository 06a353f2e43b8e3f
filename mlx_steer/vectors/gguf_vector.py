"""GGUF control vectors: import and export in the layout repeng and llama.cpp use.

A control-vector GGUF holds one float32 (D,) tensor per layer named ``direction.{N}``, with metadata
``general.architecture = "controlvector"``, ``controlvector.model_hint`` (the model type, e.g.
``"llama"``) and ``controlvector.layer_count`` (the number of direction tensors).

Layer numbering: ``direction.N`` is added to the **output of decoder block N, counted from 0**,
which is our site ``model.layers.N`` with hook point ``output``. The mapping is the identity:

- llama.cpp (ggml-org/llama.cpp): ``common/common.cpp::common_control_vector_load_one`` stores
  ``direction.N`` at row N-1 of a buffer that starts at layer 1 and rejects N = 0
  ("invalid (zero) direction tensor layer index"); ``src/llama-adapter.cpp::llama_adapter_cvec``
  puts row N-1 in ``tensors[N]`` ("there's never a tensor for layer 0"), and every model graph
  (e.g. ``src/models/llama.cpp``) ends block ``il`` (0-based loop) with
  ``cur = build_cvec(cur, il)``, i.e. adds ``tensors[il]`` to that block's output ``l_out``.
- repeng (vgel/repeng): ``repeng/extract.py`` reads layer ``i`` from ``hidden_states[i + 1]``
  (index 0 is the embeddings), the output of block ``i``, and ``export_gguf`` writes it as
  ``direction.{i}`` unchanged.

So llama.cpp can never steer block 0's output: :func:`export_gguf` refuses ``model.layers.0``
(llama.cpp would skip the whole file) and :func:`import_gguf` refuses a file holding ``direction.0``
(valid: ``direction.1`` and up). repeng's default layers are 1..n-1 (``range(-1, -n, -1)`` made
positive), so its files never hold one unless asked for layer 0.
The ``gguf`` package is needed (``pip install gguf``, or the ``gguf`` extra of a checkout); numpy only otherwise.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from .steering_vector import SteeringVector

ARCHITECTURE = "controlvector"


def export_gguf(
    vec: SteeringVector, path: str | os.PathLike, *, model_hint: str, layer_path_template: str = "model.layers.{}"
) -> Path:
    """Write ``vec`` as a llama.cpp / repeng control-vector GGUF.

    Args:
        vec: An output-hook vector with (D,) directions at decoder-layer paths.
        path: Destination ``.gguf`` file.
        model_hint: The model type stored as ``controlvector.model_hint`` (e.g. ``"llama"``).
        layer_path_template: How a decoder layer's path is spelled; ``{}`` is its index.

    Returns:
        The path written. Directions are stored as float32, sorted by layer.

    Raises:
        ValueError: an input-hook vector, (n, D) tensors, sites that are not decoder layers,
            a direction at layer 0 (llama.cpp rejects ``direction.0``), or an empty model hint.
        ImportError: the ``gguf`` package is not installed.
    """
    gguf = _import_gguf()
    if not isinstance(vec, SteeringVector):
        raise ValueError(f"export_gguf takes a SteeringVector, got {type(vec).__name__}")
    if vec.hook_point != "output":
        raise ValueError(
            f"only output-hook vectors can be exported to GGUF (llama.cpp adds directions to block outputs); "
            f"this one hooks {vec.hook_point!r}. The input of layers.N is the output of layers.N-1: "
            f"use vec.with_sites(...).replace(hook_point='output') if that is what you mean"
        )
    tensors = [s for s in vec.sites if vec[s].ndim != 1]
    if tensors:
        raise ValueError(f"GGUF control vectors hold one (D,) direction per layer; {', '.join(tensors)} hold (n, D) tensors")
    if not isinstance(model_hint, str) or not model_hint:
        raise ValueError(f"model_hint must be a non-empty string like 'llama', got {model_hint!r}")
    pattern = _template_regex(layer_path_template)
    layers = {s: pattern.fullmatch(s) for s in vec.sites}
    index = {s: int(m.group(1)) for s, m in layers.items() if m is not None}
    others = [s for s in layers if s not in index]
    if others:
        raise ValueError(
            f"sites {', '.join(others)} are not decoder-layer outputs {layer_path_template.format('N')!r}; "
            f"GGUF control vectors address whole layers only (set layer_path_template if your layers are named differently)"
        )
    if 0 in index.values():
        raise ValueError(
            "llama.cpp rejects direction.0 and never steers block 0's output; "
            f"drop {layer_path_template.format(0)!r} first, e.g. vec.select([...])"
        )
    path = Path(path)
    writer = gguf.GGUFWriter(str(path), ARCHITECTURE)
    try:
        writer.add_string(f"{ARCHITECTURE}.model_hint", model_hint)
        writer.add_uint32(f"{ARCHITECTURE}.layer_count", len(index))
        for site in sorted(index, key=index.__getitem__):
            writer.add_tensor(f"direction.{index[site]}", np.ascontiguousarray(vec[site], dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return path


def import_gguf(path: str | os.PathLike, *, layer_path_template: str = "model.layers.{}") -> SteeringVector:
    """Read a llama.cpp / repeng control-vector GGUF.

    Args:
        path: The ``.gguf`` file.
        layer_path_template: How a decoder layer's path is spelled; ``{}`` is its index.

    Returns:
        An output-hook float32 SteeringVector with ``direction.N`` at ``model.layers.N``, sorted
        by layer; ``extra["model_hint"]`` holds the file's model hint when it has one.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not a GGUF file, not a control vector (names the architecture found), a
            tensor not named ``direction.N``, a ``direction.0`` (llama.cpp's layers start at 1), two tensors for one layer (``direction.7`` and
            ``direction.007``), a direction that is not a 1-D float array, or malformed metadata
            (a model hint that is not a string, a layer count that is not the number of
            directions); the message names the file.
        ImportError: the ``gguf`` package is not installed.
    """
    gguf = _import_gguf()
    _template_regex(layer_path_template)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no GGUF file at {path}")
    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, IndexError, KeyError, OverflowError) as exc:
        raise ValueError(f"{path} is not a GGUF file we can read ({exc})") from exc
    arch = _string_field(reader, "general.architecture", path)
    if arch != ARCHITECTURE:
        raise ValueError(f"{path} is not a control vector: general.architecture is {arch!r}, expected {ARCHITECTURE!r}")
    directions: dict[int, np.ndarray] = {}
    names: dict[int, str] = {}
    for t in reader.tensors:
        m = re.fullmatch(r"direction\.(\d+)", t.name)
        if m is None:
            raise ValueError(f"{path} holds tensor {t.name!r}; a control vector holds only 'direction.N' tensors")
        data = np.asarray(t.data)
        if data.ndim != 1 or data.dtype.kind != "f":
            raise ValueError(f"{t.name} in {path} must be a 1-D float direction, got {t.tensor_type.name} of shape {data.shape}")
        layer = int(m.group(1))
        if layer == 0:
            raise ValueError(
                f"{path} holds tensor {t.name!r}: control-vector layers start at 1 (llama.cpp refuses the whole "
                f"file; block 0's output cannot be steered); valid: direction.1 and up, one per layer after the first"
            )
        if layer in names:
            raise ValueError(f"{path} holds two directions for layer {layer}: {names[layer]!r} and {t.name!r}")
        directions[layer], names[layer] = data.astype(np.float32), t.name
    if not directions:
        raise ValueError(f"{path} holds no direction tensors")
    count = _int_field(reader, f"{ARCHITECTURE}.layer_count", path)
    if count is not None and count != len(directions):
        raise ValueError(f"{path}: metadata {ARCHITECTURE}.layer_count is {count}, but it holds {len(directions)} directions")
    hint = _string_field(reader, f"{ARCHITECTURE}.model_hint", path)
    try:
        return SteeringVector(
            directions={layer_path_template.format(i): directions[i] for i in sorted(directions)},
            hook_point="output",
            extra={"model_hint": hint} if hint else {},
        )
    except ValueError as exc:  # e.g. NaN in a direction, or directions of different sizes
        raise ValueError(f"{path}: {exc}") from None


def _import_gguf() -> Any:
    try:
        import gguf
    except ImportError as exc:
        raise ImportError('GGUF control vectors need the gguf package: pip install gguf') from exc
    return gguf


def _template_regex(template: str) -> re.Pattern[str]:
    if not isinstance(template, str) or template.count("{}") != 1:
        raise ValueError(f"layer_path_template must contain '{{}}' once for the layer index, got {template!r}")
    head, tail = template.split("{}")
    return re.compile(re.escape(head) + r"(\d+)" + re.escape(tail))


def _string_field(reader: Any, key: str, path: Path) -> str | None:
    """A string field's value (via ``parts``/``data``, which every gguf version has)."""
    field = reader.get_field(key)
    if field is None:
        return None
    if [t.name for t in field.types] != ["STRING"] or len(field.data) != 1:
        raise ValueError(f"{path}: metadata {key} must be a string, got {_kind(field)}")
    return bytes(field.parts[field.data[0]]).decode("utf-8", errors="replace")


def _int_field(reader: Any, key: str, path: Path) -> int | None:
    """A non-negative integer field's value, or None when absent."""
    field = reader.get_field(key)
    if field is None:
        return None
    if len(field.types) != 1 or not field.types[0].name.startswith(("UINT", "INT")) or len(field.data) != 1:
        raise ValueError(f"{path}: metadata {key} must be an integer, got {_kind(field)}")
    value = int(np.asarray(field.parts[field.data[0]]).reshape(-1)[0])
    if value < 0:
        raise ValueError(f"{path}: metadata {key} must be a non-negative integer, got {value}")
    return value


def _kind(field: Any) -> str:
    return "/".join(t.name for t in field.types).lower() or "nothing"
