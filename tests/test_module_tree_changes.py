"""A model whose module tree changes after loading (``nn.quantize`` on a loaded MLX model, a torch
module swapped by assignment) is mapped again before the next call: recording and steering act on
the modules that run now, and an export writes a folder the framework loads. Hooks left on a replaced
module are refused by name (they no longer act). Oracles: the quantized projection's output computed
by hand from its dequantized weights; ``scale(0)`` equals a run with the module's weights zeroed by
hand; the exported folder loaded by plain mlx-lm equals the steered run."""

from __future__ import annotations

import numpy as np
import pytest

from mlx_steer.engine import interventions as iv
from torch_fixtures import *  # noqa: F403  (fixtures)

PROMPT = "I love this wonderful day"
Q = "model.layers.0.self_attn.q_proj"
DOWN = "model.layers.1.mlp.down_proj"


def _quantize(m, predicate=None):
    import mlx.nn as nn

    nn.quantize(m.model, group_size=32, bits=4, class_predicate=predicate)


def _dequantized(mod):
    import mlx.core as mx

    return np.array(mx.dequantize(mod.weight, mod.scales, mod.biases, group_size=mod.group_size, bits=mod.bits)
                    .astype(mx.float32), dtype=np.float64)


def test_recording_a_projection_quantized_after_loading_equals_the_hand_computation(load_tiny):
    import mlx.nn as nn

    m = load_tiny("llama")
    _quantize(m)
    q, emb, norm = (m.model.model.layers[0].self_attn.q_proj, m.model.model.embed_tokens,
                    m.model.model.layers[0].input_layernorm)
    assert isinstance(q, nn.QuantizedLinear) and isinstance(emb, nn.QuantizedEmbedding)
    ids = m.encode(PROMPT)
    x = _dequantized(emb)[ids]  # the embedding rows, the block's input norm, the projection: by hand
    x = x / np.sqrt((x * x).mean(-1, keepdims=True) + norm.eps) * np.array(norm.weight, dtype=np.float64)
    want = x @ _dequantized(q).T
    got = m.to_numpy(m.run(PROMPT, record=["layers.0.self_attn.q_proj"]).activations[Q])[0]
    assert type(m.modules[Q]) is nn.QuantizedLinear
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_steering_a_linear_quantized_after_loading_acts(load_tiny):
    """``scale(0)`` on a quantized linear zeroes it: the logits change and equal a run with its
    quantized weights zeroed by hand; ``project_out`` changes them too."""
    import mlx.core as mx

    m = load_tiny("llama")
    _quantize(m)
    plain = m.to_numpy(m.run(PROMPT).logits)
    zeroed = m.to_numpy(m.run(PROMPT, interventions={DOWN: iv.scale(0.0)}).logits)
    d = np.random.default_rng(0).normal(size=m.hidden_size).astype(np.float32)
    projected = m.to_numpy(m.run(PROMPT, interventions={DOWN: iv.project_out(d)}).logits)
    assert not np.allclose(zeroed, plain, atol=1e-3) and not np.allclose(projected, plain, atol=1e-3)
    mod = m.modules[DOWN]
    mod.scales, mod.biases = mx.zeros_like(mod.scales), mx.zeros_like(mod.biases)  # w = scale * q + bias = 0
    np.testing.assert_allclose(zeroed, m.to_numpy(m.run(PROMPT).logits), rtol=1e-5, atol=1e-5)


def test_export_after_quantizing_writes_a_folder_mlx_lm_loads(load_tiny, tmp_path):
    """The attention linears quantized after loading: the folder says so (mlx-lm's ``quantization``
    entry), loads with plain ``mlx_lm.load``, and its logits equal the steered run's."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx_lm import load

    m = load_tiny("llama")
    _quantize(m, lambda path, mod: isinstance(mod, nn.Linear) and ".self_attn." in path)
    v = np.random.default_rng(1).normal(size=m.hidden_size).astype(np.float32)
    steer = {"layers.1": iv.add_vector(v, scale=2.0)}
    out = m.export(tmp_path / "out", steer)
    plain, _ = load(str(out))
    assert isinstance(plain.model.layers[0].self_attn.q_proj, nn.QuantizedLinear)
    assert isinstance(plain.model.layers[0].mlp.down_proj, nn.Linear)
    got = np.array(plain(mx.array([m.encode(PROMPT)])).astype(mx.float32))
    np.testing.assert_allclose(got, m.to_numpy(m.run(PROMPT, interventions=steer).logits), rtol=1e-4, atol=1e-4)


def test_hooks_on_a_module_replaced_since_are_refused_by_name(load_tiny):
    m = load_tiny("llama")
    handle = m.steer({DOWN: iv.scale(0.0)})
    _quantize(m)
    with pytest.raises(ValueError, match=r"module tree changed after loading .* while mlx_steer hooks are "
                                         r"installed on .*model\.layers\.1\.mlp\.down_proj.*remove them"):
        m.run(PROMPT)
    handle.remove()
    plain = m.to_numpy(m.run(PROMPT).logits)  # mapped again once the hooks are gone
    assert not np.allclose(plain, m.to_numpy(m.run(PROMPT, interventions={DOWN: iv.scale(0.0)}).logits), atol=1e-3)


def test_torch_a_module_swapped_after_loading_is_recorded_and_steered(load_torch):
    torch = pytest.importorskip("torch")
    m = load_torch("llama")
    old = m.modules[DOWN]
    new = torch.nn.Linear(old.in_features, old.out_features, bias=False)
    with torch.no_grad():
        new.weight.copy_(torch.from_numpy(np.random.default_rng(2).normal(size=tuple(old.weight.shape))
                                          .astype(np.float32) * 0.05))
    m.model.model.layers[1].mlp.down_proj = new
    tr = m.run(PROMPT, record=[DOWN, f"{DOWN}:input"])
    x = m.to_numpy(tr.activations[f"{DOWN}:input"])[0].astype(np.float64)
    want = x @ new.weight.detach().numpy().astype(np.float64).T
    assert m.modules[DOWN] is new
    np.testing.assert_allclose(m.to_numpy(tr.activations[DOWN])[0], want, rtol=1e-4, atol=1e-5)
    plain = m.to_numpy(m.run(PROMPT).logits)
    zeroed = m.to_numpy(m.run(PROMPT, interventions={DOWN: iv.scale(0.0)}).logits)
    assert not np.allclose(zeroed, plain, atol=1e-3)
    with torch.no_grad():
        new.weight.zero_()
    np.testing.assert_allclose(zeroed, m.to_numpy(m.run(PROMPT).logits), rtol=1e-5, atol=1e-5)
