"""``mlx-steer calibrate`` and ``--calibrated``: the CLI's results equal the library's on the same inputs
(the calibration, the evaluation table in calibrated units, the steered continuation at the stored
coefficient), and a user's mistake is one error line with exit status 2."""

from __future__ import annotations

import json

import numpy as np
import pytest

import mlx_steer as ms
from mlx_steer import evaluate as ev
from mlx_steer.analysis import calibrate
from mlx_steer.cli import main
from mlx_steer.vectors.steering_vector import SteeringVector

PROMPTS = ["The cat", "I think the day"]
ITEMS = [{"question": "Do you like the cat?\n\nChoices:\n (A) Yes\n (B) No", "answer_matching": "(A)",
          "answer_not_matching": "(B)"}]


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_dir, shared_models) -> dict:
    m = shared_models("llama")
    d = tmp_path_factory.mktemp("cli_calibrate")
    rng = np.random.default_rng(1)
    vec = SteeringVector({m.resolve_path(f"layers.{i}"): rng.standard_normal(m.hidden_size) for i in (1, 2)})
    ms.save_vector(vec, d / "vec.safetensors")
    (d / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    (d / "items.json").write_text(json.dumps(ITEMS))
    return {"dir": d, "model": str(tiny_dir("llama")), "vec": str(d / "vec.safetensors"), "m": m, "raw": vec}


def _calibrate(ws, out: str, *extra: str) -> str:
    argv = ["calibrate", ws["vec"], "--model", ws["model"], "--target-kl", "0.05", "--prompts-file",
            str(ws["dir"] / "prompts.txt"), "--rollout-tokens", "4", "--no-chat", "--no-progress", "-o", out, *extra]
    assert main(argv) == 0
    return out


def test_calibrate_writes_what_the_library_computes(ws, capsys):
    out = _calibrate(ws, str(ws["dir"] / "cal.safetensors"), "--layers", "2")
    printed = capsys.readouterr().out
    want = calibrate(ws["m"], ws["raw"], target_kl=0.05, prompts=PROMPTS, rollout_tokens=4, chat=False,
                     sites=["layers.2"]).calibration
    got = ms.load_vector(out)
    assert got.calibration == want and all(np.array_equal(got[s], ws["raw"][s]) for s in ws["raw"].sites)
    site = ws["raw"].sites[1]
    assert f"{site}  coefficient {want.coefficients[site]:.6g}" in printed


def test_calibrated_strengths_in_evaluate_and_generate(ws, tmp_path, capsys):
    cal = _calibrate(ws, str(tmp_path / "cal.safetensors"))
    vec = ms.load_vector(cal, model=ws["m"])
    capsys.readouterr()
    assert main(["evaluate", "--model", ws["model"], "--vector", cal, "--calibrated", "--items",
                 str(ws["dir"] / "items.json"), "--layers", "1", "2", "--strengths", "0", "1", "--no-progress",
                 "-o", str(tmp_path / "ev")]) == 0
    table = ev.EvalTable.from_json(tmp_path / "ev" / "table.json")
    want = ev.evaluate(ws["m"], vector=vec, layers=[1, 2], strengths=[0.0, 1.0], items=ITEMS, units="calibrated",
                       progress=False)
    assert table.rows == want.rows and table.info["units"] == "calibrated"
    capsys.readouterr()
    assert main(["generate", "The cat", "--model", ws["model"], "--vector", cal, "--layer", "1", "--calibrated",
                 "--strength", "1", "--max-tokens", "5"]) == 0
    shown = capsys.readouterr().out
    site = vec.sites[0]
    c = vec.calibration.coefficients[site]
    text = ws["m"].generate("The cat", max_tokens=5, interventions=vec.select(site).to_interventions(scale=c))
    line = next(x for x in shown.splitlines() if x.startswith("[+1]"))
    assert line.endswith(text) and line[len("[+1]"):].strip() == text.strip()


def test_calibrated_strengths_in_sweep(ws, tmp_path, capsys):
    from mlx_steer.analysis import sweep
    from mlx_steer.vectors.calibrated_units import calibrated_vector

    cal = _calibrate(ws, str(tmp_path / "cal.safetensors"), "--layers", "2")
    vec = ms.load_vector(cal, model=ws["m"])
    capsys.readouterr()
    assert main(["sweep", "--model", ws["model"], "--vector", cal, "--calibrated", "--layers", "2", "--strengths",
                 "0", "1", "--target-tokens", "5", "--contrast-tokens", "6", "--prompts-file",
                 str(ws["dir"] / "prompts.txt")]) == 0
    shown = capsys.readouterr().out
    want = sweep(ws["m"], vector=calibrated_vector(vec, sites=(vec.sites[1],)), layers=[2], strengths=[0.0, 1.0],
                 prompts=PROMPTS, target_tokens=[5], contrast_tokens=[6])
    assert want.to_text() in shown
    capsys.readouterr()  # the library's progress bar
    assert "no coefficient for" in _error(["sweep", "--model", ws["model"], "--vector", cal, "--calibrated", "--layers",
                                           "1", "--target-tokens", "5", "--contrast-tokens", "6"], capsys)


def _error(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_user_errors_are_one_line(ws, tmp_path, capsys):
    assert "no calibration; run `mlx-steer calibrate`" in _error(
        ["generate", "x", "--model", ws["model"], "--vector", ws["vec"], "--calibrated", "--max-tokens", "2"], capsys)
    assert "unknown KL statistic 'median'" in _error(
        ["calibrate", ws["vec"], "--model", ws["model"], "--statistic", "median", "-o", str(tmp_path / "o.safetensors")],
        capsys)
    with pytest.raises(SystemExit) as exc:
        main(["calibrate", ws["vec"], "--model", ws["model"], "-o", str(tmp_path / "o.gguf")])
    assert exc.value.code == 2 and "a GGUF holds no calibration" in capsys.readouterr().err
    assert not (tmp_path / "o.safetensors").exists()
