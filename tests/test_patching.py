"""Activation and attribution patching (mlx_steer.patching) and ``mlx-steer patch``: every cell against a
solo run of the corrupted prompt with that one ``set`` (fp32 1e-5), batched against one cell per forward,
the residual stream's full patch recovering everything, a hand computation of the fraction, attribution
against (clean - corrupted) · grad from mlx_steer.gradients, MLX against torch, and the refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
from torch_fixtures import *  # noqa: F403
from torch_fixtures import BACKENDS, assert_untouched, raw_logits, snapshot

import mlx_steer as ms
from mlx_steer import interventions as iv
from mlx_steer.cli import main
from mlx_steer.patching import activation_patching, attribution_patching, patch, patch_sites

CLEAN, CORRUPTED = "Paris is the capital", "Berlin is in the sun"
TARGET, FOIL = 5, 7


def _pair(m) -> tuple[list[int], list[int]]:
    c, r = m.encode(CLEAN), m.encode(CORRUPTED)
    n = min(len(c), len(r))
    return c[:n], r[:n]


def _diff(logits: np.ndarray) -> float:
    return float(logits[-1, TARGET] - logits[-1, FOIL])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma2"])
def test_every_cell_equals_a_solo_run_with_its_set(backend_models, backend, arch):
    m = backend_models(backend, arch)
    clean, corrupted = _pair(m)
    table = activation_patching(m, clean, corrupted, ms.logit_diff(TARGET, FOIL), sites=["resid", "attn", "mlp"],
                                batch_size=16)
    sites = patch_sites(m, ["resid", "attn", "mlp"])
    assert len(table.rows) == len(sites) * len(corrupted)
    # the oracle: the clean value recorded by run, set by a solo run; the unpatched metrics from the bare model
    recorded = m.run([clean], record=[s.key for s in sites]).activations
    assert table.clean_metric == pytest.approx(_diff(raw_logits(m, clean)[0]), abs=1e-5)
    assert table.corrupted_metric == pytest.approx(_diff(raw_logits(m, corrupted)[0]), abs=1e-5)
    for s in sites:
        value = m.to_numpy(recorded[s.key])[0]
        for p in range(len(corrupted)):
            solo = m.to_numpy(m.run([corrupted], interventions={s.key: iv.set(value[p], positions=[p])}).logits)[0]
            row = table.cell(s.label, p)
            assert row.metric == pytest.approx(_diff(solo), abs=1e-5), (s.label, p)
            # the fraction by hand
            gap = table.clean_metric - table.corrupted_metric
            want = (_diff(solo) - table.corrupted_metric) / gap
            assert row.fraction == pytest.approx(want, abs=2e-5 / abs(gap))  # the metric's 1e-5, divided by the gap
            assert row.token == m.prompts.decode([corrupted[p]])


@pytest.mark.parametrize("backend", BACKENDS)
def test_batched_equals_one_cell_per_forward(backend_models, backend):
    m = backend_models(backend, "llama")
    clean, corrupted = _pair(m)
    metric = ms.logit_diff(TARGET, FOIL)
    batched = activation_patching(m, clean, corrupted, metric, sites="resid")
    alone = activation_patching(m, clean, corrupted, metric, sites="resid", batch_size=1)
    np.testing.assert_allclose(batched.grid("activation", "metric"), alone.grid("activation", "metric"), atol=1e-5)
    assert batched.corrupted_metric == pytest.approx(alone.corrupted_metric, abs=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_patching_the_whole_residual_stream_recovers_everything(backend_models, backend):
    m = backend_models(backend, "qwen2")
    clean, corrupted = _pair(m)
    table = activation_patching(m, clean, corrupted, ms.logit_diff(TARGET, FOIL), positions="all")
    assert table.positions == [None]
    np.testing.assert_allclose(table.grid()[:, 0], 1.0, atol=1e-5)  # every layer: the clean run downstream
    each = activation_patching(m, clean, corrupted, ms.logit_diff(TARGET, FOIL))
    assert each.cell(f"resid {m.num_layers - 1}", len(corrupted) - 1).fraction == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(each.grid()[-1, :-1], 0.0, atol=1e-5)  # the last layer elsewhere: nothing


def test_tiling_covers_every_cell_once_and_minimizes_its_cost():
    """Free forwards: each (position, layer) alone, the least work by hand; costly forwards: one tile
    from the lowest position and layer; in between every cell once, in tiles of at most max_rows."""
    from mlx_steer.patching.tiling import Costs, tile

    spans = [(p, l) for l in range(6) for p in range(5)]
    free = tile(spans, length=5, layers=6, max_rows=64, costs=Costs(forward=0, layer=0))
    assert sorted((t.start, t.layer) for t in free) == sorted(spans)
    assert all(spans[i] == (t.start, t.layer) for t in free for i in t.cells)
    costly = tile(spans, length=5, layers=6, max_rows=64, costs=Costs(forward=1e9, layer=0))
    assert [(t.start, t.layer, sorted(t.cells)) for t in costly] == [(0, 0, list(range(len(spans))))]
    mid = tile(spans, length=5, layers=6, max_rows=7)
    assert sorted(i for t in mid for i in t.cells) == list(range(len(spans)))
    assert all(spans[i][0] >= t.start and spans[i][1] >= t.layer for t in mid for i in t.cells)
    with pytest.raises(ValueError, match=r"span \(5, 0\) outside.*positions 0..4"):
        tile([(5, 0)], length=5, layers=6, max_rows=4)


def _spy_prefix_runs(monkeypatch) -> list[tuple[int, int | None]]:
    """(prefix length, from_layer) of every shared-prefix forward call the sweep makes."""
    from mlx_steer.engine.shared_prefix import SharedPrefix

    seen: list[tuple[int, int | None]] = []
    real = SharedPrefix.run

    def spy(self, suffixes, **kw):
        seen.append((int(self.lengths[kw["prefix_of"][0]]), kw.get("from_layer")))
        return real(self, suffixes, **kw)

    monkeypatch.setattr(SharedPrefix, "run", spy)
    return seen


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2", "gemma2"])
def test_cells_from_shared_prefixes_equal_solo_runs(backend_models, backend, arch, monkeypatch):
    """With the metric on the last position (target/foil), forwards start after a cached prefix of the
    corrupted prompt and at a layer above 0 (gemma2's cache cannot be shared: whole prompts)."""
    m = backend_models(backend, arch)
    clean, corrupted = _pair(m)
    seen = _spy_prefix_runs(monkeypatch)
    table = patch(m, clean, corrupted, target=TARGET, foil=FOIL, sites=["resid", "attn"], method="activation",
                  batch_size=8)
    assert table.corrupted_metric == pytest.approx(_diff(raw_logits(m, corrupted)[0]), abs=1e-5)
    if arch != "gemma2":
        assert any(p > 0 for p, _ in seen) and any(f for _, f in seen)
    recorded = m.run([clean], record=[s.key for s in patch_sites(m, ["resid", "attn"])]).activations
    for s in patch_sites(m, ["resid", "attn"]):
        value = m.to_numpy(recorded[s.key])[0]
        for p in range(len(corrupted)):
            solo = m.to_numpy(m.run([corrupted], interventions={s.key: iv.set(value[p], positions=[p])}).logits)[0]
            assert table.cell(s.label, p).metric == pytest.approx(_diff(solo), abs=1e-5), (s.label, p)
    alone = patch(m, clean, corrupted, target=TARGET, foil=FOIL, sites=["resid", "attn"], method="activation",
                  batch_size=1)
    np.testing.assert_allclose(table.grid("activation", "metric"), alone.grid("activation", "metric"), atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_metric_read_mid_prompt_starts_no_later_than_it(backend_models, backend, monkeypatch):
    """The metric reads position 2: cells after it change nothing (the corrupted metric exactly, an
    oracle that needs no run) and every forward's prefix ends at or before it."""
    from mlx_steer.engine.gradients import logit_diff
    from mlx_steer.patching.activation import activation_rows
    from mlx_steer.patching.sweep import prepare

    m = backend_models(backend, "llama")
    clean, corrupted = _pair(m)
    metric = logit_diff(TARGET, FOIL)
    sweep = prepare(m, clean, corrupted, metric, sites="resid", positions="each", aligned=None, chat=False, logits=[2])
    seen = _spy_prefix_runs(monkeypatch)
    value, rows = activation_rows(m, sweep, metric, batch_size=2, logits=[2])  # many forwards: prefixes pay
    assert seen and all(p <= 2 for p, _ in seen)
    recorded = m.to_numpy(m.run([clean], record=["layers.1"]).activations["layers.1"])[0]
    for row in rows:
        if row.position > 2:
            assert row.metric == pytest.approx(value, abs=1e-5)
    for p in range(3):
        solo = m.to_numpy(m.run([corrupted], interventions={"layers.1": iv.set(recorded[p], positions=[p])}).logits)[0]
        got = next(r for r in rows if r.site.endswith("layers.1") and r.position == p)
        assert got.metric == pytest.approx(float(solo[2, TARGET] - solo[2, FOIL]), abs=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("positions", ["each", "all"])
def test_attribution_equals_clean_minus_corrupted_dot_grad(backend_models, backend, positions):
    m = backend_models(backend, "llama")
    clean, corrupted = _pair(m)
    metric = ms.logit_diff(TARGET, FOIL)
    table = attribution_patching(m, clean, corrupted, metric, sites=["resid", "layers.1.mlp"], positions=positions)
    keys = [s.key for s in patch_sites(m, ["resid", "layers.1.mlp"])]
    g = ms.gradients(m, [corrupted], metric, sites=keys)
    rec = m.run([clean], record=keys).activations
    for key in keys:
        delta = (m.to_numpy(rec[key])[0] - g.activations[key][0]).astype(np.float64)
        per_position = (delta * g.gradients[key][0]).sum(-1)
        label = next(r.label for r in table.rows if r.site == key)
        for p in ([None] if positions == "all" else range(len(corrupted))):
            effect = per_position.sum() if p is None else per_position[p]
            row = table.cell(label, p, "attribution")
            assert row.metric == pytest.approx(float(g.metric[0]) + effect, abs=1e-5)


def test_mlx_and_torch_tables_agree(backend_models):
    tables = []
    for backend in BACKENDS:
        m = backend_models(backend, "gpt2")
        clean, corrupted = _pair(m)
        tables.append(patch(m, clean, corrupted, target=TARGET, foil=FOIL, sites=["resid", "attn"], method="both"))
    a, b = tables
    for method in ("activation", "attribution"):
        np.testing.assert_allclose(a.grid(method, "metric"), b.grid(method, "metric"), atol=1e-4)
    assert a.correlation == pytest.approx(b.correlation, abs=1e-4)
    assert -1.0 <= a.correlation <= 1.0


def test_aligned_positions_patch_prompts_of_different_lengths(backend_models):
    m = backend_models("mlx", "llama")
    clean, corrupted = m.encode(CLEAN), m.encode(CORRUPTED)
    assert len(clean) != len(corrupted)
    aligned = [(len(clean) - 1, len(corrupted) - 1), (0, 0)]
    table = activation_patching(m, clean, corrupted, ms.logit_diff(TARGET, FOIL), aligned=aligned)
    assert table.positions == [0, len(corrupted) - 1]
    value = m.to_numpy(m.run([clean], record=["layers.2"]).activations["layers.2"])[0, -1]
    solo = m.to_numpy(m.run([corrupted], interventions={"layers.2": iv.set(value, positions=[len(corrupted) - 1])}).logits)[0]
    assert table.cell("resid 2", len(corrupted) - 1).metric == pytest.approx(_diff(solo), abs=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", ["lengths", "metric_shape", "non_finite", "unknown_site", "component",
                                  "positions", "target"])
def test_bad_input_is_refused_and_the_model_untouched(fresh_models, backend, case):
    m = fresh_models(backend, "llama")
    clean, corrupted = _pair(m)
    before = snapshot(m)
    kwargs: dict = {"target": TARGET, "foil": FOIL, "method": "both"}
    if case == "lengths":
        clean, corrupted = m.encode(CLEAN), m.encode(CORRUPTED)
        expected = rf"clean prompt has {len(clean)} tokens and the corrupted one {len(corrupted)}.*aligned"
    elif case == "metric_shape":
        kwargs = {"metric": lambda logits: logits[:, -1], "method": "activation"}
        expected = r"one value per row \(1,\).*shape \(1, \d+\)"
    elif case == "non_finite":
        kwargs = {"metric": lambda logits: logits[:, -1, 0] * float("nan")}
        expected = "not finite"
    elif case == "unknown_site":
        kwargs["sites"] = ["layers.1.nonexistent"]
        expected = "nonexistent"
    elif case == "component":
        kwargs["sites"] = "layers"  # torch: the decoder layers' container, which never runs; MLX: a list, no module
        expected = r"\['model.layers'\] do not run in a forward" if backend == "torch" else "unknown site path 'layers'"
    elif case == "positions":
        kwargs["positions"] = [99]
        expected = r"positions \[99\].*valid"
    else:
        kwargs["target"] = " Paris is"
        expected = "target ' Paris is' is \\d+ tokens"
    with pytest.raises(ValueError, match=expected):
        patch(m, clean, corrupted, **kwargs)
    assert_untouched(m, before)


def test_table_outputs(backend_models, tmp_path):
    m = backend_models("mlx", "llama")
    clean, corrupted = _pair(m)
    table = patch(m, clean, corrupted, target=TARGET, foil=FOIL, sites="mlp", method="both")
    doc = json.loads(table.to_json(tmp_path / "t.json"))
    assert len(doc["rows"]) == 2 * m.num_layers * len(corrupted) and doc["correlation"] == pytest.approx(table.correlation)
    assert table.to_csv(tmp_path / "t.csv").splitlines()[0] == "method,site,label,position,token,metric,fraction"
    text = table.to_text()
    assert "activation patching" in text and "attribution patching" in text and "Pearson r" in text
    table.heatmap("attribution", tmp_path / "h.png")
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_patch_writes_table_and_heatmaps(tiny_dir, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["patch", "--model", str(tiny_dir("llama")), "--clean", "Paris is the", "--corrupted", "Berlin is in",
            "--target", " the", "--foil", " is", "--method", "both", "--sites", "resid", "layers.1.mlp", "-o", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "activation patching" in printed and "Pearson r" in printed
    assert sorted(p.name for p in out.iterdir()) == ["activation.png", "attribution.png", "patching.csv", "patching.json"]
    assert main([*argv[:-2], "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["clean_metric"] == pytest.approx(
        json.loads((out / "patching.json").read_text())["clean_metric"])


@pytest.mark.parametrize("extra, message", [
    (["--corrupted", "Berlin"], "clean prompt has"),
    (["--sites", "layers.9"], "layer 9 out of range"),
    (["--target", " Paris is"], "target ' Paris is' is"),
])
def test_cli_user_errors_exit_2(tiny_dir, capsys, extra, message):
    argv = ["patch", "--model", str(tiny_dir("llama")), "--clean", "Paris is the", "--corrupted", "Berlin is in",
            "--target", " the", "--foil", " is", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err and err.count("\n") == 1, err
