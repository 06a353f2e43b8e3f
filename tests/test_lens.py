"""Logit and tuned lens: the last layer read equals the model's own logits (bare framework forward),
a middle layer equals a hand readout of transformers' hidden states, batched equals solo, identity
translators equal the logit lens, saved translators reload to the same outputs, MLX and torch
training agree, training lowers held-out KL, bad input is refused with the model untouched."""

from __future__ import annotations

import json

import numpy as np
import pytest

import tiny_models
from mlx_steer import lens
from torch_fixtures import *  # noqa: F403  (fixtures)
from torch_fixtures import BACKENDS, assert_untouched, raw_logits, snapshot

PROMPTS = ["Paris is the capital of France.", "I love this"]  # different lengths: left padding


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64) - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arch", tiny_models.ARCHS)
def test_last_layer_is_the_models_own_distribution(backend_models, backend, arch):
    m = backend_models(backend, arch)
    table = lens.logit_lens(m, PROMPTS, layers=[-1], top_k=4, targets=" the")
    tid = lens.target_id(m, " the")
    for p, prompt in enumerate(PROMPTS):
        toks = m.encode(prompt)
        probs = _softmax(raw_logits(m, toks)[0])  # the bare model's forward, softcapping and all
        for i in range(len(toks)):
            r = table.cell(p, m.num_layers - 1, i)
            assert list(r.top_ids) == [int(j) for j in np.argsort(-probs[i], kind="stable")[:4]]
            np.testing.assert_allclose(r.top_probs, probs[i][list(r.top_ids)], atol=1e-5)
            assert r.target_prob == pytest.approx(probs[i][tid], abs=1e-6)
            assert r.target_rank == int(np.sum(probs[i] > probs[i][tid]))
            assert r.kl < 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
def test_middle_layer_equals_a_hand_readout(backend_models, tiny_dir, backend):
    m = backend_models(backend, "llama")
    toks = m.encode(PROMPTS[0])
    table = lens.logit_lens(m, PROMPTS[0], layers=[1], top_k=3)
    import torch
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(tiny_dir("llama")))
    with torch.no_grad():
        h = hf(input_ids=torch.tensor([toks]), output_hidden_states=True).hidden_states[2][0].numpy().astype(np.float64)
    w = hf.model.norm.weight.detach().numpy().astype(np.float64)
    x = h / np.sqrt(np.mean(h * h, -1, keepdims=True) + hf.config.rms_norm_eps) * w
    probs = _softmax(x @ hf.lm_head.weight.detach().numpy().astype(np.float64).T)
    for i in range(len(toks)):
        r = table.cell(0, 1, i)
        assert r.top_ids[0] == int(np.argmax(probs[i]))
        np.testing.assert_allclose(r.top_probs, probs[i][list(r.top_ids)], atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batched_equals_solo_and_positions_are_absolute(backend_models, backend):
    m = backend_models(backend, "qwen2")
    both = lens.logit_lens(m, PROMPTS, top_k=3, targets=" the", positions=[0, -1])
    for p, prompt in enumerate(PROMPTS):
        solo = lens.logit_lens(m, prompt, top_k=3, targets=" the", positions=[0, -1])
        n = len(m.encode(prompt))
        assert both.positions(p) == [0, n - 1] == solo.positions(0)
        for layer in both.layers:
            for i in (0, n - 1):
                a, b = both.cell(p, layer, i), solo.cell(0, layer, i)
                assert a.top_ids == b.top_ids and a.token == b.token
                assert a.target_prob == pytest.approx(b.target_prob, abs=1e-5)
                np.testing.assert_allclose(a.top_probs, b.top_probs, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_identity_translators_are_the_logit_lens_exactly(backend_models, backend):
    m = backend_models(backend, "gemma2")
    plain = lens.logit_lens(m, PROMPTS, targets=" the")
    tuned = lens.logit_lens(m, PROMPTS, targets=" the", tuned=lens.TunedLens.identity(m))
    assert (plain.lens, tuned.lens) == ("logit", "tuned")
    assert plain.rows == tuned.rows  # bit for bit: h + h @ 0 + 0 is h


def test_saved_translators_reload_to_identical_outputs(shared_models, tmp_path):
    m = shared_models("llama")
    res = lens.record_residuals(m, tiny_models.CORPUS[:7])
    trained = lens.fit_translators(m, res, steps=5, lr=1e-2, optimizer="adam", batch_tokens=64)
    assert any(np.abs(x).max() > 0 for x in trained.m)  # it moved: the round trip is not of zeros
    trained.save(tmp_path / "t")
    back = lens.TunedLens.load(tmp_path / "t", model=m)
    assert all(np.array_equal(a, b) for a, b in zip(trained.m + trained.b, back.m + back.b))
    assert json.loads((tmp_path / "t" / "tuned_lens.json").read_text())["layers"] == m.num_layers
    assert lens.logit_lens(m, PROMPTS, tuned=trained).rows == lens.logit_lens(m, PROMPTS, tuned=back).rows


@pytest.mark.parametrize("optimizer, lr, atol", [("sgd", 0.05, 1e-7), ("adam", 1e-2, 2e-5)])
def test_mlx_and_torch_training_agree(shared_models, torch_models, optimizer, lr, atol):
    """Deterministic full-batch descent from the identity on the same residuals: the translators
    agree within ``atol`` (fp32; entries reach ~1e-2 with SGD, ~2e-1 with Adam after 20 steps)."""
    mm, tm = shared_models("llama"), torch_models("llama")
    res = lens.record_residuals(mm, tiny_models.CORPUS[:7])
    a = lens.fit_translators(mm, res, steps=20, lr=lr, optimizer=optimizer, batch_tokens=10**6)
    b = lens.fit_translators(tm, res, steps=20, lr=lr, optimizer=optimizer, batch_tokens=10**6)
    assert max(float(np.abs(x).max()) for x in a.m) > 1e-3
    for x, y in zip(a.m + a.b, b.m + b.b):
        np.testing.assert_allclose(x, y, atol=atol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_training_lowers_held_out_kl_at_every_layer(fresh_models, backend):
    m = fresh_models(backend, "llama")
    before = snapshot(m)
    prompts = [f"{a} {b}" for a in tiny_models.CORPUS[:7] for b in ("and so on.", "Tell me more.", "The end.")]
    tuned, report = lens.train_tuned_lens(m, prompts, steps=60, lr=1e-2, optimizer="adam", held_out=0.25)
    assert len(report.tuned_kl) == m.num_layers - 1
    assert all(t < lo for t, lo in zip(report.tuned_kl, report.logit_kl)), report.to_text()
    assert_untouched(m, before)  # read, not trained


def test_quantized_model_is_read_not_trained(load_tiny):
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    import mlx_steer as ms

    base = load_tiny("qwen2")
    nn.quantize(base.model, group_size=32, bits=4)
    m = ms.SteerableModel(base.model, base.tokenizer)
    weights = {k: np.array(v) for k, v in tree_flatten(m.model.parameters())}
    res = lens.record_residuals(m, tiny_models.CORPUS[:7])
    tuned = lens.fit_translators(m, res, steps=30, lr=1e-2, optimizer="adam", batch_tokens=10**6)
    assert (lens.lens_kl(m, res, tuned) < lens.lens_kl(m, res)).all()  # gradients reached the translators
    assert all(np.array_equal(np.array(v), weights[k]) for k, v in tree_flatten(m.model.parameters()))
    table = lens.logit_lens(m, PROMPTS, layers=[-1])  # the last layer's read is still its logits
    assert max(r.kl for r in table.rows) < 1e-5


def test_table_writes_csv_json_text_and_png(shared_models, tmp_path):
    m = shared_models("llama")
    t = lens.logit_lens(m, PROMPTS, targets=" the", top_k=2, layers=[0, -1])
    assert t.to_csv().count("\n") == len(t.rows) + 1
    t.to_json(tmp_path / "t.json")
    assert lens.LensTable.from_json(tmp_path / "t.json") == t
    text = t.to_text()
    assert "target ' the'" in text and "prompt 1" in text
    t.plot(prompt=1, path=tmp_path / "t.png")
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"
    assert t.grid("target_prob", 1).shape == (2, len(m.encode(PROMPTS[1])))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kwargs, match", [
    ({"targets": " wonderful day"}, r"is \d+ tokens .* must be one token"),
    ({"targets": 10**6}, "target token id 1000000 out of range; valid: 0..383"),
    ({"targets": [" the"]}, "1 targets for 2 prompts"),
    ({"layers": [4]}, "layer 4 out of range for a 4-layer model; valid: -4..3"),
    ({"positions": [10]}, r"position 10 out of range for prompt 1 of \d+ tokens; valid: -\d+\.\.\d+"),
    ({"top_k": 0}, "top_k must be a positive int"),
    ({"stage": "middle"}, "stage 'middle' unknown"),
])
def test_bad_input_is_refused_and_the_model_untouched(fresh_models, backend, kwargs, match):
    m = fresh_models(backend, "llama")
    before = snapshot(m)
    with pytest.raises(ValueError, match=match):
        lens.logit_lens(m, PROMPTS, **kwargs)
    assert_untouched(m, before)


def test_translators_for_another_model_are_refused(shared_models, tmp_path):
    m, other = shared_models("llama"), shared_models("gpt2")
    lens.TunedLens.identity(m).save(tmp_path / "t")
    bad = lens.TunedLens(m.model_id, m.hidden_size, m.num_layers + 2, (), ())
    with pytest.raises(ValueError, match="these translators are for a model with hidden size 64 and 6 layers"):
        lens.logit_lens(other, PROMPTS, tuned=bad)
    with pytest.raises(ValueError, match="stage='output'"):
        lens.logit_lens(m, PROMPTS, tuned=lens.TunedLens.identity(m), stage="input")
    with pytest.raises(ValueError, match="is not a tuned-lens folder"):
        lens.TunedLens.load(tmp_path)


# -- the command line ----------------------------------------------------------------------------
def test_cli_lens_prints_the_table_and_writes_files(tiny_dir, shared_models, tmp_path, capsys):
    from mlx_steer.cli import main

    out = tmp_path / "out"
    argv = ["lens", "--model", str(tiny_dir("llama")), *PROMPTS, "--targets", " the", "--top-k", "3", "-o", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "logit lens" in printed and "target ' the'" in printed
    assert sorted(p.name for p in out.iterdir()) == ["lens-0.png", "lens-1.png", "lens.csv", "lens.json"]
    expected = lens.logit_lens(shared_models("llama"), PROMPTS, targets=" the", top_k=3)
    assert lens.LensTable.from_json(out / "lens.json").rows == expected.rows
    assert main([*argv[:-2], "--json", "--positions", "last"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert {(r["prompt"], r["position"]) for r in rows} == {(0, len(shared_models("llama").encode(PROMPTS[0])) - 1),
                                                           (1, len(shared_models("llama").encode(PROMPTS[1])) - 1)}


def test_cli_lens_trains_saves_and_reads_translators(tiny_dir, shared_models, tmp_path, capsys):
    from mlx_steer.cli import main

    (tmp_path / "p.txt").write_text("\n".join(tiny_models.CORPUS[:7]) + "\n")
    model = str(tiny_dir("llama"))
    assert main(["lens", "--model", model, "--train", str(tmp_path / "p.txt"), "-o", str(tmp_path / "t"),
                 "--steps", "5", "--lr", "0.01", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["tuned_kl"]) == 3
    tuned = lens.TunedLens.load(tmp_path / "t", model=shared_models("llama"))
    assert main(["lens", "--model", model, PROMPTS[0], "--tuned", str(tmp_path / "t"), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = lens.logit_lens(shared_models("llama"), PROMPTS[0], tuned=tuned)
    assert printed["lens"] == "tuned" and [r["top_ids"] for r in printed["rows"]] == [list(r.top_ids) for r in expected.rows]


@pytest.mark.parametrize("extra, message", [
    (["--targets", " wonderful day"], "must be one token"),
    (["--layers", "9"], "layer 9 out of range for a 4-layer model; valid: -4..3"),
    (["--tuned", "."], "is not a tuned-lens folder"),
])
def test_cli_lens_user_errors_exit_2(tiny_dir, capsys, extra, message):
    from mlx_steer.cli import main

    assert main(["lens", "--model", str(tiny_dir("llama")), "Paris is the", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err and err.count("\n") == 1, err


@pytest.mark.parametrize("argv, message", [
    ([], "give one or more prompts"),
    (["Paris", "--positions", "first"], "--positions takes all, last, or integers"),
    (["--train", "p.txt"], "--train needs -o DIR"),
    (["Paris", "--train", "p.txt", "-o", "x"], "--train takes its prompts from the file"),
])
def test_cli_lens_usage_errors_exit_2(tiny_dir, capsys, argv, message):
    from mlx_steer.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["lens", "--model", str(tiny_dir("llama")), *argv])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and "Traceback" not in err, err
