"""A GGUF file as a cached Hugging Face / mlx-lm model folder: the conversion and the publishing that the
offline real-model helpers share (:mod:`mlx_steer.demo.real_model` for SmolLM2,
:mod:`mlx_steer.demo.qwen_model` for Qwen2.5-Coder-1.5B).

:func:`convert_gguf` has transformers dequantize the GGUF (weights through the ``gguf`` package, tokenizer
and chat template from the ``tokenizer.ggml.*`` metadata; needs torch) and save an fp32 folder that both
``mlx_lm.load`` and transformers read; SmolLM2 is converted without torch by default
(:mod:`mlx_steer.demo.gguf_llama`), Qwen's k-quants still through transformers. A folder is built in a temporary sibling and published with one rename, with a marker file written
last, so a reader sees no folder or a complete one.

Importing this module is cheap: torch and transformers are imported only when a folder is built.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "READY_MARKER", "build_cached_folder", "cache_root", "check_chat_template", "convert_gguf",
    "fix_rope_theta", "is_ready", "write_json",
]

READY_MARKER = ".mlx_steer_ready"


def cache_root(cache_dir: str | os.PathLike | None) -> Path:
    """``cache_dir``, else ``$MLX_STEER_CACHE``, else ``~/.cache/mlx_steer``."""
    if cache_dir is None:
        cache_dir = os.environ.get("MLX_STEER_CACHE") or "~/.cache/mlx_steer"
    return Path(cache_dir).expanduser()


def is_ready(folder: Path, stamp: dict[str, Any]) -> bool:
    """Whether ``folder`` is complete and was built from what ``stamp`` describes."""
    try:
        return json.loads((folder / READY_MARKER).read_text(encoding="utf-8")) == stamp
    except (OSError, ValueError):
        return False


def build_cached_folder(
    folder: Path,
    stamp: dict[str, Any],
    build: Callable[[Path], None],
    *,
    force: bool,
    verbose: bool,
    start_message: str,
    label: str,
) -> Path:
    """Build ``folder`` with ``build(tmp)`` in a temporary sibling and publish it (see :func:`publish`).

    Returns ``folder`` at once when it is ready for ``stamp`` (unless ``force``). ``build`` runs with
    transformers' output silenced unless ``verbose``; the temporary folder is removed on any exception.
    """
    if not force and is_ready(folder, stamp):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Build in a sibling so an interrupted run never leaves a half-written folder in place.
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        start = time.perf_counter()
        log(verbose, start_message)
        with quiet_unless(verbose):
            build(tmp)
        make_readable(tmp)
        write_json(tmp / READY_MARKER, stamp)  # last: its presence means the folder is complete
        if publish(tmp, folder, stamp, force=force):
            log(verbose, f"mlx_steer: {label} ready in {time.perf_counter() - start:.1f} s")
        else:
            log(verbose, f"mlx_steer: another process prepared {label} meanwhile; using its folder")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def convert_gguf(gguf: Path, out: Path, *, model_id: str) -> None:
    """Dequantize ``gguf`` to fp32 with transformers and save model + tokenizer to ``out``.

    ``model_id`` is recorded as the config's ``_name_or_path`` (the GGUF's ``general.name`` is often a
    training-run or packaging label).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = {"gguf_file": gguf.name, "local_files_only": True}
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **src)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **src)
    drop_gguf_quantization(model)
    model.config._model_name_or_path = model_id
    # The GGUF carries no max length, so the tokenizer would default to "unlimited".
    tokenizer.model_max_length = model.config.max_position_embeddings
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def drop_gguf_quantization(model: Any) -> None:
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
    write_json(path, config)


def check_chat_template(folder: Path) -> None:
    """Reload the saved tokenizer and render a chat, so a lost template fails here, not later.

    Offline, the GGUF metadata is the only source of the instruct model's (ChatML) template.
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


def publish(tmp: Path, folder: Path, stamp: dict[str, Any], *, force: bool) -> bool:
    """Rename the finished ``tmp`` to ``folder``; False when a ready folder is kept instead.

    Publishers take turns (a lock file beside the folder), so one never moves away a ready
    folder that another has just published and a reader may be loading. Readers take no lock:
    the rename is atomic, and only a stale or incomplete folder (or, with ``force``, the
    caller's own request) is ever replaced.
    """
    with publish_lock(folder.parent / f".{folder.name}.lock"):
        if folder.exists():
            if not force and is_ready(folder, stamp):
                return False  # another process published while we built: keep theirs
            old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
            os.replace(folder, old / "model")  # stale or forced: out of the way in one rename
            shutil.rmtree(old, ignore_errors=True)
        os.rename(tmp, folder)
    return True


@contextlib.contextmanager
def publish_lock(path: Path):
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


def make_readable(folder: Path) -> None:
    """mkdtemp (and the safetensors writer) create owner-only entries; use usual cache modes."""
    folder.chmod(0o755)
    for path in folder.iterdir():
        path.chmod(0o644)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write via a temporary file and rename, so a crash never leaves truncated JSON."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def log(verbose: bool, message: str) -> None:
    if verbose:
        print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def quiet_unless(verbose: bool):
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
