"""Steered generation through the KV-cached loop (mlx-lm's on MLX, mlx_steer's on torch) equals full
recomputation, for every selector."""

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.generate import generate_step
from mlx_lm.sample_utils import make_logits_processors, make_sampler

from mlx_steer.engine import interventions as iv
from mlx_steer.engine.positions import Positions
from tiny_models import ARCHS
from torch_fixtures import *  # noqa: F403  (fixtures)
from torch_fixtures import BACKENDS, greedy_recompute, np_

PROMPT = "Tell me a story about a cat who lives on"
N_NEW = 10
LAYER = 1


def _selected(name, P, T):
    """Positions selected by each selector, written out independently of mlx_steer."""
    p = np.arange(T)
    return {
        "all": p >= 0,
        "last": p >= P - 1,
        "index": p == 3,
        "indices": np.isin(p, [0, P - 1, P + 2]),
        "window": (p >= 2) & (p < P + 3),
        "prompt": p < P,
        "generated": p >= P,
        "first_generated": (p >= P) & (p < P + 3),
    }[name]


SELECTORS = {
    "all": lambda P: "all",
    "last": lambda P: "last",
    "index": lambda P: 3,
    "indices": lambda P: [0, P - 1, P + 2],
    "window": lambda P: Positions.window(2, P + 3),
    "prompt": lambda P: "prompt",
    "generated": lambda P: "generated",
    "first_generated": lambda P: Positions.first_generated(3),
}


def _vector(m, seed=3, norm=None):
    v = np.random.default_rng(seed).normal(size=m.hidden_size).astype(np.float32)
    return v * (norm / np.linalg.norm(v)) if norm else v


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("selector", list(SELECTORS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_cached_generation_equals_recompute(backend_models, backend, arch, selector):
    m = backend_models(backend, arch)
    prompt = m.encode(PROMPT)
    P = len(prompt)
    v = _vector(m, norm=40.0)
    spec = {f"layers.{LAYER}": iv.add_vector(v, positions=SELECTORS[selector](P))}

    def delta_for(T):
        return _selected(selector, P, T)[:, None] * v[None]

    expected = greedy_recompute(m, prompt, N_NEW, index=LAYER, delta_for=delta_for)
    for step in (2048, 3):  # one prefill chunk, and many small ones
        got = m.generate_tokens(prompt, max_tokens=N_NEW, interventions=spec, prefill_step_size=step)
        assert got == expected, (backend, arch, selector, step)
    if selector in ("all", "last", "prompt"):  # the oracle must be able to tell steering apart
        plain = greedy_recompute(m, prompt, N_NEW, index=LAYER, delta_for=lambda T: np.zeros((T, m.hidden_size), np.float32))
        assert plain != expected


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_front_aligned_tensor_in_generation(backend_models, backend, arch):
    m = backend_models(backend, arch)
    prompt = m.encode(PROMPT)
    delta = np.random.default_rng(5).normal(size=(4, m.hidden_size)).astype(np.float32) * 30

    def delta_for(T):
        d = np.zeros((T, m.hidden_size), np.float32)
        d[:4] = delta
        return d

    expected = greedy_recompute(m, prompt, N_NEW, index=LAYER, delta_for=delta_for)
    for step in (2048, 2):
        got = m.generate_tokens(prompt, max_tokens=N_NEW, prefill_step_size=step,
                                interventions={f"layers.{LAYER}": iv.add_vector(delta)})
        assert got == expected


def test_multi_layer_weighted_steering_in_generation(shared_models):
    m = shared_models("qwen2")
    prompt = m.encode(PROMPT)
    v = _vector(m, norm=20.0)
    spec = {"layers.0": iv.add_vector(v, scale=0.5), "layers.2": iv.add_vector(v, scale=1.5)}
    tokens_a = m.generate_tokens(prompt, max_tokens=N_NEW, interventions=spec)
    # oracle: two test-owned wrappers at once
    from oracles import layer_delta

    seq, out = list(prompt), []
    for _ in range(N_NEW):
        T = len(seq)
        with layer_delta(m.model, 0, np.tile(0.5 * v, (T, 1))), layer_delta(m.model, 2, np.tile(1.5 * v, (T, 1))):
            tok = int(mx.argmax(m.model(mx.array([seq]))[0, -1]).item())
        if tok == 2:
            break
        out.append(tok)
        seq.append(tok)
    assert tokens_a == out


def test_samplers_and_processors_pass_through(shared_models):
    """With no interventions, our loop is mlx-lm's loop: same sampled tokens for the same seed."""
    m = shared_models("llama")
    prompt = m.encode(PROMPT)
    opts = dict(temp=0.8, top_p=0.9, min_p=0.05, repetition_penalty=1.3)
    sampler = make_sampler(temp=0.8, top_p=0.9, min_p=0.05)
    procs = make_logits_processors(repetition_penalty=1.3, repetition_context_size=20)
    mx.random.seed(11)
    expected = [t for t, _ in generate_step(mx.array(prompt), m.model, max_tokens=15, sampler=sampler, logits_processors=procs)]
    eos = set(m.tokenizer.eos_token_ids)
    expected = expected[: next((i for i, t in enumerate(expected) if t in eos), len(expected))]
    got = m.generate_tokens(prompt, max_tokens=15, seed=11, **opts)
    assert got == expected
    got_noop = m.generate_tokens(prompt, max_tokens=15, seed=11, interventions={"layers.1": iv.add_vector(_vector(m), scale=0.0)}, **opts)
    assert got_noop == expected


@pytest.mark.parametrize("backend", BACKENDS)
def test_recording_while_generating_uses_absolute_positions(backend_models, backend):
    m = backend_models(backend, "llama")
    prompt = m.encode(PROMPT)
    hooks = []
    toks = m.generate_tokens(prompt, max_tokens=6, record=["layers.2"], record_positions="last",
                             prefill_step_size=3, hooks_out=hooks)
    rec = np_(m, hooks[0].activations["layers.2"])[0]
    full = np_(m, m.run([prompt + toks], record=["layers.2"]).activations["layers.2"])[0]
    # the last prompt token, then every generated token fed back (the loop computes one step ahead)
    assert rec.shape[0] == len(toks) + 1
    np.testing.assert_allclose(rec, full[len(prompt) - 1 :], atol=1e-5)
