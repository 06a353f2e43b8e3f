"""The mlxterp facade on tiny models, against SteerableModel (same engine: bit-identical) and
against hand-run oracles (blocks run one by one, a test-owned layer wrapper)."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

import mlx_steer as ms
from mlx_steer.engine import interventions as niv
from mlx_steer.compat.mlxterp import InterpretableModel, OutputProxy
from mlx_steer.compat.mlxterp import interventions as iv
from oracles import block_outputs, greedy_recompute, layer_delta

PROMPT = "Tell me a story about a cat"
ARCHS = ("llama", "qwen2", "gpt2")


def _vec(m, seed=0, norm=4.0):
    v = np.random.default_rng(seed).normal(size=m.steerable.hidden_size).astype(np.float32)
    return v * np.float32(norm / np.linalg.norm(v))


def _logits(m, prompt=PROMPT, interventions=None):
    with m.trace(prompt, interventions=interventions):
        out = m.output.save()
    return out


@pytest.fixture
def facade(shared_models):
    return lambda arch="llama": InterpretableModel(shared_models(arch))


@pytest.mark.parametrize("arch", ARCHS)
def test_trace_records_every_layer_under_mlxterp_keys(facade, arch):
    m = facade(arch)
    native = m.steerable
    with m.trace(PROMPT) as trace:
        pass
    assert list(trace.activations) == ["model." + p for p in native.layer_paths]
    assert all(k.endswith(f".{i}") for i, k in enumerate(trace.activations))
    ref = native.run(PROMPT, record=native.layer_paths)
    by_hand = block_outputs(native.model, native.encode(PROMPT))
    for i, (key, act) in enumerate(trace.activations.items()):
        assert act.shape == (1, len(by_hand[i]), native.hidden_size)
        assert mx.array_equal(act, ref.activations[native.layer_paths[i]])
        np.testing.assert_allclose(np.array(act[0]), by_hand[i], rtol=1e-4, atol=1e-4)
    if arch == "gpt2":
        assert "model.model.h.2" in trace.activations
    else:
        assert "model.model.layers.2" in trace.activations


def test_output_save_returns_the_logits(facade):
    m = facade()
    with m.trace(PROMPT) as trace:
        out = m.output.save()
        assert isinstance(m.output, OutputProxy) and m.output.shape == out.shape  # proxies the array
    assert out is trace.output and trace.get("__model_output__") is out
    raw = m(mx.array([m.encode(PROMPT)]))  # the wrapped model, untraced
    np.testing.assert_allclose(np.array(out), np.array(raw), rtol=1e-5, atol=1e-5)
    assert mx.array_equal(out, m.steerable.run(PROMPT).logits)


@pytest.mark.parametrize("key", ["layers.1", "model.layers.1", "model.model.layers.1"])
def test_add_vector_equals_native_steering(facade, key):
    m = facade()
    v = _vec(m)
    steered = _logits(m, interventions={key: iv.add_vector(mx.array(v) * 2.0)})
    native = m.steerable.run(PROMPT, interventions={"layers.1": niv.add_vector(v * 2.0)}).logits
    assert mx.array_equal(steered, native)
    ids = m.encode(PROMPT)
    with layer_delta(m.model, 1, np.tile(2.0 * v, (len(ids), 1))):
        by_hand = m(mx.array([ids]))
    np.testing.assert_allclose(np.array(steered), np.array(by_hand), rtol=1e-4, atol=1e-4)
    assert not mx.allclose(steered, _logits(m))


def test_steered_site_activation_is_recorded_after_the_intervention(facade):
    m = facade()
    v = _vec(m)
    with m.trace(PROMPT) as clean:
        pass
    with m.trace(PROMPT, interventions={"layers.2": iv.add_vector(v)}) as steered:
        pass
    key = "model.model.layers.2"
    np.testing.assert_allclose(np.array(steered.activations[key]), np.array(clean.activations[key]) + v, atol=1e-5)
    assert mx.array_equal(steered.activations["model.model.layers.1"], clean.activations["model.model.layers.1"])


def test_multi_layer_steering_equals_native(facade):
    m = facade()
    vs = {i: _vec(m, seed=i) for i in (0, 1, 3)}
    steered = _logits(m, interventions={f"layers.{i}": iv.add_vector(mx.array(v) * 1.5) for i, v in vs.items()})
    native = m.steerable.run(PROMPT, interventions={f"layers.{i}": niv.add_vector(v * 1.5) for i, v in vs.items()})
    assert mx.array_equal(steered, native.logits)


@pytest.mark.parametrize("name", ["scale", "zero_out", "replace_scalar", "replace_vector", "compose", "submodule"])
def test_interventions_map_onto_native_ones(facade, name):
    m = facade()
    v = _vec(m)
    site, facade_iv, native_iv = {
        "scale": ("layers.1", iv.scale(0.5), niv.scale(0.5)),
        "zero_out": ("layers.1", iv.zero_out, niv.zero()),
        "replace_scalar": ("layers.1", iv.replace_with(0.0), niv.zero()),
        "replace_vector": ("layers.1", iv.replace_with(mx.array(v)), niv.set(v)),
        "compose": ("layers.1", iv.compose().add(iv.scale(0.5)).add(iv.add_vector(v)).build(),
                    [niv.scale(0.5), niv.add_vector(v)]),
        "submodule": ("layers.1.mlp", iv.scale(0.0), niv.scale(0.0)),
    }[name]
    assert mx.array_equal(_logits(m, interventions={site: facade_iv}),
                          m.steerable.run(PROMPT, interventions={site: native_iv}).logits)


def test_plain_callables_and_mlx_steer_interventions_are_accepted(facade):
    m = facade()
    doubled = _logits(m, interventions={"layers.1": lambda x: x * 2.0})
    assert mx.array_equal(doubled, _logits(m, interventions={"layers.1": iv.scale(2.0)}))
    clamped = _logits(m, interventions={"layers.1": iv.clamp(-0.5, 0.5)})
    by_custom = m.steerable.run(PROMPT, interventions={"layers.1": niv.custom(lambda x: mx.clip(x, -0.5, 0.5))})
    assert mx.array_equal(clamped, by_custom.logits)
    native = _logits(m, interventions={"layers.1": niv.add_vector(_vec(m), positions="last")})
    assert mx.array_equal(native, m.steerable.run(PROMPT, interventions={"layers.1": niv.add_vector(_vec(m), positions="last")}).logits)
    mx.random.seed(3)
    noisy = _logits(m, interventions={"layers.1": iv.noise(0.5)})
    mx.random.seed(3)
    assert mx.array_equal(noisy, _logits(m, interventions={"layers.1": iv.noise(0.5)}))
    assert not mx.allclose(noisy, _logits(m))


def test_broadcast_add_vector_adds_per_position(facade):
    m = facade()
    ids = m.encode(PROMPT)
    delta = np.random.default_rng(1).normal(size=(len(ids), m.steerable.hidden_size)).astype(np.float32)
    steered = _logits(m, interventions={"layers.2": iv.add_vector(mx.array(delta))})
    with layer_delta(m.model, 2, delta):
        by_hand = m(mx.array([ids]))
    np.testing.assert_allclose(np.array(steered), np.array(by_hand), rtol=1e-4, atol=1e-4)


def test_interventions_are_callables_as_in_mlxterp():
    x = mx.array(np.random.default_rng(0).normal(size=(2, 3, 8)).astype(np.float32))
    v = mx.arange(8, dtype=mx.float32)
    assert mx.array_equal(iv.add_vector(v)(x), x + v)
    assert mx.array_equal(iv.scale(3.0)(x), x * 3.0)
    assert mx.array_equal(iv.zero_out(x), mx.zeros_like(x))
    assert mx.array_equal(iv.replace_with(2.0)(x), mx.full(x.shape, 2.0))
    assert mx.array_equal(iv.clamp(max_val=0.1)(x), mx.minimum(x, 0.1))
    assert mx.array_equal(iv.compose().add(iv.scale(2.0)).add(lambda a: a - 1.0).build()(x), x * 2.0 - 1.0)
    assert "scale" in repr(iv.scale(2.0))
    with pytest.raises(ValueError, match="clamp needs"):
        iv.clamp()
    with pytest.raises(ValueError, match="non-finite"):
        iv.add_vector(mx.array([1.0, float("nan")]))


def test_bad_keys_and_values_raise_before_patching(facade):
    m = facade()
    base = _logits(m)

    def trace(interventions):
        with m.trace(PROMPT, interventions=interventions):
            pass

    with pytest.raises(ValueError, match="layer 9 out of range"):
        trace({"layers.9": iv.zero_out})
    with pytest.raises(ValueError, match="unknown site path"):
        trace({"layers.1.attn_typo": iv.zero_out})
    with pytest.raises(ValueError, match="must be a callable"):
        trace({"layers.1": 3.0})
    with pytest.raises(ValueError, match=r"steering vector has size 5 but site .model\.layers\.1. has size"):
        trace({"layers.1": iv.add_vector(mx.ones((5,)))})
    with pytest.raises(RuntimeError, match="inside `with model.trace"):
        _ = m.output
    with pytest.raises(RuntimeError, match="inside `with model.trace"):
        _ = m.layers[0].output
    with pytest.raises(KeyError), m.trace(PROMPT, interventions={"layers.1": iv.zero_out}):
        raise KeyError("body fails")
    assert not m._traces
    assert mx.array_equal(_logits(m), base)  # nothing left patched


@pytest.mark.parametrize("form", ["ids", "mx1d", "mx2d"])
def test_token_inputs_equal_text(facade, form):
    m = facade()
    ids = m.encode(PROMPT)
    inputs = {"ids": ids, "mx1d": mx.array(ids), "mx2d": mx.array([ids])}[form]
    assert mx.array_equal(_logits(m, inputs), _logits(m))


def test_text_batches_are_left_padded(facade):
    m = facade()
    prompts = [PROMPT, "Paris is"]
    with m.trace(prompts) as batch:
        pass
    assert batch.output.shape[0] == 2
    for row, p in enumerate(prompts):
        with m.trace(p) as single:
            pass
        for key, act in single.activations.items():
            np.testing.assert_allclose(np.array(batch.activations[key][row, -1]), np.array(act[0, -1]), atol=1e-5)


def test_layers_proxy(facade):
    m = facade()
    assert len(m.layers) == 4 and len(m.layers[1:3]) == 2
    with m.trace(PROMPT) as trace:
        saved = m.layers[1].output.save()
        last = m.layers[-1].output.save()
    assert saved is trace.activations["model.model.layers.1"]
    assert last is trace.activations["model.model.layers.3"]
    assert set(trace.saved_values) == {"layers.1.output", "layers.3.output"}
    assert trace.get("layers.1.output") is saved
    assert trace.get_activation("layers.1") is saved and trace.get_activation("model.model.layers.1") is saved
    assert trace.get_activation("layers.1.mlp") is None
    assert m.layers[0].mlp is m.model.layers[0].mlp  # other attributes are the layer's
    with pytest.raises(IndexError, match="layer 4 out of range"):
        m.layers[4]


def test_tokens(facade):
    m = facade()
    ids = m.encode(PROMPT)
    assert ids == m.steerable.encode(PROMPT) and m.encode_batch([PROMPT]) == [ids]
    assert m.token_to_str(ids[1]) == m.tokenizer.decode([ids[1]])
    assert m.decode(mx.array(ids)) == m.decode(ids) == m.tokenizer.decode(ids)
    assert "".join(m.to_str_tokens(PROMPT)) and m.vocab_size >= 300


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_generate_steers_every_step_like_full_recomputation(facade, arch):
    m = facade(arch)
    v = _vec(m, norm=6.0)
    result = m.generate(PROMPT, max_tokens=6, interventions={"layers.1": iv.add_vector(v)})
    ids = m.encode(PROMPT)
    eos = next(iter(m.steerable.eos_token_ids))
    # mlxterp re-runs the whole sequence each step; the cached loop must agree
    expected = greedy_recompute(m.model, ids, 6, index=1, delta_for=lambda T: np.tile(v, (T, 1)), eos=eos)
    assert result.tokens == expected
    assert result.tokens == m.steerable.generate_tokens(PROMPT, max_tokens=6, interventions={"layers.1": niv.add_vector(v)})
    assert result.text == m.decode(result.tokens) and result.prompt == PROMPT
    assert result.token_logits.shape == (len(result.tokens), m.model.args.vocab_size)
    assert mx.argmax(result.token_logits, axis=-1).tolist() == result.tokens
    first = _logits(m, interventions={"layers.1": iv.add_vector(v)})[0, -1]
    np.testing.assert_allclose(np.array(result.token_logits[0]), np.array(first), rtol=1e-4, atol=1e-4)


def test_generate_stops_on_callback_and_stop_tokens(facade):
    m = facade()
    full = m.generate(PROMPT, max_tokens=5)
    assert len(full.tokens) >= 3
    steps = []

    def stop_at_two(step, token, logits):
        steps.append((step, token, logits.shape))
        return step == 2

    cut = m.generate(PROMPT, max_tokens=5, callback=stop_at_two)
    assert cut.tokens == full.tokens[:2]
    assert [s[:2] for s in steps] == list(enumerate(full.tokens[:3]))
    stop = full.tokens[1]
    assert m.generate(PROMPT, max_tokens=5, stop_tokens=[stop]).tokens == full.tokens[: full.tokens.index(stop)]
    assert m.generate(m.encode(PROMPT), max_tokens=5).tokens == full.tokens
    with pytest.raises(ValueError, match="one prompt"):
        m.generate([PROMPT, PROMPT])


def test_constructors(tiny_dir, shared_models):
    from_path = InterpretableModel(str(tiny_dir("llama")))
    native = shared_models("llama")
    assert mx.array_equal(_logits(from_path), native.run(PROMPT).logits)
    from_module = InterpretableModel(native.model, tokenizer=native.tokenizer)
    assert isinstance(from_module.model, nn.Module) and mx.array_equal(_logits(from_module), native.run(PROMPT).logits)
    gpt2 = InterpretableModel(shared_models("gpt2"), layer_attr="h")
    with gpt2.trace(PROMPT, interventions={"h.1": iv.scale(0.5)}) as trace:
        gpt2.layers[1].output.save()
    assert "h.1.output" in trace.saved_values
    assert mx.array_equal(trace.output, shared_models("gpt2").run(PROMPT, interventions={"layers.1": niv.scale(0.5)}).logits)
    with pytest.raises(AttributeError, match="blocks"):
        InterpretableModel(native, layer_attr="blocks")
    with pytest.raises(ValueError, match="must be a path"):
        InterpretableModel(42)
    assert "layers=4" in repr(from_path)


def test_facade_keeps_the_wrapped_model_untouched(shared_models):
    native = shared_models("llama")
    names = [n for n, _ in native.model.named_modules()]
    params = dict(native.model.parameters())
    m = InterpretableModel(native)
    with m.trace(PROMPT, interventions={"layers.0": iv.add_vector(_vec(m)), "layers.1.mlp": iv.zero_out}):
        assert type(native.model.layers[0]).__name__ == "TransformerBlock"
    assert [n for n, _ in m.named_modules()] == names
    assert dict(m.parameters()).keys() == params.keys()
    assert isinstance(ms.SteerableModel, type)
