"""``extract`` says how large a vector is next to the stream it was read from: per site, the vector's
norm over the mean norm of the activations it was computed from, and a hint when that is too small to
steer. Checked against a hand computation: each prompt run alone, its activation read by hand."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from mlx_steer.cli import main
from mlx_steer.cli.extract import WEAK_RATIO, strength_report
from mlx_steer.extraction.directions import extract, extract_with_norms

POS = ["I love this wonderful day", "happy people walk in the sun", "This is great news"]
NEG = ["I hate this terrible day", "sad people walk in the rain", "This is awful news"]
SITES = ["layers.1", "layers.2"]


def _model(backend, tiny_dir, shared_models):
    if backend == "mlx":
        return shared_models("llama")
    return pytest.importorskip("mlx_steer.backends.torch").load(str(tiny_dir("llama")))


def _by_hand(model, read: str) -> tuple[dict[str, float], dict[str, float]]:
    """Per path (vector norm, mean norm of the read rows): each prompt alone, read by hand, float64."""
    rows: dict[str, list[np.ndarray]] = {}
    for prompt in POS + NEG:
        tr = model.run(prompt, record=SITES, logits=False)
        for site in SITES:
            acts = model.to_numpy(tr.activations[site])[0].astype(np.float64)  # (L, D), no padding
            rows.setdefault(model.resolve(site).path, []).append(acts[-1] if read == "last" else acts.mean(0))
    vector, read_norm = {}, {}
    for path, r in rows.items():
        a = np.stack(r)
        vector[path] = float(np.linalg.norm(a[: len(POS)].mean(0) - a[len(POS):].mean(0)))
        read_norm[path] = float(np.linalg.norm(a, axis=-1).mean())
    return vector, read_norm


@pytest.mark.parametrize("backend", ["mlx", "torch"])
@pytest.mark.parametrize("read", ["last", "mean"])
def test_library_read_norms_equal_a_hand_computation(backend, read, tiny_dir, shared_models):
    model = _model(backend, tiny_dir, shared_models)
    vec, read_norms = extract_with_norms(model, POS, NEG, sites=SITES, read=read, batch_size=2)
    assert vec == extract(model, POS, NEG, sites=SITES, read=read, batch_size=2)
    vector, read_norm = _by_hand(model, read)
    assert list(read_norms) == list(read_norm)
    for path in read_norm:
        assert read_norms[path] == pytest.approx(read_norm[path], rel=1e-4)
        assert vec.norms()[path] == pytest.approx(vector[path], rel=1e-3)


def test_actadd_has_no_read_norms(shared_models):
    _, read_norms = extract_with_norms(shared_models("llama"), ["Love"], ["Hate"], sites=["layers.1"], method="actadd")
    assert read_norms is None


@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_cli_prints_each_sites_ratio(backend, tmp_path, tiny_dir, shared_models, capsys):
    model = _model(backend, tiny_dir, shared_models)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"positive": p, "negative": n}) + "\n" for p, n in zip(POS, NEG)))
    argv = ["extract", str(pairs), "--model", str(tiny_dir("llama")), "--layers", "1", "2", "--read", "mean",
            "--batch-size", "2", "--no-progress", "-o", str(tmp_path / "v.safetensors")]
    assert main((["--backend", "torch"] if backend == "torch" else []) + argv) == 0
    out = capsys.readouterr().out
    vector, read_norm = _by_hand(model, "mean")
    assert "vector / their mean norm" in out, out
    for path in read_norm:
        m = re.search(rf"^  {re.escape(path)} +(\S+)  \((\S+) / (\S+)\)$", out, re.M)
        assert m is not None, out
        ratio, shown_vector, shown_read = map(float, m.groups())
        assert ratio == pytest.approx(vector[path] / read_norm[path], rel=5e-3), out
        assert (shown_vector, shown_read) == (pytest.approx(vector[path], rel=1e-3), pytest.approx(read_norm[path], rel=1e-3))


def test_the_hint_names_weak_sites_and_what_to_try():
    lines = strength_report({"model.layers.1": 1.0, "model.layers.2": 10.0},
                            {"model.layers.1": 40.0, "model.layers.2": 40.0}, read="last")
    assert lines[1:3] == ["  model.layers.1  0.025  (1 / 40)", "  model.layers.2  0.25  (10 / 40)"]
    assert lines[3].startswith("hint: likely too weak at model.layers.1: under 0.05 of the stream's norm")
    assert "try --read mean, more or sharper pairs" in lines[3] and "model.layers.2" not in lines[3]
    read_mean = strength_report({"s": 1.0}, {"s": 40.0}, read="mean")
    assert "--read mean" not in read_mean[-1] and read_mean[-1].startswith("hint:")
    assert not any(line.startswith("hint") for line in strength_report({"s": WEAK_RATIO * 40.0}, {"s": 40.0}, read="last"))
    assert strength_report({"s": 1.0}, None, read="last") == []


def test_extract_help_leads_with_read_mean(capsys):
    with pytest.raises(SystemExit):
        main(["extract", "--help"])
    out = capsys.readouterr().out
    first_example = next(line for line in out.splitlines() if line.strip().startswith("mlx-steer extract"))
    following = out.split(first_example + "\n", 1)[1].splitlines()[0]  # its continuation line
    assert "--read mean" in first_example + following, out
