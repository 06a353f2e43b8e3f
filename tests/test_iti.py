"""ITI (``mlx_steer.heads.probe_heads`` / ``fit_head_probes``): per-head probes find a head whose z
separates the classes by construction, held-out accuracies equal counts made by hand, the shift is
``α · σ · θ`` computed by hand, the recording equals ``head_results`` at the same positions, and the
interventions are head steering of that shift; on both backends."""

import json

import numpy as np
import pytest

from mlx_steer.heads import add_to_heads, head_results
from mlx_steer.heads.iti import fit_head_probes, probe_heads
from mlx_steer.heads.iti_fit import heldout_split
from tiny_models import HEADS, HIDDEN
from torch_fixtures import *  # noqa: F403  (fixtures)
from torch_fixtures import BACKENDS

D_HEAD = HIDDEN // HEADS
WORDS = "the a cat dog runs sleeps happy sad blue red big small tree house".split()


def _prompts(seed: int, n: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, 3 + i % 4)) for i in range(n)]


def _planted(n: int = 40, seed: int = 0) -> tuple[dict, dict]:
    """Layers 0 and 2, 3 heads of width 2, noise everywhere except: layer 2 head 1 is exactly
    (+3, 0) for positives and (-3, 0) for negatives; layer 0 head 2 is (0, +1) / (0, -1), except the
    first held-out positive, put on the negative side."""
    rng = np.random.default_rng(seed)
    pos = {i: rng.normal(size=(n, 3, 2)) for i in (0, 2)}
    neg = {i: rng.normal(size=(n, 3, 2)) for i in (0, 2)}
    pos[2][:, 1], neg[2][:, 1] = [3.0, 0.0], [-3.0, 0.0]
    pos[0][:, 2], neg[0][:, 2] = [0.0, 1.0], [0.0, -1.0]
    out_pos, _ = heldout_split(n, n, holdout=0.25, seed=7)
    pos[0][np.flatnonzero(out_pos)[0], 2] = [0.0, -1.0]
    return pos, neg


def test_probes_find_the_planted_heads_with_accuracies_counted_by_hand():
    pos, neg = _planted()
    probes = fit_head_probes(pos, neg, holdout=0.25, seed=7)
    assert probes.layers == (0, 2) and probes.n_train == 60 and probes.n_heldout == 20  # 10 of 40 per class
    assert probes.accuracy[1, 1] == 1.0  # every held-out example on its side
    assert probes.accuracy[0, 2] == 19 / 20  # one held-out positive of 20 examples on the wrong side
    assert probes.train_accuracy[0, 2] == 1.0 and probes.train_accuracy[1, 1] == 1.0
    noise = np.delete(probes.accuracy.ravel(), [1 * 3 + 1, 0 * 3 + 2])
    assert noise.max() < 0.8  # the other heads see noise
    assert probes.top(2) == [(2, 1), (0, 2)]
    # mass-mean direction (1, 0), sigma of +-3 = 3: shift alpha * 3 * (1, 0)
    np.testing.assert_allclose(probes.mass_mean[1, 1], [1.0, 0.0], atol=1e-12)
    assert probes.sigma["mass_mean"][1, 1] == pytest.approx(3.0, abs=1e-12)
    shifts = probes.shifts(k=1, alpha=2.0)
    assert list(shifts) == [2] and list(shifts[2]) == [1]
    np.testing.assert_allclose(shifts[2][1], [6.0, 0.0], atol=1e-6)
    assert probes.probe[1, 1] @ np.array([1.0, 0.0]) > 0.99  # the probe's weights point the same way
    table = probes.table()
    assert table.score(2, 1) == 1.0 and table.score(0, 2) == 0.95
    np.testing.assert_array_equal(table.grid(), probes.accuracy)
    assert "probe_accuracy" in table.to_text() and table.to_csv().count("\n") == 2 * 3 + 1


def test_bad_settings_are_refused_by_name():
    pos, neg = _planted(n=8)
    probes = fit_head_probes(pos, neg)
    with pytest.raises(ValueError, match=r"k 7 out of range: 6 heads were probed; valid: 1\.\.6"):
        probes.top(7)
    with pytest.raises(ValueError, match=r"unknown direction 'mean'; valid: mass_mean, probe"):
        probes.shifts(k=1, alpha=1.0, direction="mean")
    with pytest.raises(ValueError, match=r"1 positive example\(s\): each class needs at least 2"):
        fit_head_probes({0: pos[0][:1]}, {0: neg[0]})
    with pytest.raises(ValueError, match=r"holdout 1\.5 must be a fraction in \(0, 1\)"):
        fit_head_probes(pos, neg, holdout=1.5)
    with pytest.raises(ValueError, match=r"positive and negative must hold the same layers, got \[0, 2\] and \[0\]"):
        fit_head_probes(pos, {0: neg[0]})


@pytest.mark.parametrize("backend", BACKENDS)
def test_recorded_z_with_a_planted_offset_is_found_and_recording_equals_head_results(backend_models, backend):
    m = backend_models(backend, "llama")
    positive, negative = _prompts(1, 16), _prompts(2, 16)
    probes = probe_heads(m, positive, negative, batch_size=5)
    # the oracle recording: head_results at each prompt's last token, prompts run one at a time
    z = {}
    for name, prompts in (("pos", positive), ("neg", negative)):
        solo = [head_results(m, p, positions="last").z for p in prompts]
        z[name] = {i: np.stack([one[i][0, 0] for one in solo]) for i in range(4)}
    again = fit_head_probes(z["pos"], z["neg"])
    np.testing.assert_array_equal(probes.accuracy, again.accuracy)
    np.testing.assert_allclose(probes.mass_mean, again.mass_mean, atol=1e-4)
    assert probes.accuracy.max() < 1.0  # same distribution: nothing separates
    u = np.random.default_rng(3).normal(size=D_HEAD)
    spread = float(np.concatenate([z["pos"][1][:, 3], z["neg"][1][:, 3]]).std())
    planted = {i: v.copy() for i, v in z["pos"].items()}
    planted[1][:, 3] += 8 * spread * u / np.linalg.norm(u)  # positives' layer 1 head 3 moved along u
    found = fit_head_probes(planted, z["neg"])
    assert found.top(1) == [(1, 3)] and found.accuracy[1, 3] == 1.0
    assert found.mass_mean[1, 3] @ (u / np.linalg.norm(u)) > 0.9


@pytest.mark.parametrize("backend", BACKENDS)
def test_mean_read_averages_each_prompts_tokens(backend_models, backend):
    m = backend_models(backend, "qwen2")
    positive, negative = _prompts(3, 6), _prompts(4, 6)
    probes = probe_heads(m, positive, negative, layers=[-1], read="mean", batch_size=4)
    z = {name: {3: np.stack([head_results(m, p, layers=3).z[3][0].mean(0) for p in prompts])}
         for name, prompts in (("pos", positive), ("neg", negative))}
    np.testing.assert_allclose(probes.mass_mean, fit_head_probes(z["pos"], z["neg"]).mass_mean, atol=1e-4)
    with pytest.raises(ValueError, match=r"unknown read 'first'; valid: last, mean"):
        probe_heads(m, positive, negative, read="first")


@pytest.mark.parametrize("backend", BACKENDS)
def test_interventions_are_head_steering_of_the_shift(backend_models, backend):
    m = backend_models(backend, "llama")
    probes = probe_heads(m, _prompts(5, 12), _prompts(6, 12))
    steer = probes.interventions(m, k=3, alpha=4.0, direction="probe")
    by_hand = {}
    for layer, head in probes.top(3):
        i = probes.layers.index(layer)
        by_hand.setdefault(layer, {})[head] = 4.0 * probes.sigma["probe"][i, head] * probes.probe[i, head]
    want = add_to_heads(m, by_hand)
    assert sorted(steer) == sorted(want)
    prompt = ["Tell me a story about a cat"]
    got, oracle = (m.to_numpy(m.run(prompt, interventions=s).logits) for s in (steer, want))
    np.testing.assert_allclose(got, oracle, atol=1e-6, rtol=0)
    assert not np.allclose(got, m.to_numpy(m.run(prompt).logits))


# -- the command line ------------------------------------------------------------------------------
def _files(tmp_path, n_pos=8, n_neg=8):
    pos, neg = tmp_path / "pos.txt", tmp_path / "neg.txt"
    pos.write_text("\n".join(_prompts(7, n_pos)) + "\n")
    neg.write_text("\n".join(_prompts(8, n_neg)) + "\n")
    return pos, neg


def test_cli_heads_probe_prints_the_librarys_table(tiny_dir, shared_models, torch_models, tmp_path, capsys):
    from mlx_steer.cli.main import main
    from mlx_steer.heads import HeadScoreTable

    pos, neg = _files(tmp_path)
    model, out = str(tiny_dir("llama")), tmp_path / "probes.csv"
    assert main(["heads", "probe", model, "--pos", str(pos), "--neg", str(neg), "--top", "3", "--out", str(out)]) == 0
    want = probe_heads(shared_models("llama"), _prompts(7, 8), _prompts(8, 8))
    printed = capsys.readouterr().out
    assert printed == (f"12 prompts trained on, 4 held out\n{want.table().top(3).to_text()}\nwrote {out}\n")
    assert out.read_text() == want.table().to_csv()
    argv = ["--backend", "torch", "heads", "probe", model, "--pos", str(pos), "--neg", str(neg), "--json",
            "--read", "mean", "--layers", "1", "2", "--out", str(tmp_path / "p.json")]
    assert main(argv) == 0
    got = json.loads(capsys.readouterr().out)
    want = probe_heads(torch_models("llama"), _prompts(7, 8), _prompts(8, 8), read="mean", layers=[1, 2])
    assert got["rows"] == want.table().top(8).to_dicts()
    assert HeadScoreTable.from_json(tmp_path / "p.json") == want.table()


def _usage(argv, capsys) -> str:
    from mlx_steer.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err, err
    return err.strip().splitlines()[-1]


def test_cli_heads_probe_user_errors(tiny_dir, tmp_path, capsys, monkeypatch):
    from mlx_steer.cli.main import main

    model = str(tiny_dir("llama"))
    pos, neg = _files(tmp_path)
    one = tmp_path / "one.txt"
    one.write_text("just one\n")
    base = ["heads", "probe", model, "--pos", str(pos), "--neg", str(neg)]
    assert _usage(["heads", "probe", model, "--pos", str(pos)], capsys).endswith(
        "the following arguments are required: --neg")
    assert _usage(base + ["--holdout", "1"], capsys).endswith("argument --holdout: must be a fraction in (0, 1), got 1")
    assert _usage(base + ["--read", "first"], capsys).startswith(
        "mlx-steer heads probe: error: argument --read: invalid choice: 'first'")
    assert _usage(["heads", "probe", model, "--pos", str(one), "--neg", str(neg)], capsys) == (
        f"mlx-steer heads probe: error: --pos {one} has 1 prompt; each class needs at least 2 (one to train on, "
        "one held out)")
    assert _usage(base + ["--out", str(tmp_path / "x.txt")], capsys).endswith("give a .csv or .json file name")

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr("mlx_steer.cli.loading.load_model", no_model)
    (tmp_path / "there.csv").write_text("keep")
    for argv, message in [(["--out", str(tmp_path / "there.csv")], f"{tmp_path / 'there.csv'} exists; pass --force "
                                                                     "to overwrite it"),
                          (["--neg", str(tmp_path / "none.txt")], f"no such file: {tmp_path / 'none.txt'}")]:
        assert main(base + argv) == 2
        assert capsys.readouterr().err == f"error: {message}\n"
    monkeypatch.undo()
    assert main(base + ["--layers", "9"]) == 2
    assert capsys.readouterr().err == "error: layer 9 out of range for a 4-layer model; valid: -4..3\n"


# -- docs/heads.md's "Head steering and ITI" section -------------------------------------------------
SECTION = "## Head steering and ITI"


def _section_blocks() -> list[tuple[str, str]]:
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "heads.md").read_text()
    body = text[text.index(SECTION):]
    body = body[: body.find("\n## ", 1)] if "\n## " in body[1:] else body
    return re.findall(r"```(\w+)\n(.*?)```", body, re.S)


def test_docs_section_runs_on_a_tiny_model_and_its_command_parses(tiny_dir, tmp_path, monkeypatch):
    from mlx_steer.cli import build_parser

    assert [k for k, _ in _section_blocks()] == ["python", "text", "bash", "text"]
    (_, code), _, (_, command), _ = _section_blocks()
    monkeypatch.chdir(tmp_path)
    scope = {"prepare_smollm2": lambda: tiny_dir("llama")}
    exec(compile(code.replace("from mlx_steer.demo.real_model import prepare_smollm2\n", ""), "heads.md", "exec"),
         scope)
    assert scope["probes"].n_train == 72 and (tmp_path / "smollm2-iti" / "config.json").exists()
    assert (tmp_path / "probes.png").exists() and len((tmp_path / "happy.txt").read_text().splitlines()) == 48
    args = build_parser().parse_args(command.split()[1:])
    assert (args.command, args.heads_command, args.pos, args.neg, args.top) == ("heads", "probe", "happy.txt",
                                                                               "sad.txt", 5)


@pytest.mark.slow
def test_docs_section_runs_as_written_and_its_export_equals_the_steered_model(smollm2_dir, tmp_path):
    """On SmolLM2: the page's printed output, the CLI's, and the exported folder loaded by plain
    mlx-lm without mlx_steer (export_worker.py) against the in-process ITI-steered model."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import mlx_steer as ms

    (_, code), (_, shown), (_, command), (_, shown_cli) = _section_blocks()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MLX_STEER_CACHE": str(smollm2_dir.parent)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == shown.strip()
    default = "~/.cache/mlx_steer/smollm2-135m-instruct"
    if Path(default).expanduser() != smollm2_dir:
        command = command.replace(default, str(smollm2_dir))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == shown_cli.strip()
    model = ms.load(str(smollm2_dir))
    positive, negative = ((tmp_path / f).read_text().splitlines() for f in ("happy.txt", "sad.txt"))
    iti = probe_heads(model, positive, negative).interventions(model, k=16, alpha=5.0)
    tokens = model.encode("The weather is great, happy people walk")
    steered = model.to_numpy(model.run([tokens], interventions=iti).logits)[0]
    greedy = model.generate_tokens(tokens, max_tokens=32, interventions=iti)
    (tmp_path / "jobs.json").write_text(json.dumps([[str(tmp_path / "smollm2-iti"), tokens]]))
    worker = Path(__file__).with_name("export_worker.py")
    done = subprocess.run([sys.executable, str(worker), "mlx", str(tmp_path / "jobs.json"), str(tmp_path / "out.npz")],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    plain = np.load(tmp_path / "out.npz")
    assert np.linalg.norm(plain["0/logits"] - steered) <= 1e-5 * np.linalg.norm(steered)
    got = plain["0/greedy"].tolist()
    assert got[:next((i for i, t in enumerate(got) if t in model.eos_token_ids), len(got))] == greedy
