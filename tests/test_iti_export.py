"""An ITI shift exported: head steering baked as ``W_O · shift`` into the attention output
projection's bias (llama through its ``attention_bias`` flag, gpt2's own bias), loaded by plain
mlx-lm / transformers in a process that never imports mlx_steer (``export_worker.py``), equals the
in-process steered model (fp32 logits within 1e-5 of their norm, the same 32 greedy tokens);
shifts that cannot be baked exactly are refused by name, nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest

import mlx_steer as ms
from export_oracle import export_and_load_plain
from mlx_steer.engine import interventions as iv
from mlx_steer.export import EDIT_FILE
from mlx_steer.heads import add_to_heads, probe_heads

WORDS = "the a cat dog runs sleeps happy sad blue red big small tree house".split()
ARCHS = ("llama", "gpt2")  # o_proj's bias from a config flag (llama), or its own (gpt2)
CASES = (*ARCHS, "llama+ablation")  # with a direction also projected out of every o_proj's output


def _prompts(seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, 4)) for _ in range(8)]


def _iti(m, case: str):
    probes = probe_heads(m, _prompts(1), _prompts(2), holdout=0.25)
    iti: dict = probes.interventions(m, k=3, alpha=20.0)
    if case.endswith("+ablation"):  # the head shift enters before the projection's orthogonalized weights
        u = np.random.default_rng(5).normal(size=m.hidden_size).astype(np.float32)
        iti.update({f"{layer}.self_attn.o_proj": iv.project_out(u) for layer in m.layer_paths})
    return iti


@pytest.fixture(scope="module", params=["mlx", "torch"])
def exported(request, tiny_dir, tmp_path_factory):
    """{arch: (base logits, steered logits, steered greedy, eos, folder, plain logits, plain greedy)}."""
    backend = request.param
    root = tmp_path_factory.mktemp(f"iti_export_{backend}")
    cases = {}
    for case in CASES:
        m = ms.load(str(tiny_dir(case.split("+")[0])), backend=backend)
        cases[case] = (m, _iti(m, case))
    return backend, export_and_load_plain(backend, root, cases)


@pytest.mark.parametrize("case", CASES)
def test_the_exported_iti_folder_equals_the_steered_model(exported, case):
    backend, results = exported
    arch = case.split("+")[0]
    base, steered, greedy, eos, folder, plain, plain_greedy = results[case]
    assert plain.shape == steered.shape
    assert np.linalg.norm(steered - base) > 1e-3 * np.linalg.norm(base), (backend, case)  # the shift does something
    assert np.linalg.norm(plain - steered) <= 1e-5 * np.linalg.norm(steered), (backend, case)
    stop = next((i for i, t in enumerate(plain_greedy) if t in eos), len(plain_greedy))
    assert plain_greedy[:stop] == greedy, (backend, case)
    record = json.loads((folder / EDIT_FILE).read_text())
    assert {e["kind"] for e in record["edits"]} == ({"add_vector", "project_out"} if "+" in case else {"add_vector"})
    assert all(e["written_to"].endswith(("o_proj.bias", "c_proj.bias")) for e in record["edits"]
               if e["kind"] == "add_vector")
    config = json.loads((folder / "config.json").read_text())
    assert config.get("attention_bias", False) is (arch == "llama")


def _shift(m, **kwargs):
    return add_to_heads(m, {1: {2: np.ones(16, np.float32)}}, **kwargs)


REFUSALS = [
    ("qwen2", lambda m: _shift(m), r"self_attn\.o_proj has no bias and qwen2 has no config flag"),
    ("phi3", lambda m: _shift(m), r"self_attn\.o_proj has no bias and phi3 has no config flag"),
    ("llama", lambda m: _shift(m, positions="last"), r"acts on positions 'last'"),
    ("llama", lambda m: _shift(m, positions="generated"), r"acts on positions 'generated'"),
    ("llama", lambda m: _shift(m, rows=[0]), r"scoped to rows \[0\]"),
    ("llama", lambda m: _shift(m, when=iv.condition(np.ones(64), site="layers.0", threshold=0.0)),
     r"gated by a condition"),
    ("llama", lambda m: {"layers.1.self_attn.o_proj:input": iv.add_vector(np.ones(60, np.float32))},
     r"the vector of add_vector at model\.layers\.1\.self_attn\.o_proj:input has width 60 .*o_proj's input is 64 wide"),
    ("llama", lambda m: {"layers.1.mlp.down_proj:input": iv.add_vector(np.ones(128, np.float32))},
     r"acts on a module's input"),
]


@pytest.mark.parametrize("backend", ["mlx", "torch"])
@pytest.mark.parametrize("arch,make,message", REFUSALS, ids=[f"{r[0]}-{i}" for i, r in enumerate(REFUSALS)])
def test_shifts_that_cannot_be_baked_are_refused_by_name(tiny_dir, tmp_path, backend, arch, make, message):
    m = ms.load(str(tiny_dir(arch)), backend=backend)
    with pytest.raises(ValueError, match=message):
        m.export(tmp_path / "out", make(m))
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a temporary folder
