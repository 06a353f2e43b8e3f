"""docs/hub.md's and docs/coming_from.md's commands run as written, on the real SmolLM2. Blocks fenced
``python`` or ``bash`` run; blocks fenced ``py`` are other libraries' code (or the upload, which needs a
hub account) and are not run. Only ``PATH`` (a model folder) is filled in. hub.md's loading blocks run
with ``HF_HUB_OFFLINE=1`` against a hub cache in a temp dir holding the pack its first block writes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from test_hub_vectors import put

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def blocks(page: str, lang: str) -> list[str]:
    return [code for kind, code in FENCE.findall((ROOT / "docs" / page).read_text()) if kind == lang]


def run(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{args[-1][:800]}\nexit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def page_env(cache: Path) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)  # mlx-steer and python from this environment
    return {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "HF_HUB_OFFLINE": "1",
            "HF_HUB_CACHE": str(cache)}


@pytest.mark.slow
def test_hub_page_runs_as_written(smollm2_dir, tmp_path):
    write, load = blocks("hub.md", "python")
    (cli,) = blocks("hub.md", "bash")
    cache = tmp_path / "cache"
    cache.mkdir()
    env = page_env(cache)
    assert run([sys.executable, "-c", write], tmp_path, env).strip() == "('model.layers.7',)"
    pack = tmp_path / "moods"
    assert sorted(p.name for p in pack.iterdir()) == ["README.md", "calm.safetensors", "happy.safetensors"]

    put(cache, "ORG/moods", {p.name: p for p in pack.iterdir()})
    out = run([sys.executable, "-c", load], tmp_path, env).splitlines()
    assert out[0] == ("HuggingFaceTB/SmolLM2-135M-Instruct {'happy': 'happy.safetensors', 'calm': 'calm.safetensors'} "
                      "('model.layers.7',)")
    shown = run(["bash", "-euo", "pipefail", "-c", re.sub(r"\bPATH\b", str(smollm2_dir), cli)], tmp_path, env)
    assert "model.layers.7" in shown and "[unsteered]" in shown and "[+4]" in shown


@pytest.mark.slow
def test_coming_from_page_runs_as_written(smollm2_dir, tmp_path):
    script = "\n".join(blocks("coming_from.md", "python"))
    # checks after the page's script: the recorded shape, the vector against a hand computation from
    # one-prompt runs, and the two steering forms against each other and the unsteered text
    checks = """
import numpy as np
assert tuple(resid.shape)[0::2] == (1, model.hidden_size), resid.shape
def last(p):
    return model.to_numpy(model.run(p, record=["layers.7"]).activations["layers.7"])[0, -1]
hand = np.mean([last(p) for p in POS], axis=0) - np.mean([last(p) for p in NEG], axis=0)
np.testing.assert_allclose(vec["model.layers.7"], hand, rtol=1e-4, atol=1e-4)
steered = model.generate("I think that", max_tokens=20, interventions=steering)
with model.steer(vec, scale=4.0):
    assert model.generate("I think that", max_tokens=20) == steered
assert model.generate("I think that", max_tokens=20) != steered
print("checks passed")
"""
    out = run([sys.executable, "-c", script + checks], tmp_path, page_env(tmp_path / "cache"))
    assert out.rstrip().endswith("checks passed") and "model.layers.7" in out
