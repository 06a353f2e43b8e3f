"""No-ops are bit-identical; every exit path leaves the model bitwise as it was."""

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

import mlx_steer.backends.mlx.hooks as hk
from mlx_steer.engine import interventions as iv

PROMPT = "I love this wonderful day"


def snapshot(m):
    params = {k: np.array(v) for k, v in tree_flatten(m.model.parameters())}
    classes = {n: type(mod) for n, mod in m.model.named_modules()}
    return params, classes


def assert_untouched(m, before):
    params, classes = snapshot(m)
    assert params.keys() == before[0].keys()
    assert all(np.array_equal(params[k], before[0][k]) for k in params)
    assert classes == before[1]
    assert not any(hk.is_patched(mod) for _, mod in m.model.named_modules())


def logits(m, **kw):
    return np.array(m.run(PROMPT, **kw).logits)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_noops_are_bit_identical(shared_models, arch):
    m = shared_models(arch)
    base = np.array(m.model(mx.array([m.encode(PROMPT)])))
    v = np.ones(m.hidden_size, np.float32)
    for spec in (
        {"layers.1": iv.add_vector(v, scale=0.0)},
        {"layers.1": []},
        {"layers.1": iv.scale(1.0)},
        {"layers.1": iv.custom(lambda h: h)},
        {"layers.2.mlp:input": iv.add_vector(v, scale=0.0, positions="last")},
    ):
        assert np.array_equal(logits(m, interventions=spec), base), spec
    assert np.array_equal(logits(m, record=["layers.0", "layers.1:input"]), base)


def test_parameter_names_unchanged_while_patched(shared_models):
    m = shared_models("qwen2")
    names = [k for k, _ in tree_flatten(m.model.parameters())]
    with m.steer({"layers.1": iv.add_vector(np.ones(m.hidden_size)), "layers.1.self_attn.o_proj:input": iv.ablate_heads(0)}):
        assert [k for k, _ in tree_flatten(m.model.parameters())] == names
        assert [k for k, _ in tree_flatten(m.model.trainable_parameters())] == names
        assert type(m.model.layers[1]).__name__ == "TransformerBlock"


def test_exit_paths_restore_model(shared_models):
    m = shared_models("llama")
    before = snapshot(m)
    base = logits(m)
    v = np.ones(m.hidden_size, np.float32) * 5
    with m.steer({"layers.1": iv.add_vector(v)}):
        assert not np.array_equal(logits(m), base)
    assert_untouched(m, before)
    with pytest.raises(RuntimeError, match="boom"):
        with m.steer({"layers.1": iv.add_vector(v)}):
            raise RuntimeError("boom")
    assert_untouched(m, before)
    with pytest.raises(RuntimeError, match="boom"):
        with m.trace(PROMPT, interventions={"layers.1": iv.add_vector(v)}, record=["layers.2"]):
            raise RuntimeError("boom")
    assert_untouched(m, before)
    handle = m.steer({"layers.1": iv.add_vector(v)})
    steered = logits(m)
    assert np.array_equal(logits(m), steered)  # persists across calls
    handle.remove()
    handle.remove()  # idempotent
    assert_untouched(m, before)
    assert np.array_equal(logits(m), base)


def test_generation_stopped_early_restores_model(shared_models):
    m = shared_models("llama")
    before = snapshot(m)
    stream = m.stream_generate(PROMPT, max_tokens=20, interventions={"layers.1": iv.add_vector(np.ones(m.hidden_size))})
    next(stream)
    assert hk.is_patched(m.model.layers[1])
    stream.close()
    assert_untouched(m, before)


def test_failing_custom_intervention_restores_model(shared_models):
    m = shared_models("llama")
    before = snapshot(m)

    def bad(h):
        raise ZeroDivisionError("inside the forward")

    with pytest.raises(ZeroDivisionError):
        m.run(PROMPT, interventions={"layers.2": bad})
    with pytest.raises(ZeroDivisionError):
        m.generate(PROMPT, max_tokens=3, interventions={"layers.2": bad})
    assert_untouched(m, before)


def test_install_failing_halfway_restores_model(shared_models, monkeypatch):
    m = shared_models("llama")
    before = snapshot(m)
    real_attach, calls = hk.attach, []

    def flaky(module, entry):
        calls.append(module)
        if len(calls) == 3:
            raise MemoryError("simulated failure on the third patch")
        real_attach(module, entry)

    monkeypatch.setattr(hk, "attach", flaky)
    spec = {f"layers.{i}": iv.add_vector(np.ones(m.hidden_size)) for i in range(4)}
    with pytest.raises(MemoryError):
        m.steer(spec)
    assert len(calls) == 3
    monkeypatch.undo()
    assert_untouched(m, before)


def test_nested_hooks_stack_and_unwind(shared_models):
    m = shared_models("llama")
    before = snapshot(m)
    v = np.random.default_rng(0).normal(size=m.hidden_size).astype(np.float32)
    clean = np.array(m.run(PROMPT, record=["layers.1"]).activations["layers.1"])
    with m.steer({"layers.1": iv.add_vector(v)}):
        with m.steer({"layers.1": iv.add_vector(v, scale=2.0)}):
            inner = np.array(m.run(PROMPT, record=["layers.1"]).activations["layers.1"])
        outer = np.array(m.run(PROMPT, record=["layers.1"]).activations["layers.1"])
    np.testing.assert_allclose(inner, clean + 3 * v, atol=1e-5)
    assert np.array_equal(outer, clean + v)
    assert_untouched(m, before)
