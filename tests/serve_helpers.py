"""A real ``mlx-steer serve`` process on a free loopback port, for the serve tests: started with
bounded waits, always stopped (also when a test fails), its log shown when it does not come up."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``python -m mlx_steer.serve ARGS --port P`` in a subprocess; ``url`` once ready."""

    def __init__(self, args: list[str], log: Path):
        self.args, self.log_path = args, log
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerProcess:
        import httpx

        for _ in range(3):  # a free port can be taken between the probe and the bind
            self.port = free_port()
            log = open(self.log_path, "w")
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
            self.proc = subprocess.Popen([sys.executable, "-m", "mlx_steer.serve", *self.args, "--port", str(self.port),
                                          "--log-level", "warning"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                         env=env)
            deadline = time.monotonic() + START_TIMEOUT_S
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    if httpx.get(f"{self.url}/health", timeout=2.0).status_code == 200:
                        return self
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
            self.stop()
            if "cannot listen" not in self.log():
                break
        raise RuntimeError(f"the server did not come up within {START_TIMEOUT_S:.0f} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@contextlib.contextmanager
def serving(args: list[str], log_dir: Path) -> Iterator[ServerProcess]:
    """``with serving(args, folder) as server:`` the started server, stopped when the block ends
    (also when a test in a fixture's ``yield`` failed); its log in ``folder/server.log``."""
    srv = ServerProcess(args, log_dir / "server.log")
    try:
        yield srv.start()
    finally:
        srv.stop()


def write_vectors(model, folder: Path) -> dict:
    """Three seeded vectors saved as files: ``love`` (layers 1 and 2), ``calm`` (layer 2), ``edge`` (layer 1)."""
    import mlx_steer as ms

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    D, paths = model.hidden_size, model.layer_paths
    vectors = {
        "love": ms.SteeringVector({paths[1]: rng.normal(size=D), paths[2]: rng.normal(size=D)}, method="mean_diff"),
        "calm": ms.SteeringVector({paths[2]: rng.normal(size=D)}, method="pca"),
        "edge": ms.SteeringVector({paths[1]: rng.normal(size=D)}),
    }
    for name, vec in vectors.items():
        ms.save_vector(vec, folder / f"{name}.safetensors")
    return {name: ms.load_vector(folder / f"{name}.safetensors", model=model) for name in vectors}
