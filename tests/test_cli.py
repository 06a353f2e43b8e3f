"""The ``mlx-steer`` console script end to end on a tiny llama, each command's output checked against
the library called in-process on the same inputs.

Every script call starts a Python that imports mlx-lm (seconds each), so the module fixture starts
all of them at once on a few worker threads while the oracles are computed here; each test then
reads its call's result. Variants that only exercise argument handling run ``main()`` in-process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import mlx_steer as ms
from mlx_steer import analysis as an
from mlx_steer.cli import DEFAULT_PROMPTS, main

PAIRS = [
    ("I love this wonderful day", "I hate this terrible day"),
    ("happy people walk in the sun", "sad people walk in the rain"),
    ("This is great news", "This is awful news"),
]
POS, NEG = [p for p, _ in PAIRS], [n for _, n in PAIRS]
PROMPTS = ["I think", "The weather is"]


def _script() -> list[str]:
    """The installed console script (next to this interpreter, else on PATH), else ``-m``."""
    here = Path(sys.executable).parent / "mlx-steer"
    found = str(here) if here.exists() else shutil.which("mlx-steer")
    return [found] if found else [sys.executable, "-m", "mlx_steer.cli"]


class Result:
    def __init__(self, proc: subprocess.CompletedProcess):
        self.rc = proc.returncode
        self.out = proc.stdout.decode("utf-8")
        self.err = proc.stderr.decode("utf-8")

    def error(self) -> str:
        """The last stderr line, checked to be a one-line ``error:`` report (no traceback)."""
        assert "Traceback" not in self.err, self.err
        return self.err.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def model(shared_models):
    return shared_models("llama")


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_dir, model) -> dict:
    """Input files, plus a vector file made in-process for generate/sweep/inspect."""
    d = tmp_path_factory.mktemp("cli")
    lines = [json.dumps({"positive": p, "negative": n}) for p, n in PAIRS]
    (d / "pairs.jsonl").write_text(lines[0] + "\n\n" + "\n".join(lines[1:]) + "\n")
    (d / "pairs.csv").write_text("positive,negative\n" + "".join(f'"{p}","{n}"\n' for p, n in PAIRS))
    (d / "pos.txt").write_text("\n".join(POS) + "\n")
    (d / "neg.txt").write_text("\n".join(NEG[:2]) + "\n\n")  # unpaired counts are fine for mean_diff
    (d / "prompts.txt").write_text("Tell me a story about\nParis is the capital of\nThe answer is\n")
    (d / "bad_json.jsonl").write_text(lines[0] + "\n\n" + '{"positive": "x", "negative": \n')
    (d / "bad_key.jsonl").write_text(lines[0] + "\n" + json.dumps({"positive": "x", "negativ": "y"}) + "\n")
    vec = ms.extract(model, POS, NEG, sites=["layers.1", "layers.2"])
    ms.save_vector(vec, d / "vec.safetensors")
    other = ms.SteeringVector({"model.layers.7": np.ones(32, np.float32)})  # 32 wide, layer 7 of 4
    ms.save_vector(other, d / "mismatch.safetensors")
    return {"dir": d, "model": str(tiny_dir("llama")), "vec": str(d / "vec.safetensors")}


@pytest.fixture(scope="module")
def runs(ws) -> dict[str, Future]:
    """Every console-script call of this module, started together; ``runs[name].result()``."""
    d, m, vec = ws["dir"], ws["model"], ws["vec"]
    calls = {
        "extract": ["extract", d / "pairs.jsonl", "--model", m, "--layers", "1", "2", "--method", "pca",
                    "--read", "mean", "--batch-size", "2", "-o", d / "out.safetensors"],
        "generate": ["generate", *PROMPTS, "--model", m, "--vector", vec, "--strength", "4", "-8",
                     "--max-tokens", "10"],
        "sweep": ["sweep", "--model", m, "--vector", vec, "--strengths", "0", "3", "-2",
                  "--target-tokens", " the", "--contrast-tokens", " is", "382",
                  "--prompts-file", d / "prompts.txt", "--batch-size", "2"],
        "sweep_png": ["sweep", "--model", m, "--positive", "I love", "--negative", "I hate", "--layers", "1", "3",
                      "--strengths", "0", "2", "--target-tokens", " the", "--contrast-tokens", " is",
                      "--png", d / "sweep.png"],
        "record": ["record", d / "prompts.txt", "--model", m, "--layers", "1", "3", "--batch-size", "2",
                   "-o", d / "acts.safetensors"],
        "inspect": ["inspect", vec],
        "inspect_model": ["inspect", vec, "--model", m, "-k", "3"],
        "missing_pairs": ["extract", d / "nope.jsonl", "--model", m, "--layers", "1", "-o", d / "x.safetensors"],
        "missing_vector": ["inspect", d / "nope.safetensors"],
        "missing_model": ["sweep", "--model", d / "no-model", "--vector", vec, "--target-tokens", "a",
                          "--contrast-tokens", "b"],
        "bad_json": ["extract", d / "bad_json.jsonl", "--model", m, "--layers", "1", "-o", d / "x.safetensors"],
        "bad_key": ["extract", d / "bad_key.jsonl", "--model", m, "--layers", "1", "-o", d / "x.safetensors"],
        "no_sites": ["extract", d / "pairs.jsonl", "--model", m, "-o", d / "x.safetensors"],
        "no_command": [],
        "demo_help": ["demo", "--help"],
    }
    env = dict(os.environ, PYTHONIOENCODING="utf-8", HF_HUB_OFFLINE="1")

    def call(argv: list) -> Result:
        cmd = _script() + [str(a) for a in argv]
        return Result(subprocess.run(cmd, capture_output=True, env=env, timeout=300))

    pool = ThreadPoolExecutor(max_workers=3)
    futures = {name: pool.submit(call, argv) for name, argv in calls.items()}
    yield futures
    pool.shutdown(wait=True)


def _block(prompt: str, texts: dict[str, str]) -> str:
    """generate's output for one prompt: a label per continuation, later lines indented under it."""
    w = max(len(label) for label in texts) + 3
    lines = [f"[{label}] ".ljust(w) + text.replace("\n", "\n" + " " * w) for label, text in texts.items()]
    return f"=== {prompt!r}\n" + "\n".join(lines) + "\n"


# -- extract -----------------------------------------------------------------------------------
def test_extract_writes_the_in_process_vector(runs, ws, model):
    r = runs["extract"].result()
    assert r.rc == 0, r.err
    want = ms.extract(model, POS, NEG, sites=["layers.1", "layers.2"], method="pca", read="mean", batch_size=2)
    got = ms.load_vector(ws["dir"] / "out.safetensors")
    assert got.sites == ("model.layers.1", "model.layers.2")
    for s in got.sites:
        np.testing.assert_array_equal(got[s], want[s])
    assert got == want  # metadata too: model id, method, read positions, hook point
    assert "wrote" in r.out and "from 3 positive and 3 negative prompts" in r.out
    assert "extracting" in r.err  # the progress bar


def test_extract_csv_text_files_and_options(ws, model, capsys):
    d, m = ws["dir"], ws["model"]
    assert main(["extract", str(d / "pairs.csv"), "--model", m, "--sites", "layers.2", "--method", "probe",
                 "-o", str(d / "csv.safetensors")]) == 0
    assert ms.load_vector(d / "csv.safetensors") == ms.extract(model, POS, NEG, sites=["layers.2"], method="probe")
    assert "extracting" in capsys.readouterr().err

    opts = dict(chat=True, system="Be brief.", read="assistant_start", assistant_prefix="Sure,")
    assert main(["extract", "--positive-file", str(d / "pos.txt"), "--negative-file", str(d / "neg.txt"),
                 "--model", m, "--layers", "3", "--chat", "--system", "Be brief.", "--read", "assistant_start",
                 "--assistant-prefix", "Sure,", "--no-progress", "-o", str(d / "txt.safetensors")]) == 0
    assert ms.load_vector(d / "txt.safetensors") == ms.extract(model, POS, NEG[:2], sites=["layers.3"], **opts)
    assert "extracting" not in capsys.readouterr().err

    assert main(["extract", "--positive", "Love", "--negative", "Hate", "--model", m, "--layers", "1",
                 "--method", "actadd", "-o", str(d / "actadd.safetensors")]) == 0
    want = ms.extract(model, ["Love"], ["Hate"], sites=["layers.1"], method="actadd")
    assert ms.load_vector(d / "actadd.safetensors") == want


def test_extract_with_the_torch_backend(ws, capsys):
    torch_backend = pytest.importorskip("mlx_steer.backends.torch")
    d, m = ws["dir"], ws["model"]
    # --backend before the command, and after it
    want = ms.extract(torch_backend.load(m), POS, NEG, sites=["layers.2"])
    for i, argv in enumerate((["--backend", "torch", "extract"], ["extract", "--backend", "torch"])):
        assert main([*argv, str(d / "pairs.jsonl"), "--model", m, "--layers", "2",
                     "-o", str(d / f"torch{i}.safetensors")]) == 0
        assert ms.load_vector(d / f"torch{i}.safetensors") == want


# -- record ------------------------------------------------------------------------------------
def _prompts(ws) -> list[str]:
    return (ws["dir"] / "prompts.txt").read_text().split("\n")[:3]


def test_record_writes_each_prompts_rows(runs, ws, model):
    from safetensors import safe_open

    r = runs["record"].result()
    assert r.rc == 0, r.err
    path = ws["dir"] / "acts.safetensors"
    with safe_open(str(path), "numpy") as f:
        got, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    for site in ("layers.1", "layers.3"):  # oracle: each prompt run alone, its last position
        want = np.stack([np.array(model.run([p], record=[site]).activations[site])[0, -1] for p in _prompts(ws)])
        np.testing.assert_allclose(got[f"model.{site}"], want, rtol=1e-5, atol=1e-5)
    assert meta["prompts"] == "3" and meta["reduce"] == "none" and meta["read"] == "last" and meta["world_size"] == "1"
    assert f"wrote {path}: model.layers.1 (3, 64), model.layers.3 (3, 64); from 3 prompts" in r.out
    assert "recording" in r.err  # the progress bar


def test_record_mean_sites_and_the_torch_backend(ws, model, capsys):
    from safetensors.numpy import load_file

    d, m = ws["dir"], ws["model"]
    assert main(["record", str(d / "prompts.txt"), "--model", m, "--sites", "layers.2:input", "--read", "mean",
                 "--mean", "--no-progress", "-o", str(d / "mean.safetensors")]) == 0
    want = ms.record_dataset(model, _prompts(ws), sites=["layers.2:input"], read="mean", reduce="mean")
    np.testing.assert_array_equal(load_file(str(d / "mean.safetensors"))["model.layers.2:input"],
                                  want["model.layers.2:input"])
    assert "recording" not in capsys.readouterr().err
    torch_backend = pytest.importorskip("mlx_steer.backends.torch")
    assert main(["--backend", "torch", "record", str(d / "prompts.txt"), "--model", m, "--layers", "2",
                 "--chat", "--no-progress", "-o", str(d / "torch_acts.safetensors")]) == 0
    want = ms.record_dataset(torch_backend.load(m), _prompts(ws), sites=["layers.2"], chat=True)
    np.testing.assert_array_equal(load_file(str(d / "torch_acts.safetensors"))["model.layers.2"], want["model.layers.2"])


@pytest.mark.parametrize("argv, message", [
    (["-o", "{d}/acts.npy"], "acts.npy: record writes a .safetensors file"),
    (["--read", "50"], "read index 50 out of range for a prompt of"),
    (["--system", "Be brief."], "--system"),
    (["--sites", "layers.9", "-o", "{d}/x.safetensors"], "layer 9 out of range for a 4-layer model; valid: -4..3"),
])
def test_record_errors_name_the_value(ws, capsys, argv, message):
    d = ws["dir"]
    args = ["record", str(d / "prompts.txt"), "--model", ws["model"], "--no-progress"]
    args += [a.format(d=d) for a in argv]
    if "--sites" not in argv:
        args += ["--layers", "1"]
    if "-o" not in argv:
        args += ["-o", str(d / "err.safetensors"), "--force"]
    try:
        code = main(args)
    except SystemExit as exc:  # a usage error: argparse's exit
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


# -- generate ----------------------------------------------------------------------------------
def test_generate_prints_unsteered_then_each_strength(runs, ws, model):
    r = runs["generate"].result()
    assert r.rc == 0, r.err
    vec = ms.load_vector(ws["vec"], model=model)
    for prompt in PROMPTS:
        texts = {"unsteered": model.generate(prompt, max_tokens=10)}
        for s in (4.0, -8.0):
            texts[f"{s:+g}"] = model.generate(prompt, max_tokens=10, interventions=vec.to_interventions(scale=s))
        assert texts["+4"] != texts["unsteered"]
        assert _block(prompt, texts) in r.out
    assert "model.layers.1" in r.out and "model.layers.2" in r.out  # the header names the sites


def test_generate_from_pairs_with_sampling_and_chat(ws, model, capsys):
    assert main(["generate", "Tell me a story", "--model", ws["model"], "--positive", POS[0], "--positive", POS[1],
                 "--negative", NEG[0], "--negative", NEG[1], "--layer", "2", "--strength", "6",
                 "--chat", "--temp", "0.9", "--top-k", "40", "--top-p", "0.95", "--min-p", "0.01",
                 "--repetition-penalty", "1.3", "--seed", "3", "--max-tokens", "12"]) == 0
    out = capsys.readouterr().out
    vec = ms.extract(model, POS[:2], NEG[:2], sites=["layers.2"])
    ids = model.encode("Tell me a story", chat=True)
    gen = dict(max_tokens=12, temp=0.9, top_k=40, top_p=0.95, min_p=0.01, repetition_penalty=1.3, seed=3)
    texts = {"unsteered": model.generate(ids, **gen),
             "+6": model.generate(ids, interventions=vec.to_interventions(scale=6.0), **gen)}
    assert _block("Tell me a story", texts) in out
    assert "from 2 positive / 2 negative prompts" in out


# -- sweep -------------------------------------------------------------------------------------
def test_sweep_prints_the_in_process_table(runs, ws, model):
    r = runs["sweep"].result()
    assert r.rc == 0, r.err
    prompts = (ws["dir"] / "prompts.txt").read_text().splitlines()
    want = an.sweep(model, vector=ms.load_vector(ws["vec"], model=model), layers=[1, 2], strengths=[0, 3, -2],
                    prompts=prompts, target_tokens=[" the"], contrast_tokens=[" is", 382], batch_size=2)
    assert want.to_text() in r.out
    assert len({row.behaviour for row in want.table}) > 2  # the table is not all baseline


def test_sweep_png(runs, ws, model):
    r = runs["sweep_png"].result()
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert r.rc == 1 and r.error() == 'error: --png needs matplotlib: pip install matplotlib (or drop --png)'
        return
    assert r.rc == 0, r.err
    vec = ms.extract(model, ["I love"], ["I hate"], sites=["layers.1", "layers.3"])
    want = an.sweep(model, vector=vec, layers=[1, 3], strengths=[0, 2], prompts=list(DEFAULT_PROMPTS),
                    target_tokens=[" the"], contrast_tokens=[" is"])
    assert want.to_text() in r.out
    assert (ws["dir"] / "sweep.png").read_bytes()[:4] == b"\x89PNG"


# -- inspect -----------------------------------------------------------------------------------
def test_inspect_metadata_and_norms(runs, ws):
    r = runs["inspect"].result()
    assert r.rc == 0, r.err
    vec = ms.load_vector(ws["vec"])
    assert f"model_id:       {ws['model']}\n" in r.out and "method:         mean_diff\n" in r.out
    assert "hidden_size:    64\n" in r.out and "read_positions: last\n" in r.out
    for site, norm in vec.norms().items():
        assert re.search(rf"^  {re.escape(site)} +shape \(64,\) +norm {norm:.6g}$", r.out, re.M), r.out


def test_inspect_with_model_lists_top_tokens(runs, ws, model):
    r = runs["inspect_model"].result()
    assert r.rc == 0, r.err
    vec = ms.load_vector(ws["vec"], model=model)
    for site in vec.sites:
        assert f"\n{site}\n{an.top_tokens(model, vec[site], k=3).to_text()}\n" in r.out


def test_inspect_with_the_torch_backend(ws, capsys):
    torch_backend = pytest.importorskip("mlx_steer.backends.torch")
    assert main(["inspect", ws["vec"], "--model", ws["model"], "--backend", "torch", "-k", "2", "--final-norm"]) == 0
    out = capsys.readouterr().out
    tm = torch_backend.load(ws["model"])
    vec = ms.load_vector(ws["vec"], model=tm)
    for site in vec.sites:
        assert an.top_tokens(tm, vec[site], k=2, final_norm=True).to_text() in out


# -- errors ------------------------------------------------------------------------------------
# These two load the model, so they run main() in-process (the script exits with its return value).
def test_unknown_site_gives_the_library_message(ws, model, capsys):
    with pytest.raises(ValueError) as exc:
        model.resolve("layers.9")
    d = ws["dir"]
    assert main(["extract", str(d / "pairs.jsonl"), "--model", ws["model"], "--sites", "layers.9",
                 "-o", str(d / "x.safetensors")]) == 2
    assert capsys.readouterr().err == f"error: {exc.value}\n"


def test_vector_that_does_not_fit_the_model(ws, model, capsys):
    path = ws["dir"] / "mismatch.safetensors"
    with pytest.raises(ValueError) as exc:
        ms.load_vector(path, model=model)
    assert "hidden size: file 32, model 64" in str(exc.value) and "model.layers.7" in str(exc.value)
    for argv in (["generate", "hi", "--vector", str(path)], ["inspect", str(path)],
                 ["sweep", "--vector", str(path), "--target-tokens", "a", "--contrast-tokens", "b"]):
        assert main([*argv, "--model", ws["model"]]) == 2
        assert capsys.readouterr().err.endswith(f"error: {exc.value}\n")


@pytest.mark.parametrize("name, missing", [("missing_pairs", "nope.jsonl"), ("missing_vector", "nope.safetensors"),
                                           ("missing_model", "no-model")])
def test_missing_file(runs, ws, name, missing):
    r = runs[name].result()
    assert r.rc == 2 and r.error() == f"error: no such file: {ws['dir'] / missing}"


def test_bad_jsonl_line(runs, ws):
    r = runs["bad_json"].result()
    assert r.rc == 2
    assert re.fullmatch(rf"error: {re.escape(str(ws['dir'] / 'bad_json.jsonl'))} line 3: invalid JSON \(.+\)", r.error())
    r = runs["bad_key"].result()
    assert r.rc == 2 and r.error() == f"error: {ws['dir'] / 'bad_key.jsonl'} line 2: missing key 'negative'"


def test_pair_file_formats_agree(tmp_path):
    from mlx_steer.cli import read_pairs

    rows = [{"positive": p, "negative": n} for p, n in PAIRS]
    (tmp_path / "a.jsonl").write_text("\n".join(map(json.dumps, rows)))
    (tmp_path / "a.json").write_text(json.dumps(rows, indent=2))
    (tmp_path / "a.csv").write_text("negative,positive\n" + "".join(f"{n},{p}\n" for p, n in PAIRS))
    (tmp_path / "a.tsv").write_text("positive\tnegative\n" + "".join(f"{p}\t{n}\n" for p, n in PAIRS))
    for name in ("a.jsonl", "a.json", "a.csv", "a.tsv"):
        assert read_pairs(str(tmp_path / name)) == (POS, NEG), name


def test_bad_csv_and_text_inputs(ws, capsys):
    d, m = ws["dir"], ws["model"]
    (d / "cols.csv").write_text("pos,negative\na,b\n")
    (d / "cell.csv").write_text("positive,negative\na,b\nc,\n")
    (d / "empty.txt").write_text("\n\n")
    cases = [
        ([str(d / "cols.csv")], f"{d / 'cols.csv'}: missing column 'positive'"),
        ([str(d / "cell.csv")], f"{d / 'cell.csv'} line 3: 'negative' must be a non-empty string, got ''"),
        (["--positive-file", str(d / "empty.txt"), "--negative-file", str(d / "neg.txt")],
         f"{d / 'empty.txt'} has no prompts"),
        (["--positive-file", str(d / "pos.txt"), "--negative-file", str(d / "gone.txt")],
         f"no such file: {d / 'gone.txt'}"),
    ]
    for args, message in cases:
        assert main(["extract", *args, "--model", m, "--layers", "1", "-o", str(d / "x.safetensors")]) == 2
        assert capsys.readouterr().err.startswith(f"error: {message}")
    assert not (d / "x.safetensors").exists()


def test_usage_errors_keep_argparse_exit_code(runs, ws, capsys):
    r = runs["no_sites"].result()
    assert r.rc == 2 and "usage: mlx-steer extract" in r.err
    assert "one of the arguments --sites --layers is required" in r.err
    r = runs["no_command"].result()
    assert r.rc == 2 and "usage: mlx-steer" in r.err
    # a steering source is required, and the two kinds exclude each other
    for extra in ([], ["--vector", ws["vec"], "--positive", "a", "--negative", "b"]):
        with pytest.raises(SystemExit) as exc:
            main(["generate", "hi", "--model", ws["model"], *extra])
        assert exc.value.code == 2
    assert "usage: mlx-steer generate" in capsys.readouterr().err


# -- help --------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["extract", "record", "generate", "sweep", "inspect", "calibrate"])
def test_help_has_examples(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0
    assert f"usage: mlx-steer {command}" in out and "examples:" in out and f"mlx-steer {command} " in out
    assert "--backend" in out


def test_demo_help(runs):
    r = runs["demo_help"].result()
    assert r.rc == 0, r.err
    assert "usage: mlx-steer demo" in r.out and "--max-tokens" in r.out and "--strengths" in r.out
    assert "examples:" in r.out


def test_export_bakes_the_vector_and_the_ablation_the_library_applies(ws, model, tmp_path, capsys):
    """``mlx-steer export`` writes what ``model.export`` writes: loaded by plain mlx-lm it gives the
    logits of the model steered in-process by the same vector and ablation."""
    import mlx.core as mx
    from mlx_lm import load as mlx_load

    from mlx_steer.export import directional_ablation

    vec = ms.load_vector(ws["vec"], model=model)
    one = ms.SteeringVector({"model.layers.2": vec.directions["model.layers.2"]})
    ms.save_vector(one, tmp_path / "dir.safetensors")
    out = tmp_path / "edited"
    assert main(["export", "--model", ws["model"], "--vector", ws["vec"], "--scale", "2.5",
                 "--ablate", str(tmp_path / "dir.safetensors"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "ablating: the direction at model.layers.2 from 9 residual writes" in printed and str(out) in printed
    spec = {k: [v] for k, v in vec.to_interventions(scale=2.5).items()}
    for k, v in directional_ablation(model, one.directions["model.layers.2"]).items():
        spec.setdefault(k, []).append(v)
    tokens = model.encode("I love this wonderful day")
    want = np.array(model.run([tokens], interventions=spec).logits)[0]
    plain, _ = mlx_load(str(out))
    got = np.array(plain(mx.array([tokens]))[0])
    assert np.linalg.norm(got - want) <= 1e-5 * np.linalg.norm(want)
    record = json.loads((out / "mlx_steer_edit.json").read_text())
    assert record["note"]["ablate_site"] == "model.layers.2" and record["note"]["scale"] == "2.5"


@pytest.mark.parametrize("argv,message", [
    ([], "give --vector FILE --scale S, --ablate FILE, or both"),
    (["--vector", "VEC"], "--vector needs --scale S"),
    (["--ablate", "VEC"], "has 2 sites (model.layers.1, model.layers.2); pick the direction's with --ablate-layer N"),
    (["--vector", "VEC", "--scale", "1", "--out", "EXISTING"], "already exists; pass overwrite=True (--overwrite)"),
])
def test_export_user_errors(ws, tmp_path, capsys, argv, message):
    (tmp_path / "existing").mkdir()
    args = [a.replace("VEC", ws["vec"]).replace("EXISTING", str(tmp_path / "existing")) for a in argv]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    try:
        rc = main(["export", "--model", ws["model"], *args])
    except SystemExit as exc:  # argparse's own usage errors exit from inside the parser
        rc = exc.code
    assert rc == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
