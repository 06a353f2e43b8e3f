"""Continuous batching with per-sequence steering: sequences join, finish and leave between
steps, each keeps its own steering by uid, and each equals its solo generation (the oracle)."""

import numpy as np
import pytest

from mlx_steer.engine import interventions as iv
from mlx_steer.engine import compiling
from mlx_steer.engine.continuous import Monitor
from torch_fixtures import *  # noqa: F403  (fixtures)
from torch_fixtures import BACKENDS

PROMPTS = ["I love", "The weather is great, happy people walk", "Tell me a story", "Once"]


def setup(m):
    rng = np.random.default_rng(4)
    v, u = (rng.normal(size=m.hidden_size).astype(np.float32) for _ in range(2))
    specs = [None, {"layers.1": iv.add_vector(v, scale=12.0)},
             {"layers.2": iv.add_vector(v, scale=-6.0, positions="generated")}, {"layers.0": iv.scale(0.5)}]
    return [m.encode(p) for p in PROMPTS], specs, u


def drain(gen, out, projections, steps=None):
    n = 0
    while gen.active and (steps is None or n < steps):
        for e in gen.step():
            out.setdefault(e.uid, []).append(e.token)
            projections.setdefault(e.uid, []).append(e.projections.get("u"))
        n += 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_sequences_join_and_leave_with_their_own_steering(backend_models, backend):
    m = backend_models(backend, "qwen2")
    prompts, specs, _ = setup(m)
    out, proj = {}, {}
    with m.batch_generator() as gen:
        uids = [gen.insert(prompts[0], max_tokens=7), gen.insert(prompts[1], max_tokens=9, interventions=specs[1])]
        drain(gen, out, proj, steps=3)
        uids.append(gen.insert(prompts[2], max_tokens=6, interventions=specs[2]))  # joins mid-way
        doomed = gen.insert(prompts[3], max_tokens=9, interventions=specs[3])
        drain(gen, out, proj, steps=4)
        gen.remove(doomed)  # leaves mid-way; the others go on
        drain(gen, out, proj)
        assert gen.active == 0
    for i, uid in enumerate(uids):
        solo = m.generate_tokens(prompts[i], max_tokens=[7, 9, 6][i], interventions=specs[i])
        assert out[uid] == solo, f"sequence {i}"
    assert out[uids[1]] != m.generate_tokens(prompts[1], max_tokens=9)  # its steering shows
    assert len(out.get(doomed, [])) < 9  # it left before finishing


@pytest.mark.parametrize("backend", BACKENDS)
def test_seeded_sampled_sequences_draw_as_they_would_alone(backend_models, backend):
    """Several sampled sequences in one batch: each seeded one draws the tokens it draws alone."""
    m = backend_models(backend, "llama")
    prompts, specs, _ = setup(m)
    options = [dict(temp=0.9, seed=5), dict(temp=1.3, top_p=0.9, seed=77), {}, dict(temp=0.7, top_k=20, seed=5)]
    out, proj = {}, {}
    with m.batch_generator() as gen:
        uids = [gen.insert(p, max_tokens=10, interventions=spec, **opt)
                for p, spec, opt in zip(prompts, specs, options)]
        drain(gen, out, proj)
    for i, uid in enumerate(uids):
        solo = m.generate_tokens(prompts[i], max_tokens=10, interventions=specs[i], **options[i])
        assert out[uid] == solo, f"sequence {i}"
    again = m.generate_tokens(prompts[1], max_tokens=10, interventions=specs[1], **{**options[1], "seed": 78})
    assert again != out[uids[1]]  # the seed matters: another seed draws other tokens


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("before", [False, True])
def test_monitor_reads_each_token_like_a_recording(backend_models, backend, before):
    """A monitor's per-token projection equals the solo run's recorded last position projected
    on the direction, read after the site's steering or (``before``) the model's own value."""
    m = backend_models(backend, "llama")
    prompts, specs, u = setup(m)
    spec = {"layers.2": iv.add_vector(u, scale=5.0)}  # steer along the monitored direction
    out, proj = {}, {}
    with m.batch_generator() as gen:
        other = gen.insert(prompts[0], max_tokens=4, interventions=specs[1])
        uid = gen.insert(prompts[1], max_tokens=6, interventions=spec,
                         monitors={"u": Monitor("layers.2", u, before_interventions=before)})
        drain(gen, out, proj)
    hooks = []
    stage = "before" if before else "after"
    tokens = [r.token for r in m.stream_generate(prompts[1], max_tokens=6, interventions=spec, record=["layers.2"],
                                                 record_stage=stage, hooks_out=hooks)]
    acts = m.to_numpy(hooks[0].activations["layers.2"])[0]
    want = acts[: len(tokens)] @ (u / np.linalg.norm(u))
    assert out[uid] == tokens
    np.testing.assert_allclose(proj[uid], want, rtol=1e-4, atol=1e-4)
    assert proj[other] == [None] * len(out[other])


@pytest.mark.parametrize("backend", BACKENDS)
def test_record_stage_before_reads_the_models_own_value(backend_models, backend):
    """Steering along u at a site moves what flows on by the vector; recording ``before`` the
    site's interventions reads what the unsteered model computes there."""
    m = backend_models(backend, "llama")
    _, _, u = setup(m)
    spec = {"layers.2": iv.add_vector(u, scale=5.0)}
    after, before, plain = (m.to_numpy(m.run(PROMPTS[:2], record=["layers.2"], interventions=i, record_stage=st)
                                       .activations["layers.2"])
                            for i, st in ((spec, "after"), (spec, "before"), (None, "after")))
    np.testing.assert_allclose(before, plain, atol=1e-5)
    real = np.array(m.run(PROMPTS[:2]).padding)[:, None] <= np.arange(after.shape[1])[None]
    np.testing.assert_allclose((after - before)[real], np.broadcast_to(5.0 * u, (int(real.sum()), u.size)), atol=1e-4)
    with pytest.raises(ValueError, match=r"unknown record_stage 'during'; valid: after, before"):
        m.run(PROMPTS[0], record=["layers.2"], record_stage="during")


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_insert_leaves_nothing_behind(backend_models, backend):
    m = backend_models(backend, "llama")
    prompts, specs, u = setup(m)
    with m.batch_generator() as gen:
        with pytest.raises(ValueError, match=r"steering vector has size 3"):
            gen.insert(prompts[0], max_tokens=4, interventions={"layers.1": iv.add_vector(np.ones(3))})
        with pytest.raises(ValueError, match=r"max_tokens must be a positive int"):
            gen.insert(prompts[0], max_tokens=0)
        with pytest.raises(ValueError, match=r"monitor 'u' direction has shape \(3,\)"):
            gen.insert(prompts[0], max_tokens=4, monitors={"u": Monitor("layers.1", np.ones(3))})
        with pytest.raises(ValueError, match=r"position index 99 out of range"):
            gen.insert(prompts[0], max_tokens=4, interventions={"layers.1": iv.zero(positions=99)})
        assert gen.active == 0
        uid = gen.insert(prompts[0], max_tokens=5)
        out, proj = {}, {}
        drain(gen, out, proj)
    assert out[uid] == m.generate_tokens(prompts[0], max_tokens=5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_insert_plans_a_sequences_steering_once(backend_models, backend, monkeypatch):
    """A sequence's steering is resolved and checked once on insert, and that plan is what its row gets."""
    m = backend_models(backend, "llama")
    calls = []
    original = compiling.plan_sites

    def counting(resolver, **kwargs):
        calls.append(kwargs)
        return original(resolver, **kwargs)

    v = np.random.default_rng(5).normal(size=m.hidden_size).astype(np.float32)
    steer = {"layers.1": iv.add_vector(v, scale=12.0)}
    alone = m.generate_tokens(PROMPTS[0], max_tokens=3, interventions=steer)
    with m.batch_generator() as gen:
        monkeypatch.setattr(compiling, "plan_sites", counting)
        uid = gen.insert(m.encode(PROMPTS[0]), max_tokens=3, interventions=steer)
        assert len(calls) == 1
        tokens = []
        while events := gen.step():
            tokens += [e.token for e in events if e.uid == uid]
    assert tokens == alone
