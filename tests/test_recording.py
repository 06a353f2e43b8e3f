"""Recorded activations against blocks run by hand; input/output consistency, add_vector exactness and
recorded positions on both backends."""

import mlx.core as mx
import numpy as np
import pytest

from mlx_steer.engine import interventions as iv
from oracles import block_outputs
from tiny_models import ARCHS
from torch_fixtures import *  # noqa: F403  (fixtures)
from torch_fixtures import BACKENDS, np_

PROMPT = "I love this wonderful day"


@pytest.mark.parametrize("arch", ARCHS)
def test_block_outputs_match_hand_run(shared_models, arch):
    m = shared_models(arch)
    tokens = m.encode(PROMPT)
    expected = block_outputs(m.model, tokens)
    sites = [f"layers.{i}" for i in range(m.num_layers)]
    with m.trace(PROMPT, record=sites) as tr:
        pass
    for i, site in enumerate(sites):
        got = np.array(tr.activations[site])
        assert got.shape == (1, len(tokens), m.hidden_size)
        np.testing.assert_allclose(got[0], expected[i], rtol=0, atol=1e-6)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_input_of_next_block_is_output_of_block(backend_models, backend, arch):
    m = backend_models(backend, arch)
    n = m.num_layers
    sites = [f"layers.{i}" for i in range(n - 1)] + [f"layers.{i + 1}:input" for i in range(n - 1)]
    tr = m.run(PROMPT, record=sites)
    for i in range(n - 1):
        assert np.array_equal(np_(m, tr.activations[f"layers.{i}"]), np_(m, tr.activations[f"layers.{i + 1}:input"]))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_add_vector_all_positions_is_exact(backend_models, backend, arch):
    m = backend_models(backend, arch)
    v = np.random.default_rng(1).normal(size=m.hidden_size).astype(np.float32)
    clean = np_(m, m.run(PROMPT, record=["layers.1"]).activations["layers.1"])
    steered = m.run(PROMPT, record=["layers.2:input"], interventions={"layers.1": iv.add_vector(v)})
    assert np.array_equal(np_(m, steered.activations["layers.2:input"]), clean + v)


def test_submodule_sites_and_short_keys(shared_models):
    m = shared_models("llama")
    with m.trace(PROMPT, record=["layers.1.mlp", "model.layers.1.self_attn", "layers.-1"]) as tr:
        pass
    attn, mlp = np.array(tr.activations["layers.1.self_attn"]), np.array(tr.activations["model.layers.1.mlp"])
    # llama block: h = x + attn(norm(x)); out = h + mlp(norm(h)); check out - mlp == x + attn
    with m.trace(PROMPT, record=["layers.1", "layers.1:input"]) as tr2:
        pass
    out, x = np.array(tr2.activations["layers.1"]), np.array(tr2.activations["layers.1:input"])
    np.testing.assert_allclose(out - mlp, x + attn, atol=1e-5)
    assert np.array_equal(np.array(tr.activations["layers.-1"]), np.array(tr.activations["layers.3"]))
    assert "model.layers.3" in tr.activations and "layers.2" not in tr.activations


@pytest.mark.parametrize("backend", BACKENDS)
def test_record_positions_last_index_window_mean(backend_models, backend):
    m = backend_models(backend, "qwen2")
    h = np_(m, m.run(PROMPT, record=["layers.2"]).activations["layers.2"])[0]
    L = h.shape[0]
    for positions, expected in [("last", h[L - 1 : L]), (2, h[2:3]), ([1, 3], h[[1, 3]]), (slice(1, 4), h[1:4])]:
        got = m.run(PROMPT, record={"layers.2": positions}).activations["layers.2"]
        if backend == "torch":
            assert got.is_contiguous() and got._base is None  # its own bytes, not a view
        assert np.array_equal(np_(m, got)[0], expected), positions
    mean = m.run(PROMPT, record=["layers.2"], record_positions=slice(1, 4), reduce="mean").activations["layers.2"]
    np.testing.assert_allclose(np_(m, mean)[0], h[1:4].mean(0), atol=1e-6)


def test_recording_last_keeps_only_its_own_bytes(shared_models):
    """A recorded slice must not pin the whole (B, L, D) activation it came from."""
    import gc

    m = shared_models("llama")
    prompt = list(range(3, 300)) * 1  # 297 tokens: a full (1, L, D) fp32 activation is ~76 KB

    def growth(positions):
        gc.collect()
        mx.clear_cache()
        before = mx.get_active_memory()
        tr = m.run(prompt, record={"layers.1": positions}, logits=False)
        gc.collect()
        mx.clear_cache()
        return tr, mx.get_active_memory() - before

    tr_last, last = growth("last")
    tr_all, full = growth("all")
    assert tr_last.activations["layers.1"].shape == (1, 1, m.hidden_size)
    assert full >= len(prompt) * m.hidden_size * 4
    assert last < 16 * 1024
