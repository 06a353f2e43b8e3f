"""Per-row steering: one forward (and one generation) carries different interventions per batch
row; every row equals its solo run. The oracle is the same model run one prompt at a time."""

import numpy as np
import pytest

from mlx_steer.engine import interventions as iv
from mlx_steer.engine.positions import Positions
from tiny_models import ARCHS
from torch_fixtures import *  # noqa: F403  (fixtures)
from torch_fixtures import BACKENDS, patch_attach

PROMPTS = ["I love", "The weather is great, happy people walk", "Tell me a story about"]


def vectors(m, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=m.hidden_size).astype(np.float32) * 3 for _ in range(3)]


def every_kind(m):
    """One per-row spec per intervention kind (and a row left unsteered)."""
    v, w, u = vectors(m)
    heads = f"layers.1.{'attn.c_proj' if 'transformer.h.1.attn.c_proj' in m.modules else 'self_attn.o_proj'}:input"
    if "transformer.h.1.attn.c_proj" not in m.modules and "model.layers.1.self_attn.o_proj" not in m.modules:
        heads = None
    specs = [
        {"layers.1": iv.add_vector(v, scale=4.0, positions="last")},
        {"layers.2": iv.add_vector(np.stack([w, u]))},  # front-aligned: positions 0 and 1
        {"layers.0": iv.scale(1.7), "layers.2": iv.zero(positions=[1, 2])},
        {"layers.1": iv.mean_ablate(u, positions="prompt")},
        {"layers.2": iv.project_out(v)},
        {"layers.1": iv.custom(lambda h: h * 0.5 + 1.0, positions=[0])},
    ]
    if heads is not None:
        specs.append({heads: iv.ablate_heads([0, 2])})
    return specs


def last_logits(m, trace, b=0):
    return m.to_numpy(trace.logits)[b, -1]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arch", ARCHS)
def test_each_row_of_a_forward_equals_its_solo_run(backend_models, backend, arch):
    m = backend_models(backend, arch)
    for spec in every_kind(m):
        per_row = [None, spec, {"layers.1": iv.add_vector(vectors(m, 1)[0], scale=-2.0)}]
        batch = m.run(PROMPTS, interventions=per_row, record={"layers.2": "last"})
        for b, prompt in enumerate(PROMPTS):
            solo = m.run(prompt, interventions=per_row[b], record={"layers.2": "last"})
            np.testing.assert_allclose(last_logits(m, batch, b), last_logits(m, solo), atol=1e-5, err_msg=f"{spec} row {b}")
            np.testing.assert_allclose(m.to_numpy(batch.activations["layers.2"])[b],
                                       m.to_numpy(solo.activations["layers.2"])[0], atol=1e-5)
        # the steered row really differs from the unsteered one (the oracle can fail)
        plain = m.run(PROMPTS[1])
        assert np.abs(last_logits(m, batch, 1) - last_logits(m, plain)).max() > 1e-3, spec


@pytest.mark.parametrize("backend", BACKENDS)
def test_unsteered_rows_are_bit_identical_to_an_unsteered_batch(backend_models, backend):
    m = backend_models(backend, "llama")
    v = vectors(m)[0]
    plain = m.to_numpy(m.run(PROMPTS).logits)
    steered = m.to_numpy(m.run(PROMPTS, interventions=[None, {"layers.1": iv.add_vector(v, scale=8.0)}, None]).logits)
    assert np.array_equal(steered[[0, 2]], plain[[0, 2]])
    assert not np.allclose(steered[1], plain[1], atol=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arch", ARCHS)
def test_batch_generate_rows_equal_solo_generation(backend_models, backend, arch):
    m = backend_models(backend, arch)
    v, w, _ = vectors(m)
    per_row = [
        None,
        {"layers.1": iv.add_vector(v, scale=4.0)},
        {"layers.2": iv.add_vector(w, scale=-2.0, positions="generated")},
        {"layers.1": iv.add_vector(w, scale=3.0, positions=Positions.first_generated(2))},
    ]
    prompts = PROMPTS + ["A"]
    out = m.batch_generate(prompts, max_tokens=6, interventions=per_row)
    for b, prompt in enumerate(prompts):
        assert out.token_ids[b] == m.generate_tokens(prompt, max_tokens=6, interventions=per_row[b]), f"row {b}"
        assert out.texts[b] == m.prompts.decode(out.token_ids[b])
    assert out.token_ids[1] != m.generate_tokens(prompts[1], max_tokens=6)  # steering shows


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_generate_one_spec_for_every_row(backend_models, backend):
    m = backend_models(backend, "qwen2")
    spec = {"layers.1": iv.add_vector(vectors(m)[0], scale=4.0)}
    out = m.batch_generate(PROMPTS, max_tokens=5, interventions=spec)
    assert out.token_ids == [m.generate_tokens(p, max_tokens=5, interventions=spec) for p in PROMPTS]
    assert out.finish_reasons == ["length"] * 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_are_reassigned_without_reinstalling(fresh_models, backend, monkeypatch):
    """The row -> steering map changes between forwards while the patches stay installed."""
    m = fresh_models(backend, "llama")
    v, w, _ = vectors(m)
    a, b = {"layers.1": iv.add_vector(v, scale=4.0)}, {"layers.2": iv.add_vector(w, scale=-3.0)}
    attached = []
    patch_attach(m, monkeypatch, lambda real: lambda module, *rest: (
        attached.append(module) if module is not m.model else None, real(module, *rest))[1])
    with m.hooks() as hooks:
        hooks.assign(1, a)
        hooks.assign(0, b)
        first = m.to_numpy(m.run(PROMPTS[:2]).logits)[:, -1]
        n_attached = len(attached)
        hooks.release(0)
        hooks.assign(1, b)  # replaces a for row 1
        hooks.assign(0, a)
        second = m.to_numpy(m.run(PROMPTS[:2]).logits)[:, -1]
        hooks.release(0)
        hooks.release(1)
        third = m.to_numpy(m.run(PROMPTS[:2]).logits)[:, -1]
        assert len(attached) == n_attached == 2  # one patch per site, none re-made by reassigning
    solo = {name: [last_logits(m, m.run(p, interventions=s)) for p in PROMPTS[:2]]
            for name, s in (("none", None), ("a", a), ("b", b))}
    for got, want in ((first, ("b", "a")), (second, ("a", "b")), (third, ("none", "none"))):
        for row in (0, 1):
            np.testing.assert_allclose(got[row], solo[want[row]][row], atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_per_row_input_is_rejected_before_anything_runs(fresh_models, backend):
    m = fresh_models(backend, "llama")
    v = vectors(m)[0]
    with pytest.raises(ValueError, match=r"got 2 entries for 3 prompts"):
        m.run(PROMPTS, interventions=[None, {"layers.1": iv.add_vector(v)}])
    with pytest.raises(ValueError, match=r"steering vector has size 3 but site 'model\.layers\.1' has size 64"):
        m.run(PROMPTS, interventions=[None, None, {"layers.1": iv.add_vector(np.ones(3))}])
    with pytest.raises(ValueError, match=r"rows must be non-negative ints"):
        iv.zero().for_rows(-1)
    with pytest.raises(ValueError, match=r"cannot widen"):
        iv.zero().for_rows(1).for_rows(2)
    with m.hooks() as hooks:
        with pytest.raises(ValueError, match=r"unknown site path"):
            hooks.assign(0, {"layers.1.mpl": iv.zero()})
        assert not any(p.ops for p in hooks._programs.values())

