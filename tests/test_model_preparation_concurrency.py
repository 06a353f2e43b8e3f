"""Concurrent first-time preparation of the demo model: two processes build at
once; the first to finish publishes, the other discards its build, and the ready folder, once
there, never goes away or changes under a reader.

The conversion itself (a minute of dequantizing) is replaced by a fake that writes a config and
the name of the process that built it, after a barrier that makes the two builds overlap.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from mlx_steer.demo.real_model import FOLDER_NAME, READY_MARKER

WORKER = textwrap.dedent('''
    import json, sys, time
    from pathlib import Path
    import mlx_steer.demo.real_model as rm

    root, me, delay = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    rm._find_gguf = lambda: root / "model.gguf"

    def convert(gguf, out):
        (root / f"started-{me}").touch()
        deadline = time.monotonic() + 60
        while len(list(root.glob("started-*"))) < int(sys.argv[4]) and time.monotonic() < deadline:
            time.sleep(0.005)  # both builds are under way before either finishes
        time.sleep(delay)
        (out / "config.json").write_text(json.dumps({"model_type": "llama"}))
        (out / "who.txt").write_text(me)

    rm._convert = convert
    rm._check_chat_template = lambda folder: None
    print(rm.prepare_smollm2(cache_dir=root / "cache", verbose=False))
''')


def _start(root: Path, me: str, delay: float, n: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WORKER, str(root), me, str(delay), str(n)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


class Watcher(threading.Thread):
    """Polls the folder: once ready, records every moment it is not (missing or half there)."""

    def __init__(self, folder: Path):
        super().__init__(daemon=True)
        self.folder, self.stop, self.lapses, self.first_inode = folder, threading.Event(), 0, None

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                ready = (self.folder / READY_MARKER).is_file() and (self.folder / "who.txt").is_file()
                inode = self.folder.stat().st_ino if ready else None
            except OSError:
                ready, inode = False, None
            if ready and self.first_inode is None:
                self.first_inode = inode
            elif self.first_inode is not None and (not ready or inode != self.first_inode):
                self.lapses += 1


def test_two_processes_preparing_at_once(tmp_path):
    (tmp_path / "model.gguf").write_bytes(b"GGUF fake")
    folder = tmp_path / "cache" / FOLDER_NAME
    watcher = Watcher(folder)
    watcher.start()
    procs = [_start(tmp_path, "first", 0.0, 2), _start(tmp_path, "second", 1.0, 2)]
    outs = [p.communicate(timeout=120) for p in procs]
    watcher.stop.set()
    watcher.join()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert out.strip() == str(folder)
    assert (folder / "who.txt").read_text() == "first"  # the second build was discarded, not swapped in
    assert watcher.first_inode is not None and watcher.lapses == 0
    assert sorted(p.name for p in folder.parent.iterdir()) == [f".{FOLDER_NAME}.lock", FOLDER_NAME]  # no temp left


def test_a_stale_folder_is_replaced(tmp_path):
    (tmp_path / "model.gguf").write_bytes(b"GGUF fake")
    folder = tmp_path / "cache" / FOLDER_NAME
    folder.mkdir(parents=True)
    (folder / READY_MARKER).write_text(json.dumps({"format": 0}))  # built by an older mlx_steer
    p = _start(tmp_path, "new", 0.0, 1)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert (folder / "who.txt").read_text() == "new"
    assert json.loads((folder / READY_MARKER).read_text())["format"] != 0
    assert not [q for q in folder.parent.iterdir() if q.name.startswith(f".{FOLDER_NAME}.") and not q.name.endswith(".lock")]
    assert os.stat(folder).st_mode & 0o755 == 0o755 and time.time() - folder.stat().st_mtime < 120
