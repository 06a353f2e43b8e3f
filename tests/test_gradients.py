"""Gradients at sites (mlx_steer.gradients): against central finite differences of the metric along
random directions at every site, MLX against torch on the same weights, a steered gradient against the
gradient of the exported model with the vector baked in, 4-bit MLX models, and the refusals.

Finite-difference tolerance: step 1e-2 along a unit-RMS direction in fp32, the directional derivative
within 2e-2 relative (+ 1e-3 absolute) of grad · u — the fp32 rounding of the metric's difference
quotient (~1e-7 / 1e-2 relative to |metric|) and the O(step²) curvature term are well inside that; a
wrong gradient (a missing layer, a wrong position, the padding's column) is off by O(1).
"""

from __future__ import annotations

import numpy as np
import pytest
from torch_fixtures import *  # noqa: F403
from torch_fixtures import BACKENDS, assert_untouched, snapshot
from tiny_models import ARCHS

import mlx_steer as ms
from mlx_steer import interventions as iv

PROMPTS = ["Paris is the capital of", "I love the"]  # different lengths: the padding is exercised
TARGET, FOIL = 5, 7
EPS, RTOL, ATOL = 1e-2, 2e-2, 1e-3


def _sites(m) -> list[str]:
    n = m.num_layers
    attn = "attn" if m.backend.model_type == "gpt2" else "self_attn"
    return [*(f"layers.{i}" for i in range(n)), "layers.1:input", "layers.2.mlp", f"layers.1.{attn}"]


def _perturbed(m, tokens, metric, site, direction, step):
    """The metric summed over the prompts, each run alone with ``step * direction`` (its row, padding
    cut off) added at ``site`` by a test-side custom intervention."""
    total = 0.0
    for b, t in enumerate(tokens):
        delta = step * direction[b, direction.shape[1] - len(t):][None]

        def add(h, delta=delta):
            return h + m.xp.constant(delta, like=h)

        out = m.run([t], interventions={site: iv.custom(add)}).logits
        total += float(m.to_numpy(metric(out)).astype(np.float64).sum())
    return total


def _check_fd(m, g, tokens, metric, site, seed):
    grad = g.gradients[site]
    u = np.random.default_rng(seed).standard_normal(grad.shape).astype(np.float32)
    u[g.positions < 0] = 0.0  # padding: no position there
    fd = (_perturbed(m, tokens, metric, site, u, EPS) - _perturbed(m, tokens, metric, site, u, -EPS)) / (2 * EPS)
    analytic = float((grad.astype(np.float64) * u).sum())
    assert abs(fd - analytic) <= RTOL * abs(analytic) + ATOL, (site, fd, analytic)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arch", ARCHS)
def test_gradients_equal_finite_differences_at_every_site(backend_models, backend, arch):
    m = backend_models(backend, arch)
    tokens = [m.encode(p) for p in PROMPTS]
    metric = ms.logit_diff(TARGET, FOIL)
    sites = _sites(m)
    g = ms.gradients(m, tokens, metric, sites=sites)
    assert g.metric.shape == (2,)
    raw = m.to_numpy(m.run(tokens).logits)
    np.testing.assert_allclose(g.metric, raw[:, -1, TARGET] - raw[:, -1, FOIL], rtol=1e-5, atol=1e-5)
    for i, site in enumerate(sites):
        _check_fd(m, g, tokens, metric, site, seed=i)
    # the activations are the recorded ones
    rec = m.run(tokens, record=sites).activations
    for site in sites:
        keep = (g.positions >= 0)[..., None]
        np.testing.assert_allclose(g.activations[site], np.where(keep, m.to_numpy(rec[site]), 0.0), atol=1e-6)
    # padding columns carry no gradient
    assert np.all(g.gradients["layers.0"][g.positions < 0] == 0)


@pytest.mark.parametrize("arch", ARCHS)
def test_mlx_gradients_equal_torch_on_the_same_weights(backend_models, arch):
    mx_m, th_m = backend_models("mlx", arch), backend_models("torch", arch)
    tokens = [mx_m.encode(p) for p in PROMPTS]
    assert tokens == [th_m.encode(p) for p in PROMPTS]
    sites = [f"layers.{i}" for i in range(mx_m.num_layers)]
    a = ms.gradients(mx_m, tokens, ms.logit_diff(TARGET, FOIL), sites=sites)
    b = ms.gradients(th_m, tokens, ms.logit_diff(TARGET, FOIL), sites=sites)
    np.testing.assert_allclose(a.metric, b.metric, rtol=1e-4, atol=1e-4)
    for site in sites:
        scale = np.abs(b.gradients[site]).max()
        np.testing.assert_allclose(a.gradients[site], b.gradients[site], atol=1e-4 * max(scale, 1.0))
        np.testing.assert_allclose(a.activations[site], b.activations[site], atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_steered_gradient_equals_the_baked_model(backend, tiny_dir, tmp_path):
    m = ms.load(str(tiny_dir("llama")), backend=backend)
    v = np.random.default_rng(3).standard_normal(m.hidden_size).astype(np.float32)
    spec = {"layers.1": iv.add_vector(v, scale=2.0)}
    baked = ms.load(str(m.export(tmp_path / "baked", spec)), backend=backend)
    tokens = [m.encode(p) for p in PROMPTS]
    sites = ["layers.0", "layers.2", "layers.3"]
    steered = ms.gradients(m, tokens, ms.logit_diff(TARGET, FOIL), sites=sites, interventions=spec)
    plain = ms.gradients(m, tokens, ms.logit_diff(TARGET, FOIL), sites=sites)
    ref = ms.gradients(baked, tokens, ms.logit_diff(TARGET, FOIL), sites=sites)
    np.testing.assert_allclose(steered.metric, ref.metric, rtol=1e-5, atol=1e-5)
    for site in sites:
        np.testing.assert_allclose(steered.gradients[site], ref.gradients[site], rtol=1e-4, atol=1e-5)
    # and the steering matters: the unsteered gradient differs downstream
    assert not np.allclose(plain.gradients["layers.2"], ref.gradients["layers.2"], atol=1e-4)


def test_gradients_flow_through_4bit_quantized_linears(load_tiny):
    import mlx.nn as nn

    base = load_tiny("llama")
    nn.quantize(base.model, group_size=32, bits=4)
    m = ms.SteerableModel(base.model, base.tokenizer)  # re-read the quantized tree
    assert isinstance(m.modules["model.layers.1.mlp.down_proj"], nn.QuantizedLinear)
    tokens = [m.encode(p) for p in PROMPTS]
    metric = ms.logit_diff(TARGET, FOIL)
    sites = ["layers.0", "layers.2", "layers.1.mlp.down_proj:input"]
    g = ms.gradients(m, tokens, metric, sites=sites)
    for i, site in enumerate(sites):
        assert np.abs(g.gradients[site]).max() > 0
        _check_fd(m, g, tokens, metric, site, seed=10 + i)


@pytest.mark.parametrize("backend", BACKENDS)
def test_positions_select_columns(backend_models, backend):
    m = backend_models(backend, "llama")
    tokens = [m.encode(p) for p in PROMPTS]
    full = ms.gradients(m, tokens, ms.logit_diff(TARGET, FOIL), sites=["layers.1"])
    last = ms.gradients(m, tokens, ms.logit_diff(TARGET, FOIL), sites=["layers.1"], positions=[0, -1])
    assert last.gradients["layers.1"].shape == (2, 2, m.hidden_size)
    for b, n in enumerate(len(t) for t in tokens):
        pad = full.gradients["layers.1"].shape[1] - n
        np.testing.assert_array_equal(last.gradients["layers.1"][b, 0], full.gradients["layers.1"][b, pad])
        np.testing.assert_array_equal(last.gradients["layers.1"][b, 1], full.gradients["layers.1"][b, -1])
        np.testing.assert_array_equal(last.positions[b], [0, n - 1])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", ["non_scalar", "non_finite", "unknown_site", "not_callable", "bad_position"])
def test_refusals_leave_the_model_untouched(fresh_models, backend, case):
    m = fresh_models(backend, "llama")
    tokens = [m.encode(p) for p in PROMPTS]
    before = snapshot(m)
    logits_before = m.to_numpy(m.run(tokens).logits)
    kwargs: dict = {"sites": ["layers.1"]}
    metric = ms.logit_diff(TARGET, FOIL)
    expected = {"non_scalar": r"scalar or one value per row \(2,\).*shape \(2, \d+\)",
                "non_finite": "not finite", "unknown_site": "layer 9 out of range", "not_callable": "callable",
                "bad_position": "position 40 out of range"}[case]
    if case == "non_scalar":
        metric = lambda logits: logits[:, :, TARGET]  # noqa: E731
    elif case == "non_finite":
        metric = lambda logits: logits[:, -1, TARGET] * float("inf")  # noqa: E731
    elif case == "unknown_site":
        kwargs["sites"] = ["layers.9"]
    elif case == "not_callable":
        metric = "logit_diff"  # type: ignore[assignment]
    else:
        kwargs["positions"] = [40]
    with pytest.raises(ValueError, match=expected):
        ms.gradients(m, tokens, metric, **kwargs)
    assert_untouched(m, before)
    np.testing.assert_array_equal(m.to_numpy(m.run(tokens).logits), logits_before)


def test_a_site_that_never_runs_is_refused(backend_models):
    m = backend_models("torch", "llama")
    with pytest.raises(ValueError, match=r"\['model.layers'\] do not run in a forward"):
        ms.gradients(m, ["I love"], ms.logit_diff(TARGET, FOIL), sites=["model.layers"])


def test_torch_refuses_a_detaching_intervention(fresh_models):
    import torch

    m = fresh_models("torch", "llama")
    tokens = [m.encode(PROMPTS[0])]  # one row: the custom op replaces every position
    before = snapshot(m)
    detach = {"layers.2": iv.custom(lambda h: torch.from_numpy(h.detach().numpy().copy()))}
    with pytest.raises(ValueError, match=r"does not reach sites \['model.layers.0'\]"):
        ms.gradients(m, tokens, ms.logit_diff(TARGET, FOIL), sites=["layers.0", "layers.3"], interventions=detach)
    assert_untouched(m, before)
    assert torch.is_grad_enabled() and not m.backend.grad_enabled


def test_sharded_models_are_refused(shared_models, monkeypatch):
    m = shared_models("llama")
    monkeypatch.setattr(type(m.backend), "distributed", "tensor")
    with pytest.raises(ValueError, match=r"sharded over ranks \(tensor\)"):
        ms.gradients(m, ["I love"], ms.logit_diff(TARGET, FOIL), sites=["layers.1"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_last_position_logits_give_the_same_gradients(backend_models, backend):
    m = backend_models(backend, "gpt2")
    tokens = [m.encode(p) for p in PROMPTS]
    sites = ["layers.0", "layers.2.mlp"]
    full = ms.gradients(m, tokens, ms.logit_diff(TARGET, FOIL), sites=sites)
    last = ms.gradients(m, tokens, ms.logit_diff(TARGET, FOIL), sites=sites, logits="last")
    np.testing.assert_allclose(last.metric, full.metric, atol=1e-5)
    for site in sites:
        np.testing.assert_allclose(last.gradients[site], full.gradients[site], atol=1e-5)
