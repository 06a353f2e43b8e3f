"""The engine under bad or unusual input, on both backends: a clear error naming the value (the
model left untouched), or the right result against an oracle — never a crash, a leak or a silent
wrong result."""

import sys
import threading

import numpy as np
import pytest

from mlx_steer.engine import interventions as iv
from mlx_steer.engine.positions import Positions
from torch_fixtures import *  # noqa: F403  (fixtures)
from torch_fixtures import BACKENDS, assert_untouched, snapshot

PROMPTS = ["I love", "The weather is great, happy people walk"]


def vector(m, seed=0, norm=8.0):
    v = np.random.default_rng(seed).normal(size=m.hidden_size).astype(np.float32)
    return v / np.linalg.norm(v) * norm


# -- 1, 11: token ids and input types ---------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_token_ids_outside_the_vocabulary_are_refused_everywhere(fresh_models, backend):
    m = fresh_models(backend, "llama")
    before = snapshot(m)
    V = m.vocab_size
    assert V == 384
    calls = [lambda ids: m.run(ids), lambda ids: m.generate(ids, max_tokens=2), lambda ids: m.generate_tokens(ids),
             lambda ids: m.stream_generate(ids), lambda ids: m.batch_generate([ids, [1, 2]], max_tokens=2),
             lambda ids: m.run([[1, 2], ids])]
    for ids, bad in (([1, 99999], 99999), ([1, V], V), ([-1, 2], -1)):
        for call in calls:
            with pytest.raises(ValueError, match=rf"token id {bad} is outside the vocabulary of 384 tokens; valid: 0\.\.383"):
                call(ids)
        with m.batch_generator() as gen, pytest.raises(ValueError, match=rf"token id {bad} is outside"):
            gen.insert(ids, max_tokens=2)
    assert_untouched(m, before)


@pytest.mark.parametrize("backend", BACKENDS)
def test_prompt_types(backend_models, backend):
    m = backend_models(backend, "llama")
    ids = m.encode(PROMPTS[1])
    want = m.to_numpy(m.run(ids).logits)
    for same in (np.array(ids), [np.int64(t) for t in ids], np.array([ids])):
        np.testing.assert_array_equal(m.to_numpy(m.run(same).logits), want)
    for bad, message in ((None, "got NoneType"), (5, "got int"), ([1.5, 2], "got float"), ([True], "got bool"),
                         (np.array([1.0, 2.0]), "1-D integer array")):
        with pytest.raises(TypeError, match=message):
            m.run(bad)
    with pytest.raises(ValueError, match=r"prefill_step_size must be a positive int, got 0"):
        m.generate(ids, max_tokens=3, prefill_step_size=0)
    with pytest.raises(ValueError, match=r"max_tokens must be a positive int, got -5"):
        m.stream_generate(ids, max_tokens=-5)  # at the call, before any next()
    with pytest.raises(ValueError, match=r"ablate_heads needs an attention output projection's input"):
        m.run(ids, interventions={"layers.1.self_attn.q_proj:input": iv.ablate_heads([0])})


# -- 2, 10: one call at a time ---------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_interleaved_generators_raise_instead_of_leaking(backend_models, backend):
    m = backend_models(backend, "llama")
    plain = m.generate_tokens(PROMPTS[0], max_tokens=4)
    steered = m.stream_generate(PROMPTS[1], max_tokens=4, interventions={"layers.1": iv.add_vector(vector(m), scale=4)})
    next(steered)
    with pytest.raises(RuntimeError, match=r"stream_generate started while this model is still running stream_generate "
                                           r"\(in this thread: an unfinished stream_generate"):
        next(m.stream_generate(PROMPTS[0], max_tokens=4))
    with pytest.raises(RuntimeError, match="a model runs one call at a time"):
        m.run(PROMPTS[0])
    steered.close()  # finishing (or closing) the first lets the next one run, unsteered
    assert m.generate_tokens(PROMPTS[0], max_tokens=4) == plain


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_second_thread_gets_a_clear_error_not_the_first_threads_steering(backend_models, backend):
    m = backend_models(backend, "llama")
    plain = m.generate_tokens(PROMPTS[0], max_tokens=4)
    inside, release, errors = threading.Event(), threading.Event(), []

    def hold(h):
        inside.set()
        release.wait(timeout=30)
        return h

    def steered():
        try:
            m.generate(PROMPTS[1], max_tokens=2, interventions={"layers.1": [iv.add_vector(vector(m)), iv.custom(hold)]})
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    t = threading.Thread(target=steered)
    t.start()
    try:
        assert inside.wait(timeout=30)
        with pytest.raises(RuntimeError, match=r"while this model is still running stream_generate \(in another thread\)"):
            m.generate_tokens(PROMPTS[0], max_tokens=4)
    finally:
        release.set()
        t.join(timeout=60)
    assert not errors and not t.is_alive()
    assert m.generate_tokens(PROMPTS[0], max_tokens=4) == plain


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_forward_from_inside_an_intervention_is_refused(backend_models, backend):
    m = backend_models(backend, "llama")
    with pytest.raises(RuntimeError, match=r"run started while this model is still running run"):
        m.run(PROMPTS[0], interventions={"layers.1": iv.custom(lambda h: m.run(PROMPTS[1]) and h)})
    m.run(PROMPTS[0])  # and the model is usable again


def hold_final_norm(m, entered: threading.Event, release: threading.Event):
    """Make ``m``'s final norm wait for ``release`` when unembed runs it (a test-owned wrapper, not
    mlx_steer's hooks: unembed runs the model's modules as if unpatched)."""
    norm = m.modules[m.final_norm_path]

    def wait() -> None:
        entered.set()
        assert release.wait(timeout=60)

    if hasattr(norm, "forward"):  # torch: unembed calls .forward
        original = norm.forward

        def forward(*args, **kwargs):
            wait()
            return original(*args, **kwargs)

        norm.forward = forward
        return lambda: delattr(norm, "forward")
    cls = type(norm)

    class Held(cls):  # MLX: __call__ is looked up on the class
        def __call__(self, *args, **kwargs):
            wait()
            return super().__call__(*args, **kwargs)

    Held.__name__ = Held.__qualname__ = cls.__name__  # still found as the final norm by its name
    norm.__class__ = Held
    return lambda: setattr(norm, "__class__", cls)


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_models_in_two_threads_keep_their_own_steering(fresh_models, backend):
    """While one model's unembed runs (its modules as if unpatched) in one thread, another model's
    steered forwards in another thread stay steered: each equals the steered forward computed alone.
    The first model is held inside unembed, so the overlap is certain, not left to the scheduler."""
    a, b = fresh_models(backend, "llama"), fresh_models(backend, "llama")
    steer = {"layers.1": iv.add_vector(vector(b), positions="all")}
    expected = b.to_numpy(b.run(PROMPTS, interventions=steer).logits)
    assert not np.allclose(expected, b.to_numpy(b.run(PROMPTS).logits))  # the steering shows in the logits
    entered, release, errors = threading.Event(), threading.Event(), []
    restore = hold_final_norm(a, entered, release)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)

    def lens() -> None:
        try:
            a.unembed(vector(a, seed=1), final_norm=True)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    t = threading.Thread(target=lens)
    t.start()
    try:
        assert entered.wait(timeout=60)  # a is inside its unembed now
        unsteered = sum(not np.array_equal(b.to_numpy(b.run(PROMPTS, interventions=steer).logits), expected)
                        for _ in range(20))
    finally:
        release.set()
        t.join(timeout=60)
        sys.setswitchinterval(interval)
        restore()
    assert not errors and not t.is_alive()
    assert unsteered == 0, f"{unsteered} of 20 steered forwards differed from the steered forward alone"


@pytest.mark.parametrize("backend", BACKENDS)
def test_unembed_inside_a_running_call_is_refused(backend_models, backend):
    m = backend_models(backend, "llama")
    d = vector(m)
    with pytest.raises(RuntimeError, match=r"unembed started while this model is still running run"):
        m.run(PROMPTS[0], interventions={"layers.1": iv.custom(lambda h: m.unembed(d) is not None and h)})
    assert m.unembed(d).shape == (m.vocab_size,)  # and the model is usable again


# -- 3, 4: recording shapes and empty selections -----------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_recording_refuses_to_mix_batch_sizes(backend_models, backend):
    m = backend_models(backend, "llama")
    with m.record(["layers.1"], positions="last", reduce="mean") as rec:
        m.run(PROMPTS)
        first = m.to_numpy(rec.activations["layers.1"])
        with pytest.raises(ValueError, match=r"saw a forward of 1 rows after forwards of 2 rows"):
            m.run(PROMPTS[0])
        np.testing.assert_array_equal(m.to_numpy(rec.activations["layers.1"]), first)  # nothing mixed in
    assert first.shape == (2, m.hidden_size)


@pytest.mark.parametrize("backend", BACKENDS)
def test_selections_that_would_be_empty_for_some_rows_are_errors(backend_models, backend):
    m = backend_models(backend, "llama")
    short = len(m.encode(PROMPTS[0]))
    one = m.to_numpy(m.run(PROMPTS[1], record={"layers.1": short + 1}).activations["layers.1"])
    assert one.shape == (1, 1, m.hidden_size)  # fine for the long prompt alone
    with pytest.raises(ValueError, match=rf"position index {short + 1} out of range for the shortest prompt in the batch"):
        m.run(PROMPTS, record={"layers.1": short + 1})
    for sel in ("generated", Positions.first_generated(2)):
        with pytest.raises(ValueError, match=r"generates nothing; use them while generating"):
            m.run(PROMPTS[0], record={"layers.1": sel})


# -- 5: recording at the head --------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_head_sites_record_every_position(backend_models, backend):
    m = backend_models(backend, "llama")
    ids = m.encode(PROMPTS[1])
    full = m.run(ids)
    logits = m.to_numpy(full.logits)[0]
    for kw in ({"logits": False}, {}):
        tr = m.run(ids, record=["lm_head", "lm_head:input"], **kw)
        np.testing.assert_allclose(m.to_numpy(tr.activations["lm_head"])[0], logits, atol=1e-5)
        assert m.to_numpy(tr.activations["lm_head:input"]).shape == (1, len(ids), m.hidden_size)
    two = m.to_numpy(m.run(ids, record={"lm_head": [2, 5]}, logits=False).activations["lm_head"])[0]
    np.testing.assert_allclose(two, logits[[2, 5]], atol=1e-5)
    hooks = []
    out = m.generate_tokens(ids, max_tokens=3, record={"lm_head": "all"}, hooks_out=hooks)
    recorded = m.to_numpy(hooks[0].activations["lm_head"])[0]  # every token that was fed back
    np.testing.assert_allclose(recorded, m.to_numpy(m.run(ids + out).logits)[0], atol=1e-4)


# -- 6: a KV cache reused across turns ---------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_positions_continue_across_turns(backend_models, backend):
    """Turn 2 steered on its generated tokens through a reused cache equals a fresh run over the
    whole conversation steered on the same absolute positions (the oracle)."""
    m = backend_models(backend, "qwen2")
    turn1, turn2 = m.encode(PROMPTS[0]), m.encode(" and then", )
    cache = m.make_prompt_cache()
    said = m.generate_tokens(turn1, max_tokens=4, prompt_cache=cache)
    past = m.backend.cache_offset(cache)
    history = (turn1 + said)[:past]
    v = np.random.default_rng(0).normal(size=m.hidden_size).astype(np.float32)
    v *= 30.0 / np.linalg.norm(v)
    hooks = []
    got = m.generate_tokens(turn2, max_tokens=5, prompt_cache=cache, record={"layers.1": "prompt"}, hooks_out=hooks,
                            interventions={"layers.1": iv.add_vector(v, positions="generated")})
    start = past + len(turn2)
    want = m.generate_tokens(history + turn2, max_tokens=5,
                             interventions={"layers.1": iv.add_vector(v, positions=Positions.window(start, start + 5))})
    assert got == want and got != m.generate_tokens(history + turn2, max_tokens=5)
    recorded = m.to_numpy(hooks[0].activations["layers.1"])[0]
    assert recorded.shape[0] == len(turn2)  # "prompt" is this turn's prompt, not the history
    fresh = m.to_numpy(m.run(history + turn2, record=["layers.1"]).activations["layers.1"])[0, past:]
    np.testing.assert_allclose(recorded, fresh, atol=1e-4)
    with pytest.raises(ValueError, match=r"out of range for earlier turns \+ prompt \+ max_tokens"):
        m.generate(turn2, max_tokens=2, prompt_cache=cache, interventions={"layers.1": iv.zero(positions=10_000)})


# -- 7, 8: non-finite results, sequences longer than the model's positions -----------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_overflowing_steering_raises(backend_models, backend):
    m = backend_models(backend, "llama")
    e0 = np.eye(m.hidden_size, dtype=np.float32)[0]  # 3e38 twice overflows float32 to inf, then NaN
    huge = {"layers.1": iv.add_vector(e0, scale=3e38), "layers.2": iv.add_vector(e0, scale=3e38)}
    with pytest.raises(ValueError, match=r"the logits are not finite \(NaN or \+inf\)"):
        m.run(PROMPTS[0], interventions=huge)
    with pytest.raises(ValueError, match=r"logits became non-finite \(NaN or \+inf\) at generated token 0"):
        m.generate(PROMPTS[0], max_tokens=3, interventions=huge)
    banned = m.generate_tokens(PROMPTS[0], max_tokens=3, logits_processors=[m.ban_tokens_processor([1, 2])])
    assert len(banned) == 3  # -inf for banned tokens is not an error


@pytest.mark.parametrize("backend", BACKENDS)
def test_learned_position_tables_bound_the_length(backend_models, backend):
    m = backend_models(backend, "gpt2")
    assert m.max_positions == 512
    with pytest.raises(ValueError, match=r"the prompt is 600 tokens but this model has 512 positions"):
        m.run([5] * 600)
    with pytest.raises(ValueError, match=r"prompt \+ max_tokens is 520 tokens but this model has 512 positions"):
        m.generate([5] * 500, max_tokens=20)
    assert backend_models(backend, "llama").max_positions is None  # rotary: no table


# -- 14, 15: dropping everything; text -------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_remove_all_hooks_drops_handles_and_abandoned_streams(fresh_models, backend):
    m = fresh_models(backend, "llama")
    before = snapshot(m)
    plain = m.generate_tokens(PROMPTS[0], max_tokens=4)
    m.steer({"layers.1": iv.add_vector(vector(m), scale=4)})  # a dropped handle: steers until removed
    stream = m.stream_generate(PROMPTS[1], max_tokens=9, interventions={"layers.2": iv.scale(3.0)})
    next(stream)  # abandoned mid-way, still referenced
    assert m.remove_all_hooks() == 2
    assert_untouched(m, before)
    stream.close()
    assert m.generate_tokens(PROMPTS[0], max_tokens=4) == plain
    assert m.remove_all_hooks() == 0


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_same_tokens_give_the_same_text_on_both_backends(backend_models, arch):
    mx_m, pt_m = backend_models("mlx", arch), backend_models("torch", arch)
    ids = mx_m.encode(PROMPTS[1])
    a, b = (m.generate_tokens(ids, max_tokens=12) for m in (mx_m, pt_m))
    assert a == b
    texts = [m.generate(ids, max_tokens=12) for m in (mx_m, pt_m)]
    streamed = ["".join(r.text for r in m.stream_generate(ids, max_tokens=12)) for m in (mx_m, pt_m)]
    assert texts[0] == texts[1] == streamed[0] == streamed[1] == mx_m.prompts.decode(a)
