"""Exported edits: the folder ``model.export`` writes, loaded by the plain framework in a process
without mlx_steer (``export_worker.py``: ``mlx_lm.load`` / ``from_pretrained``), gives the steered
model's logits (fp32, within 1e-5 of the logits' norm) and the same 32 greedy tokens (the oracle is the
in-process steered model); edits that cannot be baked exactly are refused by name, nothing written."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import mlx_steer as ms
from export_oracle import WORKER, export_and_load_plain
from mlx_steer.engine import interventions as iv
from mlx_steer.export import EDIT_FILE, directional_ablation
from tiny_models import ARCHS



def _direction(m, seed):
    return np.random.default_rng(seed).normal(size=m.hidden_size).astype(np.float32)


def _ablation(m):
    """Every residual write where the architecture's writes are linear layers; elsewhere (gemma2's
    post-norms, a head that cannot be untied) the projections' own outputs, which bake all the same."""
    try:
        return directional_ablation(m, _direction(m, 1), embedding=m.backend.can_untie or m.backend.tied_embedding is None)
    except ValueError:
        out = iv.project_out(_direction(m, 1))
        return {f"{layer}.self_attn.o_proj": out for layer in m.layer_paths}


def _add(m):
    return {"layers.1": iv.add_vector(_direction(m, 2), scale=3.0)}


ADDABLE = {"llama", "gpt2"}  # a bias on the MLP's last projection: llama's mlp_bias flag, gpt2's own


def _cases():
    return [(arch, edit) for arch in ARCHS for edit in ("ablate", "add") if edit == "ablate" or arch in ADDABLE]


@pytest.fixture(scope="module", params=["mlx", "torch"])
def exported(request, tiny_dir, tmp_path_factory):
    """{(arch, edit): (steered logits, steered greedy tokens, plain logits, plain greedy, folder)}."""
    backend = request.param
    if backend == "torch":
        pytest.importorskip("torch")
    root = tmp_path_factory.mktemp(f"export_{backend}")
    cases = {}
    for arch, edit in _cases():
        m = ms.load(str(tiny_dir(arch)), backend=backend)
        cases[(arch, edit)] = (m, _ablation(m) if edit == "ablate" else _add(m))
    return backend, export_and_load_plain(backend, root, cases)


@pytest.mark.parametrize("case", _cases(), ids=lambda c: "-".join(c))
def test_the_exported_folder_equals_the_steered_model(exported, case):
    backend, results = exported
    base, steered, greedy, eos, folder, plain, plain_greedy = results[case]
    assert plain.shape == steered.shape
    assert np.linalg.norm(steered - base) > 1e-3 * np.linalg.norm(base), (backend, case)  # the edit does something
    assert np.linalg.norm(plain - steered) <= 1e-5 * np.linalg.norm(steered), (backend, case)
    stop = next((i for i, t in enumerate(plain_greedy) if t in eos), len(plain_greedy))
    assert plain_greedy[:stop] == greedy, (backend, case)  # the steered run stops at EOS, excluded
    record = json.loads((folder / EDIT_FILE).read_text())
    assert record["created_by"] == ms.__version__ and record["edits"]
    assert {e["kind"] for e in record["edits"]} == {"project_out" if case[1] == "ablate" else "add_vector"}


# -- refusals: named, before anything is written ------------------------------------------------
REFUSALS = [
    ("llama", lambda m: {"layers.1": iv.scale(2.0)}, r"Scale at model\.layers\.1 cannot be baked"),
    ("llama", lambda m: {"layers.1": iv.add_vector(_direction(m, 2), positions="last")}, r"acts on positions 'last'"),
    ("llama", lambda m: {"layers.1": iv.add_vector(_direction(m, 2)).for_rows(0)}, r"scoped to rows \[0\]"),
    ("llama", lambda m: {"layers.1.mlp.down_proj:input": iv.project_out(_direction(m, 1))}, r"a module's input"),
    ("llama", lambda m: {"layers.1.input_layernorm": iv.project_out(_direction(m, 1))},
     r"input_layernorm is a \w*RMSNorm, not a linear layer or embedding"),
    ("qwen2", _add, r"mlp\.down_proj has no bias and qwen2 has no config flag"),
    ("phi3", _add, r"mlp\.down_proj has no bias and phi3 has no config flag"),
    ("gemma2", _add, r"gemma2 normalizes its MLP output"),
    ("gemma2", lambda m: directional_ablation(m, _direction(m, 1)), r"gemma2 normalizes its attention and MLP outputs"),
    ("llama", lambda m: {"layers.1": iv.add_vector(np.ones(m.hidden_size + 3, np.float32))},
     r"the vector of add_vector at model\.layers\.1 has width 67 \(shape \(67,\)\); model\.layers\.1's output is "
     r"64 wide \(this model's hidden size is 64\)"),
    ("llama", lambda m: {"layers.0.self_attn.o_proj": iv.project_out(np.ones(m.hidden_size // 2, np.float32))},
     r"the direction of ProjectOut at model\.layers\.0\.self_attn\.o_proj has width 32 .*o_proj's output is 64 "
     r"wide \(this model's hidden size is 64\)"),
]


@pytest.mark.parametrize("backend", ["mlx", "torch"])
@pytest.mark.parametrize("arch,make,message", REFUSALS, ids=[f"{r[0]}-{i}" for i, r in enumerate(REFUSALS)])
def test_edits_that_cannot_be_baked_are_refused_by_name(tiny_dir, tmp_path, backend, arch, make, message):
    if backend == "torch":
        pytest.importorskip("torch")
    m = ms.load(str(tiny_dir(arch)), backend=backend)
    with pytest.raises(ValueError, match=message):
        m.export(tmp_path / "out", make(m))
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a temporary folder


def test_a_tied_head_that_cannot_be_untied_refuses_an_edited_embedding(tiny_dir, tmp_path):
    """mlx-lm's gpt2 always unembeds with its token embedding: editing that embedding would edit the head."""
    m = ms.load(str(tiny_dir("gpt2")))
    with pytest.raises(ValueError, match=r"model\.wte is also this model's unembedding .* gpt2 architecture cannot"):
        m.export(tmp_path / "out", directional_ablation(m, _direction(m, 1)))
    assert list(tmp_path.iterdir()) == []


def test_quantized_modules_are_not_edited(tiny_dir, tmp_path):
    import mlx.nn as nn

    m = ms.load(str(tiny_dir("llama")))
    nn.quantize(m.model, group_size=32, bits=4)
    m = ms.MLXSteerableModel(m.model, m.tokenizer, model_id=m.model_id, config=m.backend.config)
    with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.o_proj is quantized \(QuantizedLinear\)"):
        m.export(tmp_path / "out", {"layers.0.self_attn.o_proj": iv.project_out(_direction(m, 1))})


def test_writing_is_atomic_and_never_overwrites_unasked(shared_models, load_tiny, tmp_path, monkeypatch):
    m = load_tiny("llama")
    spec = _add(m)
    out = m.export(tmp_path / "out", spec)  # a previous export, which overwrite may replace
    (out / "keep.txt").write_text("mine")
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(ValueError, match=r"already exists; pass overwrite=True"):
        m.export(out, spec)
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (out / "keep.txt").read_text() == "mine"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"is a file"):
        m.export(tmp_path / "file", spec)
    real = type(m.backend).write_model

    def half_then_fail(self, folder, baked, *, dtype):
        real(self, folder, baked, dtype=dtype)
        raise OSError("disk full")

    monkeypatch.setattr(type(m.backend), "write_model", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        m.export(out, spec, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "out"]  # no partial folder left
    assert sorted(p.name for p in out.iterdir()) == before  # the old folder is as it was
    monkeypatch.undo()
    m.export(out, spec, overwrite=True, dtype="float16")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "out"]
    assert not (out / "keep.txt").exists() and (out / EDIT_FILE).exists()
    assert json.loads((out / "config.json").read_text())["mlp_bias"] is True
    with pytest.raises(ValueError, match=r"unknown dtype 'fp8'; valid: float32, float16, bfloat16"):
        m.export(tmp_path / "other", spec, dtype="fp8")


@pytest.mark.slow
def test_the_real_smollm2_exported_equals_steered(smollm2, tmp_path):
    """SmolLM2-135M-Instruct (fp32, tied embedding): a full directional ablation (the embedding written
    apart from the head) and an add at layer 10 (llama's mlp_bias), each loaded by plain mlx-lm in a
    process without mlx_steer: the steered logits and 32 greedy tokens."""
    m = smollm2
    tokens = m.encode("Give me three tips for a good night's sleep.", chat=True)
    d = np.random.default_rng(7).normal(size=m.hidden_size).astype(np.float32)
    cases = {"ablate": directional_ablation(m, d),
             "add": {"layers.10": iv.add_vector(d / np.linalg.norm(d) * 8.0)}}
    jobs, want = [], {}
    for name, spec in cases.items():
        folder = m.export(tmp_path / name, spec)
        jobs.append([str(folder), tokens])
        want[name] = (m.to_numpy(m.run([tokens], interventions=spec).logits)[0],
                      m.generate_tokens(tokens, max_tokens=32, interventions=spec))
    base = m.to_numpy(m.run([tokens]).logits)[0]
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    done = subprocess.run([sys.executable, str(WORKER), "mlx", str(tmp_path / "jobs.json"), str(tmp_path / "out.npz")],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    plain = np.load(tmp_path / "out.npz")
    for i, (name, (logits, greedy)) in enumerate(want.items()):
        assert np.linalg.norm(logits - base) > 1e-3 * np.linalg.norm(base), name
        assert np.linalg.norm(plain[f"{i}/logits"] - logits) <= 1e-5 * np.linalg.norm(logits), name
        got = plain[f"{i}/greedy"].tolist()
        stop = next((k for k, t in enumerate(got) if t in m.eos_token_ids), len(got))
        assert got[:stop] == greedy, name
    assert json.loads((tmp_path / "ablate" / "config.json").read_text())["tie_word_embeddings"] is False
