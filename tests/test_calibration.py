"""Calibrated strength against oracles computed here: per-token KL from solo forwards' full logits and
a numpy log-softmax over rollouts from solo greedy generation; the searched coefficient re-measured
that way; the search's bracketing on synthetic curves; determinism, save/load, both backends agreeing."""

from __future__ import annotations

import numpy as np
import pytest

from mlx_steer.analysis import calibrate, kl_at
from mlx_steer.analysis.kl_calibration import search
from mlx_steer.analysis.kl_rollouts import make_rollouts, token_kls
from mlx_steer.engine import interventions as iv
from mlx_steer.vectors.calibrated_units import calibrated_vector
from mlx_steer.vectors.calibration import Calibration
from mlx_steer.vectors.steering_vector import SteeringVector
from mlx_steer.vectors.vector_file import load_vector, save_vector
from torch_fixtures import *  # noqa: F403  (fixtures)
from torch_fixtures import assert_untouched, snapshot

BACKENDS = ["mlx", "torch"]
PROMPTS = ["The cat", "I think the day", "Hello there, how"]
OPTS = dict(prompts=PROMPTS, rollout_tokens=5, chat=False)


def _vector(m, layers=(1, 2), seed=0):
    rng = np.random.default_rng(seed)
    return SteeringVector({m.resolve_path(f"layers.{i}"): rng.standard_normal(m.hidden_size) for i in layers})


def _solo_kls(m, site, direction, scale, prompts=PROMPTS, rollout_tokens=5):
    """Per-token KL(unsteered || steered) from one solo greedy rollout and two solo full-logit forwards per prompt."""
    def logsoftmax(x):
        x = x.astype(np.float64) - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    out = []
    for prompt in prompts:
        ids = m.encode(prompt)
        seq = ids + m.generate_tokens(ids, max_tokens=rollout_tokens)
        p = logsoftmax(m.to_numpy(m.run([seq]).logits)[0])
        q = logsoftmax(m.to_numpy(m.run([seq], interventions={site: iv.add_vector(direction, scale=scale)}).logits)[0])
        kl = (np.exp(p) * (p - q)).sum(-1)
        out.append(kl[len(ids) - 1:])
    return np.concatenate(out)


@pytest.mark.parametrize("backend", BACKENDS)
def test_token_kls_equal_solo_forwards_and_a_numpy_kl(backend_models, backend):
    m = backend_models(backend, "llama")
    vec = _vector(m)
    site = vec.sites[0]
    ro = make_rollouts(m, PROMPTS, rollout_tokens=5, chat=False, system=None, temp=0.0, seed=0, batch_size=2)
    got = token_kls(m, ro, [None, {site: iv.add_vector(vec[site], scale=0.3)}, {site: iv.add_vector(vec[site], scale=1.0)}],
                    batch_size=4)
    np.testing.assert_allclose(got[0], 0.0, atol=1e-9)
    for k, scale in ((1, 0.3), (2, 1.0)):
        want = _solo_kls(m, site, vec[site], scale)
        assert want.max() > 1e-4  # the steering moves the distributions
        np.testing.assert_allclose(got[k], want, rtol=1e-3, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_coefficient_reaches_the_target_re_measured_by_the_oracle(fresh_models, backend):
    m = fresh_models(backend, "llama")
    before = snapshot(m)
    vec = _vector(m)
    out = calibrate(m, vec, target_kl=0.05, rtol=0.01, batch_size=5, **OPTS)
    assert_untouched(m, before)
    cal = out.calibration
    assert set(cal.coefficients) == set(vec.sites) and (out.directions.keys() == vec.directions.keys())
    assert all(np.array_equal(out[s], vec[s]) for s in vec.sites)
    for s in vec.sites:
        measured = float(np.mean(_solo_kls(m, s, vec[s], cal.coefficients[s])))
        assert measured == pytest.approx(cal.achieved_kl[s], rel=1e-3)
        assert measured == pytest.approx(0.05, rel=0.01)
    # a percentile statistic: the recomputed 90th percentile is at the target
    p90 = calibrate(m, vec, target_kl=0.2, statistic="p90", sites=["layers.2"], rtol=0.01, **OPTS).calibration
    s = vec.sites[1]
    assert p90.sites == (s,) and p90.statistic == "p90"
    assert float(np.percentile(_solo_kls(m, s, vec[s], p90.coefficients[s]), 90)) == pytest.approx(0.2, rel=0.01)


def test_deterministic_for_a_seed_and_measured_again_by_kl_at(shared_models):
    m = shared_models("llama")
    vec = _vector(m, layers=(1,))
    a = calibrate(m, vec, target_kl=0.05, temp=1.0, seed=7, **OPTS).calibration
    b = calibrate(m, vec, target_kl=0.05, temp=1.0, seed=7, **OPTS).calibration
    assert a == b and (a.temp, a.seed, a.n_prompts, a.rollout_tokens) == (1.0, 7, 3, 5)
    s = vec.sites[0]
    again = kl_at(m, vec, a.coefficients[s], site=s, temp=1.0, seed=7, **OPTS)
    assert again == pytest.approx(a.achieved_kl[s], rel=1e-5)


def test_mlx_and_torch_agree(backend_models):
    got = {b: calibrate(backend_models(b, "llama"), _vector(backend_models(b, "llama")), target_kl=0.05, rtol=0.005,
                        **OPTS).calibration for b in BACKENDS}
    for s, c in got["mlx"].coefficients.items():
        assert got["torch"].coefficients[s] == pytest.approx(c, rel=0.02)


def test_survives_save_and_load_and_is_shown_by_inspect(shared_models, tmp_path, capsys):
    from mlx_steer.cli.main import main

    m = shared_models("llama")
    vec = calibrate(m, _vector(m), target_kl=0.05, **OPTS)
    path = save_vector(vec, tmp_path / "v.safetensors")
    assert load_vector(path) == vec and load_vector(path, model=m).calibration == vec.calibration
    old = save_vector(_vector(m), tmp_path / "old.safetensors")  # a file without calibration loads as before
    assert load_vector(old).calibration is None
    assert main(["inspect", str(path)]) == 0
    shown = capsys.readouterr().out
    for s, c in vec.calibration.coefficients.items():
        assert f"{c:.6g}" in shown and s in shown
    assert "target KL 0.05 nats (mean)" in shown


def test_transforms_keep_or_drop_the_calibration():
    vec = SteeringVector({"a.1": np.ones(4), "a.2": np.full(4, 2.0)},
                         calibration=Calibration({"a.1": 2.0, "a.2": 3.0}, 0.1))
    assert (vec * 2).calibration.coefficients == {"a.1": 1.0, "a.2": 1.5}
    assert (vec / 4).calibration.coefficients == {"a.1": 8.0, "a.2": 12.0}
    assert vec.normalized().calibration.coefficients == pytest.approx({"a.1": 4.0, "a.2": 12.0})
    assert (-vec).calibration is None and (vec + vec).calibration is None and (vec * -1).calibration is None
    assert vec.select("a.2").calibration.coefficients == {"a.2": 3.0}
    assert vec.with_sites({"a.1": "b.1"}).calibration.coefficients == {"b.1": 2.0, "a.2": 3.0}
    assert vec.to("float16").calibration == vec.calibration
    raw = calibrated_vector(vec)  # strength 1 in calibrated units
    np.testing.assert_array_equal(raw["a.2"], np.full(4, 6.0))
    assert raw.calibration is None
    with pytest.raises(ValueError, match="no calibration; run `mlx-steer calibrate`"):
        calibrated_vector(raw)
    with pytest.raises(ValueError, match="no coefficient for a.3; calibrated sites: a.1, a.2"):
        calibrated_vector(vec.replace(directions={**vec.directions, "a.3": np.ones(4)}), sites=("a.3",))
    with pytest.raises(ValueError, match="sites the vector lacks: a.2"):
        SteeringVector({"a.1": np.ones(4)}, calibration=Calibration({"a.2": 1.0}, 0.1))


def test_search_brackets_the_first_crossing_and_refuses_an_unreachable_target():
    calls = []

    def quadratic(scales):
        calls.append(len(scales))
        return [0.3 * c * c for c in scales]

    c, kl = search(quadratic, target=0.5, start=1.0, rtol=1e-3, max_steps=12, what="x")
    assert kl == pytest.approx(0.5, rel=1e-3) and c == pytest.approx(np.sqrt(0.5 / 0.3), rel=1e-3)
    assert len(calls) <= 6  # the log-log interpolation is exact for a power law

    def bump(scales):  # rises past the target, falls below it, rises again: the first crossing is kept
        return [min(c, 3.0) if c < 5 else 0.1 if c < 50 else c for c in scales]

    c, kl = search(bump, target=2.0, start=1.0, rtol=1e-3, max_steps=20, what="x")
    assert c == pytest.approx(2.0, rel=1e-3)
    with pytest.raises(ValueError, match=r"steering at l never reaches a KL of 5 nats: the largest measured is 1"):
        search(lambda s: [min(c, 1.0) for c in s], target=5.0, start=1.0, rtol=1e-3, max_steps=4, what="steering at l")
    with pytest.raises(ValueError, match=r"steering at l exceeds a KL of 1e-09 nats even at scale"):
        search(lambda s: [1.0 for c in s], target=1e-9, start=1.0, rtol=1e-3, max_steps=3, what="steering at l")


@pytest.mark.parametrize("kwargs, match", [
    ({"target_kl": 0}, "target_kl must be a finite number > 0, got 0"),
    ({"statistic": "median"}, "unknown KL statistic 'median'; valid: 'mean' or a percentile"),
    ({"sites": ["layers.3"]}, "no direction at model.layers.3; the vector has: model.layers.1, model.layers.2"),
    ({"rollout_tokens": 0}, "rollout_tokens must be a positive int, got 0"),
    ({"seed": -1}, "seed -1 out of range; valid: 0..2\\*\\*64-1"),
    ({"prompts": []}, "prompts must be a non-empty list"),
    ({"positions": "nowhere"}, "nowhere"),
    ({"target_kl": 1e9}, "never reaches a KL of 1e\\+09 nats"),
])
def test_bad_input_is_refused_by_name_and_leaves_the_model_untouched(fresh_models, kwargs, match):
    m = fresh_models("mlx", "llama")
    before = snapshot(m)
    opts = {**OPTS, "max_steps": 3} | kwargs
    with pytest.raises(ValueError, match=match):
        calibrate(m, _vector(m), **opts)
    assert_untouched(m, before)


@pytest.mark.slow
def test_smollm2_reaches_the_target_and_both_backends_agree(smollm2, smollm2_dir):
    """SmolLM2: the coefficient's KL re-measured by solo forwards is within 10 % of the target, and
    the torch backend's coefficient within 5 % of MLX's."""
    from mlx_steer.torch_backend import load as load_torch

    rng = np.random.default_rng(0)
    site = smollm2.resolve_path("layers.12")
    vec = SteeringVector({site: rng.standard_normal(smollm2.hidden_size)})
    prompts = ["Describe how to make a cup of tea.", "Explain how a bicycle works."]
    opts = dict(target_kl=0.5, prompts=prompts, rollout_tokens=8, chat=False, rtol=0.02)
    c_mlx = calibrate(smollm2, vec, **opts).calibration.coefficients[site]
    measured = float(np.mean(_solo_kls(smollm2, site, vec[site], c_mlx, prompts=prompts, rollout_tokens=8)))
    assert measured == pytest.approx(0.5, rel=0.10)
    c_torch = calibrate(load_torch(str(smollm2_dir)), vec, **opts).calibration.coefficients[site]
    assert c_torch == pytest.approx(c_mlx, rel=0.05)
