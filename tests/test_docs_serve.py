"""docs/serve.md's commands run as written: its set-up block (pairs files, two ``extract`` runs and
the ``serve`` command) on the real SmolLM2, then its Python client and curl examples against that
server, then its "From Python" script as a second server. Only the page's placeholders change:
``PATH`` becomes the model folder and port 8080 a free loopback port; ``pip install`` is not run."""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from serve_helpers import free_port

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "serve.md"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)
START_TIMEOUT_S = 120.0

pytest.importorskip("openai", reason="the docs serve test needs the test extra: pip install -e '.[test]'")
pytest.importorskip("fastapi", reason="the docs serve test needs the test extra: pip install -e '.[test]'")


def blocks(lang: str) -> list[str]:
    return [code for kind, code in FENCE.findall(PAGE.read_text()) if kind == lang]


def fill(text: str, model: Path, port: int) -> str:
    """The page's placeholders: ``PATH`` (the model folder) and the default port 8080."""
    return re.sub(r"\bPATH\b", str(model), text).replace("8080", str(port))


def shell_env() -> dict[str, str]:
    """``mlx-steer`` and ``python`` resolve to this environment's, as after the page's ``pip install``."""
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1"}


def run(args: list[str], cwd: Path, timeout: float = 300) -> str:
    proc = subprocess.run(args, cwd=cwd, env=shell_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args[-1][:500]}\nexit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def wait_healthy(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"the page's server did not come up (exit {proc.poll()}):\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def start(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(args, cwd=cwd, env=shell_env(), stdout=out, stderr=subprocess.STDOUT)


def split_setup(block: str) -> tuple[str, str, str]:
    """The set-up block as (the commands before ``serve``, the serve line, its ``# or:`` alternative)."""
    lines = block.splitlines()
    serve = [i for i, line in enumerate(lines) if line.startswith("mlx-steer serve ")]
    assert len(serve) == 1, block
    assert lines[0].startswith('pip install -e ".[serve]"'), lines[0]
    alternative = lines[serve[0] + 1]
    assert alternative.startswith("# or: python -m mlx_steer.serve "), alternative
    return "\n".join(lines[1:serve[0]]), lines[serve[0]], alternative.removeprefix("# or: ")


@pytest.mark.slow
def test_serve_page_commands_run_as_written(smollm2_dir, tmp_path):
    setup_block, curl_block = blocks("bash")
    client_script, from_python = blocks("python")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    before, serve_line, alternative = split_setup(fill(setup_block, smollm2_dir, port))
    assert shlex.split(alternative)[3:] == shlex.split(serve_line)[2:]  # the same options either way

    run(["bash", "-euo", "pipefail", "-c", before], tmp_path)
    for name in ("love", "calm"):
        assert (tmp_path / f"{name}.safetensors").stat().st_size > 0

    server = start([*shlex.split(serve_line), "--port", str(port)], tmp_path, tmp_path / "serve.log")
    try:
        wait_healthy(url, server, tmp_path / "serve.log")
        names = {v["id"]: v["layers"] for v in httpx.get(f"{url}/v1/vectors", timeout=10).json()["data"]}
        assert names == {"love": [7], "calm": [7]}

        # the Python client example: the reply's text, the steering echo, one projection per token
        out = run([sys.executable, "-c", fill(client_script, smollm2_dir, port)], tmp_path).splitlines()
        assert len(out) >= 3, out
        steering, projections = ast.literal_eval(out[-2]), ast.literal_eval(out[-1])
        assert steering == [{"vector": "love", "scale": 4.0, "layers": [7], "positions": "generated"}]
        assert isinstance(projections, list) and projections and all(isinstance(v, float) for v in projections)

        # the curl example: a completion with both registered vectors applied
        reply = json.loads(run(["bash", "-euo", "pipefail", "-c", fill(curl_block, smollm2_dir, port)], tmp_path))
        assert "error" not in reply, reply
        assert reply["object"] == "text_completion" and reply["choices"][0]["finish_reason"] in ("length", "stop")
        assert isinstance(reply["choices"][0]["text"], str) and reply["usage"]["completion_tokens"] > 0
        assert [s["vector"] for s in reply["steering"]] == ["love", "calm"]
    finally:
        stop(server)

    # "From Python": the same app built in a script (a server of its own on the same port)
    script = start([sys.executable, "-c", fill(from_python, smollm2_dir, port)], tmp_path, tmp_path / "py.log")
    try:
        wait_healthy(url, script, tmp_path / "py.log")
        models = httpx.get(f"{url}/v1/models", timeout=10).json()["data"]
        assert [m["id"] for m in models] == [str(smollm2_dir)]
        r = httpx.post(f"{url}/v1/completions", timeout=120, json={
            "model": str(smollm2_dir), "prompt": "I think that", "max_tokens": 8,
            "steering": [{"vector": "love", "scale": 4}]})
        assert r.status_code == 200, r.text
        assert r.json()["steering"] == [{"vector": "love", "scale": 4.0, "layers": [7], "positions": "all"}]
    finally:
        stop(script)
