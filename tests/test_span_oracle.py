"""Steering by span equals steering by the explicit index list of that span, located offline in the
same tokens (``span_oracle.inside``), while spans open and close during generation: solo, per row in
a batch, in the continuous batch as sequences join and leave, and across turns of a reused prompt
cache; on both backends. And a recording shows nothing reaches positions outside the span."""

import numpy as np
import pytest

from mlx_steer import spans
from mlx_steer.engine import interventions as iv
from mlx_steer.engine.positions import Positions
from span_oracle import forcing, inside, to_list
from torch_fixtures import BACKENDS

SITE = "layers.1"
V = np.random.default_rng(11).normal(size=64).astype(np.float32)


def ids_of(m):
    tok = m.tokenizer
    return {t: int(tok.convert_tokens_to_ids(t)) for t in ("<think>", "</think>", "<tool_call>", "</tool_call>")}


def text_of(m):
    return lambda t: m.tokenizer.decode([t])


def steer(positions, scale=6.0):
    return {SITE: iv.add_vector(V, scale=scale, positions=positions)}


def located(m, seq, selector, prompt_len):
    """The oracle's index list for each selector the tests use."""
    k, txt = ids_of(m), text_of(m)
    kind, arg = selector
    if kind == "between":
        return inside(seq, "<think>", "</think>", txt, from_token=arg)
    if kind == "after_ids":
        return inside(seq, [k["</think>"]], None, txt)
    if kind == "outside_tool":
        tool = set(inside(seq, "<tool_call>", "</tool_call>", txt))
        return [p for p in range(len(seq)) if p not in tool]
    if kind == "answer":  # generated and outside the reasoning (the tokenizer's <think> tokens)
        think = set(inside(seq, [k["<think>"]], [k["</think>"]], txt))
        return [p for p in range(prompt_len, len(seq)) if p not in think]
    assert kind == "not_special"
    # special: what decoding with skip_special_tokens drops
    return [p for p, t in enumerate(seq) if m.tokenizer.decode([t], skip_special_tokens=True) != ""]


def selector_of(selector):
    kind, arg = selector
    return {"between": lambda: spans.between("<think>", "</think>", from_token=arg),
            "after_ids": lambda: spans.after([arg]),
            "outside_tool": lambda: spans.outside("<tool_call>", "</tool_call>"),
            "answer": spans.answer,
            "not_special": lambda: Positions("all") & ~spans.special()}[kind]()


SELECTORS = [("between", 0), ("between", 3), ("after_ids", None), ("outside_tool", None), ("answer", None),
             ("not_special", None)]


def plan(m):
    """Two prompts and, per prompt, the marker tokens forced at generated steps: row 0's span
    opens in its prompt and closes at step 4, then reopens; row 1's opens at step 2 (a closing
    marker first, which changes nothing) and never closes; a tool call in each."""
    k = ids_of(m)
    p0 = m.encode("Tell me <think> a story about")
    p1 = m.encode("The weather is great, happy people walk in")
    schedule = {tuple(p0): {1: k["<tool_call>"], 3: k["</tool_call>"], 4: k["</think>"], 7: k["<think>"]},
                tuple(p1): {0: k["</think>"], 2: k["<think>"], 5: k["<tool_call>"], 8: k["<think>"]}}
    return [p0, p1], forcing(schedule, to_list)


def resolve(m, selector, seq, plen):
    kind, arg = selector
    if kind == "after_ids":
        selector = (kind, ids_of(m)["</think>"])
    return selector_of(selector), located(m, seq, selector, plen)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("selector", SELECTORS, ids=lambda s: f"{s[0]}-{s[1]}")
def test_generate_by_span_equals_generate_by_located_indices(marker_models, backend, selector):
    m = marker_models(backend)
    prompts, force = plan(m)
    for p in prompts:
        base = list(m.stream_generate(p, max_tokens=10, logits_processors=[force]))
        sel, _ = resolve(m, selector, p, len(p))
        by_span = list(m.stream_generate(p, max_tokens=10, logits_processors=[force], interventions=steer(sel)))
        seq = p + [int(s.token) for s in by_span]  # located in the tokens the steered run made
        _, idx = resolve(m, selector, seq, len(p))
        by_index = list(m.stream_generate(p, max_tokens=10, logits_processors=[force], interventions=steer(idx or [9999])))
        assert [s.token for s in by_span] == [s.token for s in by_index]
        for a, b in zip(by_span, by_index):
            np.testing.assert_allclose(np.asarray(m.backend.xp.to_numpy(a.logprobs)),
                                       np.asarray(m.backend.xp.to_numpy(b.logprobs)), atol=1e-5, rtol=0)
        if idx and min(idx) < len(seq) - 1:  # the span was steered: it changed something
            assert [s.token for s in by_span] != [s.token for s in base] or not np.allclose(
                m.backend.xp.to_numpy(by_span[-1].logprobs), m.backend.xp.to_numpy(base[-1].logprobs))


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_rows_resolve_their_own_spans(marker_models, backend):
    """One span selector for both rows of a batch equals each row's own located index list."""
    m = marker_models(backend)
    prompts, force = plan(m)
    sel = ("between", 0)
    out = m.batch_generate(prompts, max_tokens=10, logits_processors=[force], interventions=steer(selector_of(sel)))
    rows = []
    for p, toks in zip(prompts, out.token_ids):
        rows.append(steer(located(m, p + list(toks), sel, len(p)) or [9999]))
    oracle = m.batch_generate(prompts, max_tokens=10, logits_processors=[force], interventions=rows)
    assert out.token_ids == oracle.token_ids
    solo = [m.generate_tokens(p, max_tokens=10, logits_processors=[force], interventions=steer(selector_of(sel)))
            for p in prompts]
    assert [list(t) for t in out.token_ids] == solo


@pytest.mark.parametrize("backend", BACKENDS)
def test_continuous_batch_sequences_keep_their_spans_as_they_join_and_leave(marker_models, backend):
    m = marker_models(backend)
    prompts, force = plan(m)
    sel = spans.between("<think>", "</think>")
    out: dict = {}
    with m.batch_generator() as gen:
        a = gen.insert(prompts[0], max_tokens=10, interventions=steer(sel), logits_processors=[force])
        for _ in range(3):
            for e in gen.step():
                out.setdefault(e.uid, []).append(e.token)
        b = gen.insert(prompts[1], max_tokens=10, interventions=steer(sel), logits_processors=[force])
        c = gen.insert(prompts[0], max_tokens=10, interventions=steer(sel), logits_processors=[force])
        while gen.active:
            for e in gen.step():
                out.setdefault(e.uid, []).append(e.token)
    for uid, p in ((a, prompts[0]), (b, prompts[1]), (c, prompts[0])):
        solo = m.generate_tokens(p, max_tokens=10, logits_processors=[force], interventions=steer(sel))
        assert out[uid] == solo


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_reused_prompt_cache_keeps_the_span_open_across_turns(marker_models, backend):
    """Turn 1 opens the span and never closes it; turn 2's tokens are inside until its </think>."""
    m = marker_models(backend)
    k = ids_of(m)
    sel = spans.between("<think>", "</think>")
    turn1, turn2 = m.encode("Tell me <think> a story"), m.encode(" about a cat")
    force = forcing({tuple(turn2): {3: k["</think>"]}}, to_list)

    def chat(interventions):
        cache = m.make_prompt_cache()
        first = m.generate_tokens(turn1, max_tokens=4, prompt_cache=cache, interventions=interventions(turn1, None))
        held = (turn1 + first)[: m.backend.cache_offset(cache)]  # what the cache holds of turn 1
        steps = list(m.stream_generate(turn2, max_tokens=6, prompt_cache=cache, logits_processors=[force],
                                       interventions=interventions(turn2, held)))
        return first, steps, held

    first, steps, held = chat(lambda p, h: steer(sel))
    seq = held + turn2 + [int(s.token) for s in steps]
    idx = inside(seq, "<think>", "</think>", text_of(m))
    assert idx[0] == turn1.index(k["<think>"]) + 1 and max(idx) == len(held) + len(turn2) + 3
    # an index list names reachable positions only: turn 1's part of it, then all of it
    first_o, steps_o, _ = chat(lambda p, h: steer([i for i in idx if i < len(turn1) + 4] if h is None else idx))
    assert first == first_o and [s.token for s in steps] == [s.token for s in steps_o]
    for a, b in zip(steps, steps_o):
        np.testing.assert_allclose(m.backend.xp.to_numpy(a.logprobs), m.backend.xp.to_numpy(b.logprobs), atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_recorded_steering_reaches_only_the_span_and_the_budget_starts_at_token_n(marker_models, backend):
    """Record the steered site: steered minus unsteered is exactly 0 outside the span, per row of a
    left-padded batch, and ``from_token=2`` starts exactly at the span's third token."""
    m = marker_models(backend)
    texts = ["a <think> b c d </think> e f", "Tell me <think> one two three four five six", "x </think> y <think> z"]
    seqs = [m.encode(t) for t in texts]
    plain = m.run(seqs, record=[SITE]).activations[SITE]
    for n in (0, 2):
        sel = spans.between("<think>", "</think>", from_token=n)
        got = m.run(seqs, record=[SITE], interventions=steer(sel)).activations[SITE]
        diff = np.abs(m.backend.xp.to_numpy(got) - m.backend.xp.to_numpy(plain)).max(axis=-1)
        L = diff.shape[1]
        for b, seq in enumerate(seqs):
            pad = L - len(seq)
            want = inside(seq, "<think>", "</think>", text_of(m), from_token=n)
            steered = [p for p in range(len(seq)) if diff[b, pad + p] > 0]
            assert steered == want, (b, n)
            assert (diff[b, :pad] == 0).all()
        if n == 2:
            full = inside(seqs[1], "<think>", "</think>", text_of(m))
            budget = inside(seqs[1], "<think>", "</think>", text_of(m), from_token=2)
            assert budget == full[2:] and len(full) > 3


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_smollm2_text_markers_steer_exactly_the_located_span(smollm2, smollm2_torch, backend):
    """SmolLM2 has no think tokens: the markers are text its tokenizer splits. The span opens in the
    prompt and the closing marker's tokens are forced mid-generation."""
    m = smollm2 if backend == "mlx" else smollm2_torch
    tok = m.tokenizer
    p = m.encode("Question: what is 7 times 6? <think> Let me work it out")
    close = tok.encode(" </think>", add_special_tokens=False)
    assert len(close) > 1
    force = forcing({tuple(p): {3 + i: t for i, t in enumerate(close)}}, to_list)
    v = np.random.default_rng(5).normal(size=m.hidden_size).astype(np.float32)
    sel = spans.between("<think>", "</think>")

    def run(positions):
        return list(m.stream_generate(p, max_tokens=8 + len(close), logits_processors=[force],
                                      interventions={"layers.12": iv.add_vector(v, scale=4.0, positions=positions)}))

    by_span = run(sel)
    seq = p + [int(s.token) for s in by_span]
    idx = inside(seq, "<think>", "</think>", lambda t: tok.decode([t]))
    assert idx[0] == next(i for i in range(len(p)) if "<think>" in tok.decode(p[: i + 1])) + 1
    assert max(idx) == len(p) + 3 + len(close) - 1
    by_index = run(idx)
    assert [s.token for s in by_span] == [s.token for s in by_index]
    for a, b in zip(by_span, by_index):
        np.testing.assert_allclose(m.backend.xp.to_numpy(a.logprobs), m.backend.xp.to_numpy(b.logprobs), atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_gated_span_intervention_steers_the_located_span_of_the_rows_whose_condition_holds(marker_models, backend):
    """CAST with span positions: row 0's condition holds (threshold below anything), row 1's cannot;
    the gated span steering equals the gated index-list steering, row by row."""
    m = marker_models(backend)
    prompts, force = plan(m)
    d = np.random.default_rng(3).normal(size=64).astype(np.float32)
    met = iv.condition(d, site="layers.0", threshold=-1e9, name="always")
    never = iv.condition(d, site="layers.0", threshold=1e9, name="never")

    def gated(positions, rule):
        return {SITE: iv.add_vector(V, scale=6.0, positions=positions).when(rule)}

    sel = spans.between("<think>", "</think>")
    for rule in (met, never):
        out = m.batch_generate(prompts, max_tokens=10, logits_processors=[force], interventions=gated(sel, rule))
        # a gate acts on generated tokens only: the span's generated part
        rows = [gated([i for i in located(m, p + list(t), ("between", 0), len(p)) if i >= len(p)], rule)
                for p, t in zip(prompts, out.token_ids)]
        oracle = m.batch_generate(prompts, max_tokens=10, logits_processors=[force], interventions=rows)
        assert out.token_ids == oracle.token_ids
    plain = m.batch_generate(prompts, max_tokens=10, logits_processors=[force])
    assert m.batch_generate(prompts, max_tokens=10, logits_processors=[force],
                            interventions=gated(sel, never)).token_ids == plain.token_ids


@pytest.mark.parametrize("backend", BACKENDS)
def test_special_is_read_on_the_device_while_decoding(marker_models, backend, monkeypatch):
    """``special`` reads each step's own token: decode steps compute its mask where the token is
    (no host read), the prompt on the host; the generation equals the located index list's."""
    from mlx_steer.engine import span_book

    m = marker_models(backend)
    prompts, force = plan(m)
    seen = {"device": 0}
    real = span_book.SpanBook.device_mask

    def counting(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        seen["device"] += out is not None
        return out

    monkeypatch.setattr(span_book.SpanBook, "device_mask", counting)
    sel = Positions("generated") & ~spans.special()
    got = m.generate_tokens(prompts[0], max_tokens=8, logits_processors=[force], interventions=steer(sel))
    assert seen["device"] >= 7  # every one-token forward: the decode steps (and the last prompt token)
    seq = prompts[0] + got
    idx = [p for p in located(m, seq, ("not_special", None), len(prompts[0])) if p >= len(prompts[0])]
    assert got == m.generate_tokens(prompts[0], max_tokens=8, logits_processors=[force], interventions=steer(idx))
