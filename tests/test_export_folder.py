"""Where an export writes, and what it leaves: ``overwrite`` replaces only a previous export and never
the source model (its folder, one holding it, one inside it), refusals leave every file byte-identical;
working folders a ``kill -9`` left are removed by the next export to that target, a live export's
and unrelated folders are not; the folder and its files get the permissions the umask gives."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import mlx_steer as ms
import tiny_models
from mlx_steer.cli import main
from mlx_steer.engine import interventions as iv
from mlx_steer.export import EDIT_FILE

WRITER = Path(__file__).with_name("export_writer.py")


def _spec(m, scale: float = 3.0) -> dict:
    return {"layers.1": iv.add_vector(np.random.default_rng(2).normal(size=m.hidden_size).astype(np.float32), scale=scale)}


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under ``root``: its kind, mode and bytes (a file) or target (a link)."""
    out: dict[str, tuple] = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        if p.is_symlink():
            out[str(p.relative_to(root))] = ("link", os.readlink(p))
        elif p.is_dir():
            out[str(p.relative_to(root))] = ("dir", stat.S_IMODE(st.st_mode))
        else:
            out[str(p.relative_to(root))] = ("file", stat.S_IMODE(st.st_mode), p.read_bytes())
    return out


def _dead_pid() -> int:
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    return done.pid


@pytest.fixture(scope="module", params=["mlx", "torch"])
def source(request, tmp_path_factory):
    """(model loaded from WORK/models/src, WORK) with an unrelated file beside the source model."""
    if request.param == "torch":
        pytest.importorskip("torch")
    work = tmp_path_factory.mktemp(f"export_folder_{request.param}")
    src = tiny_models.build("llama", work / "models" / "src")
    (work / "models" / "notes.txt").write_text("not a model")
    return ms.load(str(src), backend=request.param), work


# -- item 7: what overwrite may replace ---------------------------------------------------------
def _targets(work: Path) -> dict[str, tuple[Path, str]]:
    src = work / "models" / "src"
    plain = work / "plain"
    plain.mkdir(exist_ok=True)
    (plain / "data.bin").write_bytes(bytes(range(256)))
    fake = work / "fake"
    fake.mkdir(exist_ok=True)
    (fake / EDIT_FILE).write_text("{}\n")  # named like a record, not written by export
    (work / "a_file").write_text("x")
    link = work / "link_to_src"
    if not link.exists():
        link.symlink_to(src, target_is_directory=True)
    return {
        "parent of the source": (work / "models", r"models contains the source model's folder .*src; export into a new"),
        "the source": (src, r"src is the source model's folder; export into a new folder beside it"),
        "a link to the source": (link, r"link_to_src is the source model's folder"),
        "inside the source": (src / "edited", r"edited is inside the source model's folder .*src; export into a folder"),
        "a folder with files": (plain, r"plain is not a previous export \(it holds no mlx_steer_edit\.json that export "
                                       r"wrote\); overwrite replaces only an export's folder"),
        "a folder with a foreign record": (fake, r"fake is not a previous export"),
        "a file": (work / "a_file", r"a_file is a file; give a folder"),
    }


@pytest.mark.parametrize("case", ["parent of the source", "the source", "a link to the source", "inside the source",
                                  "a folder with files", "a folder with a foreign record", "a file"])
def test_overwrite_refuses_all_but_a_previous_export(source, case):
    m, work = source
    target, message = _targets(work)[case]
    before = snapshot(work)
    with pytest.raises(ValueError, match=message):
        m.export(target, _spec(m), overwrite=True)
    assert snapshot(work) == before  # every file byte-identical, nothing added


def test_overwrite_replaces_a_previous_export(source):
    m, work = source
    out = work / "exported"
    m.export(out, _spec(m, 1.0))
    (out / "stray.txt").write_text("from the old export")
    with pytest.raises(ValueError, match=r"exported already exists; pass overwrite=True"):
        m.export(out, _spec(m, 2.0))
    m.export(out, _spec(m, 2.0), overwrite=True)
    assert not (out / "stray.txt").exists()
    assert [e["scale"] for e in json.loads((out / EDIT_FILE).read_text())["edits"]] == [2.0]
    assert sorted(p.name for p in work.iterdir() if p.name.startswith(".")) == []  # no working folder left


def test_the_command_refuses_with_one_line(tiny_dir, tmp_path, capsys):
    src = tiny_dir("llama")
    before = snapshot(src.parent)
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "keep").write_text("mine")
    vec = tmp_path / "v.safetensors"
    ms.save_vector(ms.SteeringVector({"model.layers.1": np.ones(64, np.float32)}), vec)
    capsys.readouterr()  # building the tiny model reports progress
    for out, message in [(src.parent, "contains the source model's folder"), (src, "is the source model's folder"),
                         (plain, "is not a previous export")]:
        rc = main(["export", "--model", str(src), "--vector", str(vec), "--scale", "1", "--out", str(out), "--overwrite"])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert snapshot(src.parent) == before and (plain / "keep").read_text() == "mine"


# -- item 8: working folders a killed export left -------------------------------------------------
def test_stale_working_folders_are_removed_and_no_others(source):
    m, work = source
    root = work / "stale"
    root.mkdir()
    dead, out = _dead_pid(), root / "out"
    planted = {
        "stale partial": (f".out.{dead}.0123abcd.partial", False),
        "stale old": (f".out.{dead}.4567cdef.old", False),
        "live pid": (f".out.{os.getpid()}.89abcdef.partial", True),
        "locked (a live export in another pid namespace)": (f".out.{dead}.deadbeef.partial", True),
        "another target's": (f".other.{dead}.0123abcd.partial", True),
        "not a working folder's name": (f".out.{dead}.partial", True),
        "a user's folder": ("out.partial", True),
    }
    for name, _ in planted.values():
        (root / name).mkdir()
        (root / name / "model.safetensors").write_bytes(b"\0" * 1000)
    fd = os.open(root / planted["locked (a live export in another pid namespace)"][0], os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        m.export(out, _spec(m))
    finally:
        os.close(fd)
    kept = {p.name for p in root.iterdir()}
    assert kept == {name for name, keep in planted.values() if keep} | {"out"}
    assert (out / EDIT_FILE).is_file()


def test_a_killed_export_leaves_nothing_after_the_next(source):
    m, work = source
    root = work / "killed"
    root.mkdir()
    out, ready = root / "out", work / "ready"
    backend = "mlx" if isinstance(m, ms.MLXSteerableModel) else "torch"
    proc = subprocess.Popen([sys.executable, str(WRITER), backend, m.model_id, str(out), str(ready)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ready.exists(), proc.communicate(timeout=5) if proc.poll() is not None else "timed out"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate(timeout=60)
    left = [p for p in root.iterdir()]
    assert [p.name for p in left] == [Path(ready.read_text()).name] and not out.exists()
    assert (left[0] / "model.safetensors").stat().st_size > 100_000  # the killed export's half-written model
    m.export(out, _spec(m))
    assert [p.name for p in root.iterdir()] == ["out"] and (out / EDIT_FILE).is_file()


# -- item 9: permissions ------------------------------------------------------------------------------
@pytest.mark.parametrize("umask,folder_mode,file_mode", [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600)])
def test_the_folder_has_the_permissions_of_the_umask(source, umask, folder_mode, file_mode):
    m, work = source
    out = work / f"umask{umask:o}"
    old = os.umask(umask)
    try:
        m.export(out, _spec(m))
    finally:
        os.umask(old)
    modes = {str(p.relative_to(out)): stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*")}
    assert stat.S_IMODE(out.stat().st_mode) == folder_mode
    assert {"config.json", "model.safetensors", EDIT_FILE} <= set(modes)
    want = {name: folder_mode if (out / name).is_dir() else file_mode for name in modes}
    assert modes == want
