"""Quantized and bf16 models; head ablation, directional ablation and mean ablation oracles."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from mlx_steer.engine import interventions as iv

PROMPT = "The weather is great, happy people walk"


def _quantized(load_tiny, arch, bits):
    m = load_tiny(arch)
    nn.quantize(m.model, group_size=32, bits=bits)
    return m


@pytest.mark.parametrize("kind", ["q4", "q8", "bf16", "fp16"])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_low_precision_records_steers_generates(load_tiny, arch, kind):
    import mlx_steer as ms

    if kind.startswith("q"):
        m = _quantized(load_tiny, arch, int(kind[1:]))
        m = ms.SteerableModel(m.model, m.tokenizer)  # re-read the (now quantized) tree
        dtype = mx.float32
        assert any(isinstance(x, nn.QuantizedLinear) for _, x in m.model.named_modules())
    else:
        m = load_tiny(arch)
        dtype = {"bf16": mx.bfloat16, "fp16": mx.float16}[kind]
        m.model.set_dtype(dtype)
        m = ms.SteerableModel(m.model, m.tokenizer)
    assert m.dtype == dtype
    v = np.random.default_rng(0).normal(size=m.hidden_size).astype(np.float32)
    clean = m.run(PROMPT, record=["layers.1"])
    steered = m.run(PROMPT, record=["layers.2:input"], interventions={"layers.1": iv.add_vector(v)})
    a, b = clean.activations["layers.1"], steered.activations["layers.2:input"]
    assert a.dtype == dtype and b.dtype == dtype  # a float32 vector does not upcast the stream
    assert steered.logits.dtype == clean.logits.dtype
    expected = a + mx.array(v).astype(dtype)
    assert mx.array_equal(b, expected).item()
    text = m.generate(PROMPT, max_tokens=8, interventions={"layers.1": iv.add_vector(v * 10, positions="last")})
    assert isinstance(text, str)
    plain = m.generate_tokens(PROMPT, max_tokens=8)
    steered_tokens = m.generate_tokens(PROMPT, max_tokens=8, interventions={"layers.1": iv.add_vector(v * 40)})
    assert plain != steered_tokens


@pytest.mark.parametrize("arch,o_proj", [("llama", "self_attn.o_proj"), ("gpt2", "attn.c_proj"), ("phi3", "self_attn.o_proj")])
def test_head_ablation_equals_zeroed_columns(load_tiny, arch, o_proj):
    m = load_tiny(arch)
    heads = [1, 3]
    site = f"layers.2.{o_proj}:input"
    ablated = np.array(m.run(PROMPT, interventions={site: iv.ablate_heads(heads)}).logits)
    proj = m.modules[m.resolve(site).path]
    hd = m.hidden_size // m.n_heads
    w = np.array(proj.weight)
    for h in heads:
        w[:, h * hd : (h + 1) * hd] = 0.0
    original = proj.weight
    proj.weight = mx.array(w)
    try:
        expected = np.array(m.run(PROMPT).logits)
    finally:
        proj.weight = original
    np.testing.assert_allclose(ablated, expected, atol=1e-5)
    assert not np.allclose(ablated, np.array(m.run(PROMPT).logits), atol=1e-3)


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_project_out_leaves_no_component(shared_models, arch):
    m = shared_models(arch)
    d = np.random.default_rng(4).normal(size=m.hidden_size).astype(np.float32)
    u = d / np.linalg.norm(d)
    clean = np.array(m.run(PROMPT, record=["layers.1"]).activations["layers.1"])
    out = np.array(m.run(PROMPT, record=["layers.1"], interventions={"layers.1": iv.project_out(d)}).activations["layers.1"])
    assert np.abs(clean @ u).max() > 0.1
    assert np.abs(out @ u).max() < 1e-4
    np.testing.assert_allclose(out, clean - (clean @ u)[..., None] * u, atol=1e-5)


def test_mean_ablation_and_set_and_zero(shared_models):
    m = shared_models("qwen2")
    mean = np.random.default_rng(6).normal(size=m.hidden_size).astype(np.float32)
    rec = m.run(PROMPT, record=["layers.1"], interventions={"layers.1": iv.mean_ablate(mean, positions=[0, 2])})
    clean = np.array(m.run(PROMPT, record=["layers.1"]).activations["layers.1"])[0]
    got = np.array(rec.activations["layers.1"])[0]
    assert np.array_equal(got[[0, 2]], np.stack([mean, mean]))
    keep = [i for i in range(got.shape[0]) if i not in (0, 2)]
    assert np.array_equal(got[keep], clean[keep])
    zeroed = np.array(m.run(PROMPT, record=["layers.1"], interventions={"layers.1": iv.zero(positions="last")}).activations["layers.1"])[0]
    assert np.array_equal(zeroed[-1], np.zeros(m.hidden_size)) and np.array_equal(zeroed[:-1], clean[:-1])
    scaled = np.array(m.run(PROMPT, record=["layers.1"], interventions={"layers.1": iv.scale(0.5)}).activations["layers.1"])[0]
    assert np.array_equal(scaled, clean * np.float32(0.5))


def test_interventions_apply_in_order(shared_models):
    m = shared_models("llama")
    v = np.ones(m.hidden_size, np.float32)
    clean = np.array(m.run(PROMPT, record=["layers.1"]).activations["layers.1"])
    got = np.array(m.run(PROMPT, record=["layers.1"], interventions={"layers.1": [iv.add_vector(v), iv.scale(2.0)]}).activations["layers.1"])
    np.testing.assert_allclose(got, (clean + v) * 2, atol=1e-5)
