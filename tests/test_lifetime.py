"""No-ops are bit-identical; every exit path leaves the model bitwise as it was. On both backends,
against the bare model's logits and a snapshot of parameters, module classes and hooks."""

import numpy as np
import pytest
from mlx.utils import tree_flatten

from mlx_steer.engine import interventions as iv
from torch_fixtures import *  # noqa: F403  (fixtures)
from torch_fixtures import (
    BACKENDS, assert_untouched, is_patched, np_, patch_attach, raw_logits, snapshot, torch_hook_ids,
)

PROMPT = "I love this wonderful day"


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_noops_are_bit_identical(backend_models, backend, arch):
    m = backend_models(backend, arch)
    base = raw_logits(m, m.encode(PROMPT))
    v = np.ones(m.hidden_size, np.float32)
    mlp_in = "layers.2.mlp:input"
    for spec in (
        {"layers.1": iv.add_vector(v, scale=0.0)},
        {"layers.1": []},
        {"layers.1": iv.scale(1.0)},
        {"layers.1": iv.custom(lambda h: h)},
        {mlp_in: iv.add_vector(v, scale=0.0, positions="last")},
        {"layers.1": iv.add_vector(v).for_rows(5)},  # a row this batch does not have: selects nothing
    ):
        assert np.array_equal(np_(m, m.run(PROMPT, interventions=spec).logits), base), spec
    assert np.array_equal(np_(m, m.run(PROMPT, record=["layers.0", "layers.1:input", "layers.1.mlp"]).logits), base)


def test_parameter_names_unchanged_while_patched(shared_models):
    m = shared_models("qwen2")
    names = [k for k, _ in tree_flatten(m.model.parameters())]
    with m.steer({"layers.1": iv.add_vector(np.ones(m.hidden_size)), "layers.1.self_attn.o_proj:input": iv.ablate_heads(0)}):
        assert [k for k, _ in tree_flatten(m.model.parameters())] == names
        assert [k for k, _ in tree_flatten(m.model.trainable_parameters())] == names
        assert type(m.model.layers[1]).__name__ == "TransformerBlock"


@pytest.mark.parametrize("backend", BACKENDS)
def test_exit_paths_restore_model(fresh_models, backend):
    m = fresh_models(backend, "llama")
    before = snapshot(m)
    base = np_(m, m.run(PROMPT).logits)
    v = np.ones(m.hidden_size, np.float32) * 5
    with m.steer({"layers.1": iv.add_vector(v)}):
        assert not np.array_equal(np_(m, m.run(PROMPT).logits), base)
    assert_untouched(m, before)
    with pytest.raises(RuntimeError, match="boom"), m.steer({"layers.1": iv.add_vector(v)}):
        raise RuntimeError("boom")
    assert_untouched(m, before)
    with pytest.raises(RuntimeError, match="boom"):
        with m.trace(PROMPT, interventions={"layers.1": iv.add_vector(v)}, record=["layers.2"]):
            raise RuntimeError("boom")
    assert_untouched(m, before)
    handle = m.steer({"layers.1": iv.add_vector(v), "layers.1.self_attn.o_proj:input": iv.ablate_heads(0)})
    steered = np_(m, m.run(PROMPT).logits)
    assert np.array_equal(np_(m, m.run(PROMPT).logits), steered)  # persists across calls
    handle.remove()
    handle.remove()  # idempotent
    assert_untouched(m, before)
    assert np.array_equal(np_(m, m.run(PROMPT).logits), base)
    if backend == "torch":
        assert torch_hook_ids(m.model) == {}  # not one hook left on any module


@pytest.mark.parametrize("backend", BACKENDS)
def test_generation_stopped_early_restores_model(fresh_models, backend):
    m = fresh_models(backend, "llama")
    before = snapshot(m)
    stream = m.stream_generate(PROMPT, max_tokens=20, interventions={"layers.1": iv.add_vector(np.ones(m.hidden_size))})
    next(stream)
    assert is_patched(m, "model.layers.1")
    stream.close()
    assert_untouched(m, before)


@pytest.mark.parametrize("backend", BACKENDS)
def test_failing_custom_intervention_restores_model(fresh_models, backend):
    m = fresh_models(backend, "llama")
    before = snapshot(m)

    def bad(h):
        raise ZeroDivisionError("inside the forward")

    with pytest.raises(ZeroDivisionError):
        m.run(PROMPT, interventions={"layers.2": bad})
    with pytest.raises(ZeroDivisionError):
        m.generate(PROMPT, max_tokens=3, interventions={"layers.2": bad})
    assert_untouched(m, before)


@pytest.mark.parametrize("backend", BACKENDS)
def test_install_failing_halfway_restores_model(fresh_models, backend, monkeypatch):
    m = fresh_models(backend, "llama")
    before = snapshot(m)
    calls = []

    def wrapper(real):
        def flaky(*args):
            calls.append(args[0])
            if len(calls) == 3:
                raise MemoryError("simulated failure on the third hook")
            return real(*args)

        return flaky

    patch_attach(m, monkeypatch, wrapper)
    with pytest.raises(MemoryError):
        m.steer({f"layers.{i}": iv.add_vector(np.ones(m.hidden_size)) for i in range(4)})
    assert len(calls) == 3
    monkeypatch.undo()
    assert_untouched(m, before)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nested_hooks_stack_and_unwind(fresh_models, backend):
    m = fresh_models(backend, "llama")
    before = snapshot(m)
    v = np.random.default_rng(0).normal(size=m.hidden_size).astype(np.float32)
    clean = np_(m, m.run(PROMPT, record=["layers.1"]).activations["layers.1"])
    with m.steer({"layers.1": iv.add_vector(v)}):
        with m.steer({"layers.1": iv.add_vector(v, scale=2.0)}):
            inner = np_(m, m.run(PROMPT, record=["layers.1"]).activations["layers.1"])
        outer = np_(m, m.run(PROMPT, record=["layers.1"]).activations["layers.1"])
    np.testing.assert_allclose(inner, clean + 3 * v, atol=1e-5)
    assert np.array_equal(outer, clean + v)
    assert_untouched(m, before)
