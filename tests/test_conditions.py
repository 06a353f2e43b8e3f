"""Conditional steering (CAST): a gated intervention acts on a row only where its prompt passes the
condition. Oracles: rows whose condition holds equal the unconditionally steered solo run, rows where
it fails equal the plain solo run (greedy tokens identical), on both backends, mixed in one batch, in
the continuous batch; the measured value equals a numpy computation from a recorded run; the
threshold search equals a brute-force search written here."""

from __future__ import annotations

import numpy as np
import pytest

from mlx_steer import analysis as an
from mlx_steer.engine import interventions as iv
from torch_fixtures import *  # noqa: F403  (fixtures)
from torch_fixtures import BACKENDS, prompt_cosines, threshold_between

PROMPTS = ["I love this wonderful day", "The weather is great, happy people walk", "Tell me a story about a cat",
           "sad news", "Paris is the capital of"]
N = 8


def _setup(m):
    """A condition at layers.1 (cosine of the prompt's mean with d) cut between two of the prompts'
    values, computed here from recorded activations; a steering vector for layers.2."""
    rng = np.random.default_rng(0)
    d = rng.normal(size=m.hidden_size).astype(np.float32)
    values = prompt_cosines(m, PROMPTS, "layers.1", d)
    threshold = threshold_between(values)
    steer = iv.add_vector(rng.normal(size=m.hidden_size).astype(np.float32) * 3, positions="generated")
    return iv.condition(d, site="layers.1", threshold=threshold, name="topic"), steer, np.array(values), threshold


def _alone(m, prompt, steer, on):
    return m.generate_tokens(prompt, max_tokens=N, interventions={"layers.2": steer} if on else None)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_follow_their_own_condition_in_one_batch(backend_models, backend):
    m = backend_models(backend, "llama")
    cond, steer, values, threshold = _setup(m)
    met = values > threshold
    assert met.any() and not met.all()
    res = m.batch_generate(PROMPTS, max_tokens=N, interventions={"layers.2": steer.when(cond)})
    for i, p in enumerate(PROMPTS):
        assert res.token_ids[i] == _alone(m, p, steer, met[i]), i
        (report,) = res.conditions[i]
        assert report["met"] == bool(met[i])
        assert report["values"]["topic"] == pytest.approx(values[i], rel=1e-4, abs=1e-5)
    assert any(_alone(m, p, steer, True) != _alone(m, p, steer, False) for p in PROMPTS)  # the steering shows


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_of_several_behaviours_and_solo_generation(backend_models, backend):
    """``b1.when(c)``, ``b2.when(~c)``: every row gets exactly one of them; a single stream reports its decision."""
    m = backend_models(backend, "llama")
    cond, steer, values, threshold = _setup(m)
    other = iv.add_vector(-3 * steer.vector, positions="generated")
    res = m.batch_generate(PROMPTS, max_tokens=N, interventions={"layers.2": [steer.when(cond), other.when(~cond)]})
    for i, p in enumerate(PROMPTS):
        want = m.generate_tokens(p, max_tokens=N, interventions={"layers.2": steer if values[i] > threshold else other})
        assert res.token_ids[i] == want, i
    hooks = []
    p = PROMPTS[int(np.argmax(values))]
    got = m.generate_tokens(p, max_tokens=N, interventions={"layers.2": steer.when(cond)}, hooks_out=hooks)
    assert got == _alone(m, p, steer, True) and hooks[0].conditions(0)[0]["met"] is True


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_continuous_batch_decides_per_sequence(backend_models, backend):
    m = backend_models(backend, "llama")
    cond, steer, values, threshold = _setup(m)
    out: dict[int, list[int]] = {}
    reports = {}
    with m.batch_generator() as gen:
        uids = [gen.insert(m.encode(p), max_tokens=N, interventions={"layers.2": steer.when(cond)}) for p in PROMPTS]
        while events := gen.step():
            for e in events:
                if e.conditions is not None:
                    reports[e.uid] = e.conditions
                if e.finish_reason != "stop":
                    out.setdefault(e.uid, []).append(e.token)
    for i, (uid, p) in enumerate(zip(uids, PROMPTS)):
        assert out[uid] == _alone(m, p, steer, values[i] > threshold), i
        assert reports[uid][0]["met"] == bool(values[i] > threshold)


def test_bad_conditions_are_refused_before_anything_runs(shared_models):
    m = shared_models("llama")
    d = np.ones(m.hidden_size, np.float32)
    with pytest.raises(ValueError, match=r"unknown condition compare '>='; valid: '>', '<'"):
        iv.condition(d, site="layers.1", threshold=0.0, compare=">=")
    with pytest.raises(ValueError, match=r"unknown condition read 'first'"):
        iv.condition(d, site="layers.1", threshold=0.0, read="first")
    with pytest.raises(ValueError, match=r"condition direction has zero norm"):
        iv.condition(np.zeros(4), site="layers.1", threshold=0.0)
    with pytest.raises(ValueError, match=r"when\(\) takes a condition"):
        iv.add_vector(d).when("layers.1")
    small = iv.condition(np.ones(3), site="layers.1", threshold=0.0, name="tiny")
    with pytest.raises(ValueError, match=r"condition 'tiny' direction has size 3 but site 'model\.layers\.1' has size 64"):
        m.generate_tokens("I love", max_tokens=2, interventions={"layers.2": iv.add_vector(d).when(small)})
    lost = iv.condition(d, site="layers.9", threshold=0.0)
    with pytest.raises(ValueError, match=r"layer 9 out of range"):
        m.generate_tokens("I love", max_tokens=2, interventions={"layers.2": iv.add_vector(d).when(lost)})
    assert m.remove_all_hooks() == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_find_threshold_equals_a_brute_force_search(backend_models, backend):
    m = backend_models(backend, "llama")
    rng = np.random.default_rng(3)
    dirs = {f"layers.{i}": rng.normal(size=m.hidden_size).astype(np.float32) for i in (1, 2)}
    pos, neg = PROMPTS[:3], PROMPTS[3:]
    found = an.find_threshold(m, pos, neg, directions=dirs, read="last", measure="projection")
    best = None
    for site, d in dirs.items():
        vals = np.array([float(m.to_numpy(m.run(p, record=[site]).activations[site])[0, -1].astype(np.float64)
                               @ (d / np.linalg.norm(d))) for p in pos + neg])
        truth = np.array([True] * len(pos) + [False] * len(neg))
        for t in sorted(set(vals)):
            for cmp in (">", "<"):
                for cut in (t - 1e-9, t + 1e-9):
                    pred = vals > cut if cmp == ">" else vals < cut
                    tp = (pred & truth).sum()
                    f1 = 2 * tp / (pred.sum() + truth.sum())
                    if best is None or f1 > best[0] + 1e-12:
                        best = (f1, site, cmp)
    assert found.best.f1 == pytest.approx(best[0])
    import mlx_steer as ms

    at_input = ms.SteeringVector({"model.layers.1": dirs["layers.1"]}, hook_point="input")
    assert {r.site for r in an.find_threshold(m, pos, neg, directions=at_input).rows} == {"model.layers.1:input"}
    assert len(found.rows) == 2 * 2 * (len(PROMPTS) - 1)
    gated = iv.add_vector(np.ones(m.hidden_size, np.float32), positions="generated").when(found.condition())
    res = m.batch_generate(PROMPTS, max_tokens=2, interventions={"layers.2": gated})
    predicted = [r[0]["met"] for r in res.conditions]
    labels = [True] * len(pos) + [False] * len(neg)
    tp = sum(a and b for a, b in zip(predicted, labels))
    assert 2 * tp / (sum(predicted) + sum(labels)) == pytest.approx(found.best.f1)  # the condition does what it scored


@pytest.mark.parametrize("backend", BACKENDS)
def test_cap_limits_the_projection_and_nothing_else(backend_models, backend):
    """``cap(u, high=c)``: the recorded activation equals the plain one with its projection on u clipped
    at c (numpy, from the plain recording); ``low`` likewise; rows under the bound are unchanged."""
    m = backend_models(backend, "llama")
    u = np.random.default_rng(5).normal(size=m.hidden_size).astype(np.float32)
    unit = u / np.linalg.norm(u)
    plain = m.to_numpy(m.run(PROMPTS[1], record=["layers.1"]).activations["layers.1"])[0].astype(np.float64)
    p = plain @ unit
    high, low = float(np.quantile(p, 0.6)), float(np.quantile(p, 0.3))
    for bounds, clipped in (({"high": high}, np.minimum(p, high)), ({"low": low}, np.maximum(p, low)),
                            ({"low": low, "high": high}, np.clip(p, low, high))):
        got = m.to_numpy(m.run(PROMPTS[1], record=["layers.1"], interventions={"layers.1": iv.cap(u, **bounds)})
                         .activations["layers.1"])[0].astype(np.float64)
        want = plain + (clipped - p)[:, None] * unit
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        assert not np.allclose(got, plain, atol=1e-3)  # some positions were past the bound
    with pytest.raises(ValueError, match=r"cap needs low=, high= or both"):
        iv.cap(u)
    with pytest.raises(ValueError, match=r"cap low 2\.0 is above high 1\.0"):
        iv.cap(u, low=2.0, high=1.0)
