"""Per-head activation and attribution patching (``sites="heads"``): each head cell equals a solo run
of the corrupted prompt with a hand-built ``set`` at the output projection's input (the corrupted
run's vector there with the head's slice replaced by the clean run's); each attribution cell equals
(clean - corrupted) · grad over the head's slice, by hand from mlx_steer.gradients; the attribution
cells of a layer's heads sum to the whole site's; patching every head of a layer at once equals
patching the whole projection input; both backends."""

from __future__ import annotations

import numpy as np
import pytest
from tiny_models import HEADS, HIDDEN, LAYERS
from torch_fixtures import *  # noqa: F403
from torch_fixtures import BACKENDS, assert_untouched, snapshot

import mlx_steer as ms
from mlx_steer import interventions as iv
from mlx_steer.cli import main
from mlx_steer.heads import head_z_site
from mlx_steer.patching import activation_patching, attribution_patching, patch, patch_sites
from mlx_steer.patching.activation import cell_interventions
from mlx_steer.patching.sweep import prepare

CLEAN, CORRUPTED = "Paris is the capital", "Berlin is in the sun"
TARGET, FOIL = 5, 7
D_HEAD = HIDDEN // HEADS


def _pair(m) -> tuple[list[int], list[int]]:
    c, r = m.encode(CLEAN), m.encode(CORRUPTED)
    n = min(len(c), len(r))
    return c[:n], r[:n]


def _diff(m, prompt, interventions=None) -> float:
    logits = m.to_numpy(m.run([prompt], interventions=interventions).logits)[0]
    return float(logits[-1, TARGET] - logits[-1, FOIL])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arch", ["llama", "gpt2", "phi3"])
def test_each_head_cell_equals_a_solo_run_writing_the_clean_slice(backend_models, backend, arch):
    m = backend_models(backend, arch)
    clean, corrupted = _pair(m)
    before = snapshot(m)
    last = len(corrupted) - 1
    table = activation_patching(m, clean, corrupted, ms.logit_diff(TARGET, FOIL), sites="heads",
                                positions=[1, last], batch_size=8)
    assert_untouched(m, before)
    assert len(table.rows) == LAYERS * HEADS * 2
    sites = [head_z_site(m, i) for i in range(LAYERS)]
    rec_clean = m.run([clean], record=sites).activations
    rec_corr = m.run([corrupted], record=sites).activations
    for layer, site in enumerate(sites):
        c, r = m.to_numpy(rec_clean[site])[0], m.to_numpy(rec_corr[site])[0]
        for h in range(HEADS):
            cols = slice(h * D_HEAD, (h + 1) * D_HEAD)
            for p in (1, last):
                hybrid = r[p].copy()
                hybrid[cols] = c[p, cols]  # the oracle: the corrupted vector, this head's slice the clean one
                want = _diff(m, corrupted, {site: iv.set(hybrid, positions=[p])})
                assert table.cell(f"L{layer}H{h}", p).metric == pytest.approx(want, abs=1e-5), (layer, h, p)
    grid = table.heads_grid("activation", last, "metric")
    assert grid.shape == (LAYERS, HEADS)
    assert grid[2, 1] == table.cell("L2H1", last).metric


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_head_attribution_is_the_slice_of_gradient_dot_delta(backend_models, backend, arch):
    m = backend_models(backend, arch)
    clean, corrupted = _pair(m)
    metric = ms.logit_diff(TARGET, FOIL)
    heads = attribution_patching(m, clean, corrupted, metric, sites="heads")
    sites = [head_z_site(m, i) for i in range(LAYERS)]
    whole = attribution_patching(m, clean, corrupted, metric, sites=sites)
    g = ms.gradients(m, [corrupted], metric, sites=sites)
    rec_clean = m.run([clean], record=sites).activations
    base = heads.corrupted_metric
    for layer, site in enumerate(sites):
        delta = m.to_numpy(rec_clean[site])[0].astype(np.float64) - np.asarray(g.activations[site][0], np.float64)
        grad = np.asarray(g.gradients[site][0], np.float64)
        for p in range(len(corrupted)):
            per_head = []
            for h in range(HEADS):
                cols = slice(h * D_HEAD, (h + 1) * D_HEAD)
                want = float(delta[p, cols] @ grad[p, cols])  # by hand
                got = heads.cell(f"L{layer}H{h}", p, "attribution").metric - base
                assert got == pytest.approx(want, abs=1e-5 * max(1.0, abs(want))), (layer, h, p)
                per_head.append(got)
            # the heads' estimates add up to the whole projection input's
            full = whole.cell(site, p, "attribution").metric - base
            assert sum(per_head) == pytest.approx(full, abs=1e-5 * max(1.0, abs(full)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_head_attribution_follows_finite_differences(backend_models, backend):
    """The estimate of a head cell is the metric's slope along (clean - corrupted) over the head's
    slice: a central finite difference of real runs with a small step of that change added."""
    m = backend_models(backend, "llama")
    clean, corrupted = _pair(m)
    table = attribution_patching(m, clean, corrupted, ms.logit_diff(TARGET, FOIL), sites="heads",
                                 positions=[len(corrupted) - 1])
    p, layer, h = len(corrupted) - 1, 2, 3
    site = head_z_site(m, layer)
    c = m.to_numpy(m.run([clean], record=[site]).activations[site])[0, p]
    r = m.to_numpy(m.run([corrupted], record=[site]).activations[site])[0, p]
    step = np.zeros_like(c)
    cols = slice(h * D_HEAD, (h + 1) * D_HEAD)
    step[cols] = c[cols] - r[cols]
    eps = 1e-2
    up = _diff(m, corrupted, {site: iv.add_vector(step, scale=eps, positions=[p])})
    down = _diff(m, corrupted, {site: iv.add_vector(step, scale=-eps, positions=[p])})
    slope = (up - down) / (2 * eps)
    got = table.cell(f"L{layer}H{h}", p, "attribution").metric - table.corrupted_metric
    assert got == pytest.approx(slope, abs=1e-3 * max(1.0, abs(slope)))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_every_head_of_a_layer_at_once_equals_patching_the_whole_projection_input(backend_models, backend, arch):
    m = backend_models(backend, arch)
    clean, corrupted = _pair(m)
    metric = ms.logit_diff(TARGET, FOIL)
    layer, p = 1, 2
    site = head_z_site(m, layer)
    whole = activation_patching(m, clean, corrupted, metric, sites=[site], positions=[p]).cell(site, p).metric
    sweep = prepare(m, clean, corrupted, metric, sites="heads", positions=[p], aligned=None, chat=False)
    steer: list = []
    for cell in sweep.cells:
        if cell.site.layer == layer:
            steer += cell_interventions(sweep, cell)[site]
    assert len(steer) == 2 * HEADS
    assert _diff(m, corrupted, {site: steer}) == pytest.approx(whole, abs=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_heads_with_both_methods_and_the_heatmap(backend_models, backend, tmp_path):
    m = backend_models(backend, "qwen2")
    clean, corrupted = _pair(m)
    table = patch(m, clean, corrupted, target=TARGET, foil=FOIL, sites=["heads", "resid"], positions="all")
    assert {r.label for r in table.rows} >= {f"L{i}H{h}" for i in range(LAYERS) for h in range(HEADS)}
    assert table.heads_grid("attribution", None).shape == (LAYERS, HEADS)
    fig = table.heads_heatmap("activation", None, tmp_path / "heads.png")
    assert (tmp_path / "heads.png").stat().st_size > 0 and fig.axes
    labels = [s.label for s in patch_sites(m, "heads")]
    assert labels[:2] == ["L0H0", "L0H1"] and len(labels) == LAYERS * HEADS
    with pytest.raises(ValueError, match=r"no head cells \(activation, position 3\); patch with sites='heads'"):
        table.heads_grid("activation", 3)


def test_cli_patch_with_sites_heads(tiny_dir, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["patch", "--model", str(tiny_dir("llama")), "--clean", "Paris is the", "--corrupted", "Berlin is in",
            "--target", " the", "--foil", " is", "--sites", "heads", "--positions", "all", "-o", str(out)]
    assert main(argv) == 0
    assert "L3H3" in capsys.readouterr().out
    rows = (out / "patching.csv").read_text().splitlines()
    assert len(rows) == 1 + LAYERS * HEADS and rows[1].split(",")[2] == "L0H0"


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_smollm2_head_cells_equal_solo_runs(smollm2, smollm2_torch, backend):
    """Two heads of SmolLM2 (every position patched at once) against the hand-built ``set`` oracle."""
    m = smollm2 if backend == "mlx" else smollm2_torch
    clean, corrupted = "The Eiffel Tower is in the city of", "The Colosseum is in the city of"
    table = patch(m, clean, corrupted, target=" Paris", foil=" Rome", sites="heads", positions="all",
                  method="activation")
    paris, rome = m.encode(" Paris")[-1], m.encode(" Rome")[-1]
    for layer, h in ((23, 4), (3, 4)):
        site = head_z_site(m, layer)
        c = m.to_numpy(m.run([clean], record=[site]).activations[site])[0]
        hybrid = m.to_numpy(m.run([corrupted], record=[site]).activations[site])[0]
        d = c.shape[1] // 9
        hybrid[:, h * d:(h + 1) * d] = c[:, h * d:(h + 1) * d]
        steer = {site: [iv.set(hybrid[p], positions=[p]) for p in range(len(hybrid))]}
        logits = m.to_numpy(m.run([corrupted], interventions=steer).logits)[0, -1]
        want = float(logits[paris] - logits[rome])
        assert table.cell(f"L{layer}H{h}", None).metric == pytest.approx(want, abs=1e-4)
