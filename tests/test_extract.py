"""Extraction on tiny models: batched equals one prompt at a time, and each method equals its oracle."""

import numpy as np
import pytest

import mlx_steer as ms
from mlx_steer.extraction import methods

POS = ["I love this wonderful day", "happy people walk in the sun", "This is great", "I love the sun and the rain"]
NEG = ["I hate the rain", "This is terrible, awful and sad news", "sad news", "I hate this terrible day"]
SITES = ["layers.1", "layers.2"]


def per_prompt(m, prompts, site, read, **enc):
    rows = []
    for p in prompts:
        acts = np.array(m.run(m.encode(p, **enc), record=[site]).activations[site])[0]
        rows.append({"last": acts[-1], "mean": acts.mean(0)}.get(read, acts[read] if isinstance(read, int) else None))
    return np.stack(rows)


@pytest.mark.parametrize("read", ["last", "mean", 1])
@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_mean_diff_batched_equals_one_by_one(shared_models, arch, read):
    m = shared_models(arch)
    vec = ms.extract(m, POS, NEG, sites=SITES, read=read, batch_size=3)
    for site in SITES:
        expected = per_prompt(m, POS, site, read).mean(0) - per_prompt(m, NEG, site, read).mean(0)
        np.testing.assert_allclose(vec[m.resolve_path(site)], expected, atol=2e-5)
    assert vec.method == "mean_diff" and vec.hidden_size == m.hidden_size and vec.hook_point == "output"


@pytest.mark.parametrize("method", ["pca", "probe"])
def test_pca_and_probe_use_the_recorded_activations(shared_models, method):
    m = shared_models("qwen2")
    vec = ms.extract(m, POS, NEG, sites=["layers.2:input"], method=method, batch_size=2)
    a, b = per_prompt(m, POS, "layers.2:input", "last"), per_prompt(m, NEG, "layers.2:input", "last")
    expected = methods.pca_direction(a, b) if method == "pca" else methods.logistic_probe(a, b).direction
    got = vec["model.layers.2"]
    assert float(got @ expected / np.linalg.norm(got) / np.linalg.norm(expected)) > 0.9999
    assert vec.hook_point == "input"


def test_chat_reads(shared_models):
    m = shared_models("llama")
    vec = ms.extract(m, POS[:2], NEG[:2], sites=["layers.1"], chat=True, assistant_prefix=" (A", read="assistant_start")
    rows = []
    for p in POS[:2] + NEG[:2]:
        full = m.encode(p, chat=True, assistant_prefix=" (A")
        start = len(m.encode(p, chat=True))
        rows.append(np.array(m.run([full], record=["layers.1"]).activations["layers.1"])[0, start])
    rows = np.stack(rows)
    np.testing.assert_allclose(vec["model.layers.1"], rows[:2].mean(0) - rows[2:].mean(0), atol=2e-5)


def test_actadd_pair_is_front_aligned_and_space_padded(shared_models):
    m = shared_models("llama")
    vec = ms.extract(m, ["I love"], ["I hate this terrible day"], sites=["layers.1:input"], method="actadd")
    delta = vec["model.layers.1"]
    a, b = m.encode("I love"), m.encode("I hate this terrible day")
    space = m.encode(" ")[-1]
    a = a + [space] * (len(b) - len(a))
    ra = np.array(m.run([a], record=["layers.1:input"]).activations["layers.1:input"])[0]
    rb = np.array(m.run([b], record=["layers.1:input"]).activations["layers.1:input"])[0]
    assert delta.shape == (len(b), m.hidden_size)
    np.testing.assert_allclose(delta, ra - rb, atol=1e-5)
    # it applies as a front-aligned tensor
    spec = vec.to_interventions(scale=1.0)
    assert spec["model.layers.1:input"].front_aligned


def test_extract_errors(shared_models):
    m = shared_models("llama")
    with pytest.raises(ValueError, match="unknown method 'caa'; valid: mean_diff, pca, probe, actadd"):
        ms.extract(m, POS, NEG, sites=SITES, method="caa")
    with pytest.raises(ValueError, match="needs paired prompts"):
        ms.extract(m, POS, NEG[:2], sites=SITES, method="pca")
    with pytest.raises(ValueError, match="mix hook points"):
        ms.extract(m, POS, NEG, sites=["layers.1", "layers.2:input"])
    with pytest.raises(ValueError, match="unknown site path"):
        ms.extract(m, POS, NEG, sites=["layers.1.mpl"])
    with pytest.raises(ValueError, match="need positive and negative prompts"):
        ms.extract(m, [], NEG, sites=SITES)
