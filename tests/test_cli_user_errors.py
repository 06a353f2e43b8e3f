"""The command line under a user's mistakes: a user's mistake is one ``error:`` line
and exit status 2, never a traceback; outputs are checked before the work; results that are NaN
are reported, not printed as if they were text. Each case runs ``main()`` in-process and checks
the outcome against the library called directly on the same inputs."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mlx_steer as ms
from mlx_steer import analysis as an
from mlx_steer import cli
from mlx_steer.cli import main

POS = ["I love this wonderful day", "happy people walk in the sun", "This is great news"]
NEG = ["I hate this terrible day", "sad people walk in the rain", "This is awful news"]


@pytest.fixture(scope="module")
def model(shared_models):
    return shared_models("llama")


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_dir, model) -> dict:
    d = tmp_path_factory.mktemp("cli_hardening")
    (d / "pairs.jsonl").write_text("".join(json.dumps({"positive": p, "negative": n}) + "\n" for p, n in zip(POS, NEG)))
    vec = ms.extract(model, POS, NEG, sites=["layers.1", "layers.2"])
    ms.save_vector(vec, d / "vec.safetensors")
    return {"dir": d, "model": str(tiny_dir("llama")), "vec": str(d / "vec.safetensors")}


def usage_error(argv: list[str], capsys) -> str:
    """argparse's report for ``argv``: exit status 2, no traceback; returns its error line."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err, err
    return err.strip().splitlines()[-1]


def user_error(argv: list[str], capsys) -> str:
    """``main(argv)`` returns 2 with one ``error: ...`` line on stderr; returns the message."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err[len("error: "):].rstrip("\n")


def _no_model(*args, **kwargs):
    raise AssertionError("the model was loaded before the output was checked")


# -- sampling and size options -------------------------------------------------------------------
@pytest.mark.parametrize("option, value, message", [
    ("--temp", "-1", "argument --temp: must be >= 0, got -1"),
    ("--top-p", "2", "argument --top-p: must be <= 1, got 2"),
    ("--top-k", "-3", "argument --top-k: must be >= 0, got -3"),
    ("--min-p", "nan", "argument --min-p: must be finite, got 'nan'"),
    ("--max-tokens", "0", "argument --max-tokens: must be >= 1, got 0"),
    ("--repetition-penalty", "0", "argument --repetition-penalty: must be > 0, got 0"),
    ("--strength", "inf", "argument --strength/--strengths: must be finite, got 'inf'"),
])
def test_generate_option_ranges(ws, option, value, message, capsys):
    line = usage_error(["generate", "hi", "--model", ws["model"], "--vector", ws["vec"], option, value], capsys)
    assert line == f"mlx-steer generate: error: {message}"


def test_other_option_ranges(ws, capsys):
    assert usage_error(["sweep", "--model", ws["model"], "--vector", ws["vec"], "--strengths", "0", "nan",
                        "--target-tokens", "a", "--contrast-tokens", "b"], capsys).endswith(
        "argument --strengths/--strength: must be finite, got 'nan'")
    assert usage_error(["inspect", ws["vec"], "-k", "0"], capsys).endswith("argument -k/--top-k: must be >= 1, got 0")
    assert usage_error(["extract", str(ws["dir"] / "pairs.jsonl"), "--model", ws["model"], "--layers", "1",
                        "--batch-size", "0", "-o", str(ws["dir"] / "b.safetensors")], capsys).endswith(
        "argument --batch-size: must be >= 1, got 0")


def test_system_without_chat(ws, capsys):
    for cmd in (["generate", "hi", "--vector", ws["vec"]],
                ["extract", str(ws["dir"] / "pairs.jsonl"), "--layers", "1", "-o", str(ws["dir"] / "s.safetensors")]):
        line = usage_error([*cmd, "--model", ws["model"], "--system", "Be brief."], capsys)
        assert line.endswith("error: --system only apply to chat prompts: add --chat, or drop them")
    assert not (ws["dir"] / "s.safetensors").exists()


# -- devices and model files ---------------------------------------------------------------------
def test_bad_torch_devices(ws, capsys):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    base = ["inspect", ws["vec"], "--model", ws["model"], "--backend", "torch", "--device"]
    assert user_error([*base, "bogus"], capsys).startswith("--device 'bogus' is not a torch device (")
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        assert user_error([*base, f"cuda:{n}"], capsys).startswith(f"--device cuda:{n}: this machine has {n} cuda")
    else:
        assert user_error([*base, "cuda"], capsys) == (f"--device cuda: no cuda device is available to this torch "
                                                       f"({torch.__version__}); use --device cpu")


@pytest.mark.parametrize("backend", ["mlx", "torch"])
@pytest.mark.parametrize("damage", ["truncated", "empty", "bad config"])
def test_damaged_model_folder(ws, tmp_path, backend, damage, capsys):
    if backend == "torch":
        pytest.importorskip("transformers")
    folder = tmp_path / "model"
    shutil.copytree(ws["model"], folder)
    weights = folder / "model.safetensors"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:5000])
    elif damage == "empty":
        weights.write_bytes(b"")
    else:
        (folder / "config.json").write_text("{")
    message = user_error(["inspect", ws["vec"], "--model", str(folder), "--backend", backend], capsys)
    assert message.startswith(f"cannot load the model {folder}: ")


def test_deeply_nested_json_pairs(ws, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("mlx_steer.cli.loading.load_model", _no_model)
    deep = '{"positive": ' + "[" * 100_000 + "]" * 100_000 + ', "negative": "x"}'
    (tmp_path / "deep.jsonl").write_text(deep + "\n")
    (tmp_path / "deep.json").write_text("[" + deep + "]")
    for name, where in (("deep.jsonl", " line 1"), ("deep.json", "")):
        message = user_error(["extract", str(tmp_path / name), "--model", ws["model"], "--layers", "1",
                              "-o", str(tmp_path / "x.safetensors")], capsys)
        assert message.startswith(f"{tmp_path / name}{where}: JSON nested too deeply")


# -- outputs: checked first, not overwritten, GGUF by name ---------------------------------------
def test_output_checked_before_the_work(ws, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("mlx_steer.cli.loading.load_model", _no_model)
    args = ["extract", str(ws["dir"] / "pairs.jsonl"), "--model", ws["model"], "--layers", "1", "-o"]
    assert user_error([*args, str(tmp_path)], capsys).startswith(f"{tmp_path} is a folder; give a file name")
    assert user_error([*args, str(tmp_path / "gone" / "v.safetensors")], capsys) == \
        f"no such folder for the output: {tmp_path / 'gone'}"
    if importlib.util.find_spec("matplotlib"):
        png = ["sweep", "--model", ws["model"], "--vector", ws["vec"], "--target-tokens", "a", "--contrast-tokens", "b"]
        assert user_error([*png, "--png", str(tmp_path)], capsys).startswith(f"{tmp_path} is a folder")
    if os.access("/sys", os.W_OK) and os.getuid() != 0:
        pytest.skip("/sys is writable here")
    assert user_error([*args, "/sys/v.safetensors"], capsys).startswith("cannot write /sys/v.safetensors: ")


def test_unwritable_folder_as_a_user(ws, tmp_path, monkeypatch, capsys):
    if os.getuid() == 0:
        pytest.skip("root writes anywhere")
    monkeypatch.setattr("mlx_steer.cli.loading.load_model", _no_model)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    message = user_error(["extract", str(ws["dir"] / "pairs.jsonl"), "--model", ws["model"], "--layers", "1",
                          "-o", str(locked / "v.safetensors")], capsys)
    assert message.startswith(f"cannot write {locked / 'v.safetensors'}: ")


def test_existing_output_needs_force(ws, model, tmp_path, capsys):
    out = tmp_path / "v.safetensors"
    out.write_text("precious")
    args = ["extract", str(ws["dir"] / "pairs.jsonl"), "--model", ws["model"], "--layers", "2", "-o", str(out)]
    assert user_error(args, capsys) == f"{out} exists; pass --force to overwrite it"
    assert out.read_text() == "precious"
    assert main([*args, "--force"]) == 0
    assert ms.load_vector(out) == ms.extract(model, POS, NEG, sites=["layers.2"])


def test_gguf_output_is_a_control_vector(ws, model, tmp_path, capsys):
    gguf = pytest.importorskip("gguf")
    out = tmp_path / "happy.gguf"
    assert main(["extract", str(ws["dir"] / "pairs.jsonl"), "--model", ws["model"], "--layers", "1", "3",
                 "-o", str(out)]) == 0
    want = ms.extract(model, POS, NEG, sites=["layers.1", "layers.3"])
    reader = gguf.GGUFReader(str(out))
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert fields["general.architecture"] == "controlvector"
    assert fields["controlvector.model_hint"] == "llama" and fields["controlvector.layer_count"] == 2
    tensors = {t.name: np.array(t.data) for t in reader.tensors}
    assert sorted(tensors) == ["direction.1", "direction.3"]
    for i in (1, 3):
        np.testing.assert_array_equal(tensors[f"direction.{i}"], want[f"model.layers.{i}"])
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0  # and it reads back
    assert "extra.model_hint:llama" in capsys.readouterr().out.replace(" ", "")


def test_gguf_output_refuses_what_llama_cpp_cannot_hold(ws, tmp_path, capsys):
    pytest.importorskip("gguf")
    base = ["extract", str(ws["dir"] / "pairs.jsonl"), "--model", ws["model"], "-o", str(tmp_path / "v.gguf")]
    assert "never steers layer 0" in user_error([*base, "--layers", "0"], capsys)
    assert "layers.1:input is not one" in user_error([*base, "--sites", "layers.1:input"], capsys)
    assert "actadd makes a per-position tensor" in user_error(
        ["extract", "--positive", "a", "--negative", "b", "--model", ws["model"], "--layers", "1",
         "--method", "actadd", "-o", str(tmp_path / "v.gguf")], capsys)
    assert not (tmp_path / "v.gguf").exists()


# -- inputs that make no vector ------------------------------------------------------------------
def test_identical_pairs_are_an_error(ws, tmp_path, capsys):
    (tmp_path / "same.jsonl").write_text("".join(json.dumps({"positive": p, "negative": p}) + "\n" for p in POS))
    message = user_error(["extract", str(tmp_path / "same.jsonl"), "--model", ws["model"], "--layers", "1", "--no-progress",
                          "-o", str(tmp_path / "v.safetensors")], capsys)
    assert message.startswith("the mean_diff direction at model.layers.1 is zero")
    assert not (tmp_path / "v.safetensors").exists()


# -- inspect prints no terminal control characters -----------------------------------------------
def test_inspect_strips_control_characters(tmp_path, capsys):
    evil = "\x1b[2J\x1b]0;pwned\x07"
    vec = ms.SteeringVector({"model.layers.1": np.ones(4, np.float32)}, model_id=f"org/m{evil}\r",
                            method="mean\u202edid", extra={f"k{evil}": f"v{evil}\n"})
    ms.save_vector(vec, tmp_path / "evil.safetensors")
    assert main(["inspect", str(tmp_path / "evil.safetensors")]) == 0
    out = capsys.readouterr().out
    assert not any(ord(c) < 32 and c != "\n" or c in "\x7f\u202e" for c in out), repr(out)
    assert "model_id:       org/m\\x1b[2J\\x1b]0;pwned\\x07\\r\n" in out
    assert "method:         mean\\u202edid\n" in out and "extra.k\\x1b[2J" in out


# -- non-finite results --------------------------------------------------------------------------
def test_generate_strength_that_overflows_float32(ws, capsys):
    message = user_error(["generate", "hi", "--model", ws["model"], "--vector", ws["vec"], "--strength", "1e39",
                          "--max-tokens", "3"], capsys)
    assert "overflows float32" in message


def test_generate_stops_at_nan_logits(ws, model, capsys):
    vec = ms.load_vector(ws["vec"], model=model)
    with pytest.raises(ValueError, match=r"logits became non-finite \(NaN or \+inf\) at generated token 0"):
        list(model.stream_generate("hi", max_tokens=2, interventions=vec.to_interventions(scale=3e38)))
    with pytest.raises(ValueError, match=r"the logits are not finite"):  # a forward too
        model.run("hi", interventions=vec.to_interventions(scale=3e38))
    message = user_error(["generate", "hi", "--model", ws["model"], "--vector", ws["vec"], "--strength", "3e38",
                          "--max-tokens", "3"], capsys)
    assert message.startswith("under [+3e+38]: the logits became non-finite (NaN or +inf) at generated token 0")


@pytest.fixture(scope="module")
def nan_model_dir(ws, tmp_path_factory) -> Path:
    """The tiny llama with one NaN in its output head: every steered cell of a sweep is NaN."""
    from safetensors.numpy import load_file, save_file

    folder = tmp_path_factory.mktemp("nan_model") / "llama"
    shutil.copytree(ws["model"], folder)
    weights = load_file(str(folder / "model.safetensors"))
    head = "lm_head.weight" if "lm_head.weight" in weights else "model.embed_tokens.weight"
    weights[head][5] = np.nan
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def test_sweep_with_nan_cells_exits_non_zero(ws, nan_model_dir, capsys):
    m = ms.load(str(nan_model_dir))
    vec = ms.load_vector(ws["vec"], model=m)
    want = an.sweep(m, vector=vec, layers=[1, 2], strengths=[0, 2], prompts=list(cli.DEFAULT_PROMPTS),
                    target_tokens=[" the"], contrast_tokens=[" is"], progress=False)
    assert np.isnan(want.grid("kl")[:, 1]).all()  # the oracle: the steered cells are NaN
    assert main(["sweep", "--model", str(nan_model_dir), "--vector", ws["vec"], "--strengths", "0", "2",
                 "--target-tokens", " the", "--contrast-tokens", " is"]) == 2
    captured = capsys.readouterr()
    assert want.to_text() in captured.out  # the table is still shown
    assert captured.err.endswith("error: 2 cells are NaN/inf (layer 1 strength 2, layer 2 strength 2): the model's "
                                 "logits are not finite there (a strength it overflows at, or broken weights)\n")


# -- demo ----------------------------------------------------------------------------------------
@pytest.fixture
def tiny_demo(ws, monkeypatch):
    """The demo on the tiny llama instead of SmolLM2 (its preparation is what is replaced)."""
    import mlx_steer.demo.real_model as rm

    monkeypatch.setattr(rm, "prepare_smollm2", lambda **kw: Path(ws["model"]))


@pytest.mark.parametrize("argv, message", [
    (["--strengths", "0", "nan"], "argument --strengths: must be finite, got 'nan'"),
    (["--max-tokens", "0"], "argument --max-tokens: must be >= 1, got 0"),
])
def test_demo_option_values(tiny_demo, argv, message, capsys):
    assert main(["demo", *argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == f"mlx-steer demo: error: {message}"


def test_demo_unknown_layer(tiny_demo, model, capsys):
    with pytest.raises(ValueError) as exc:
        model.resolve("layers.99")
    assert user_error(["demo", "--layer", "layers.99"], capsys) == str(exc.value)


def test_demo_help_mentions_the_cache_variable(capsys):
    assert main(["demo", "--help"]) == 0
    assert "MLX_STEER_CACHE" in capsys.readouterr().out


# -- the console script itself: no traceback ----------------------------------------------------
def test_console_script_reports_an_overflowing_strength(ws):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONIOENCODING="utf-8")
    proc = subprocess.run([sys.executable, "-m", "mlx_steer.cli", "generate", "I think", "--model", ws["model"],
                           "--vector", ws["vec"], "--strength", "1e39"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: scale 1e+39 times the vector") and "<pad>" not in proc.stdout
