"""Monitors and recordings split by span, and loops labelled with their span, against positions
located by hand: the forced marker tokens searched in the generated token list."""

import numpy as np
import pytest

from mlx_steer import analysis as an
from mlx_steer import spans
from mlx_steer.analysis.loops import Loop
from mlx_steer.analysis.phases import generation_loops, span_masks, span_means
from span_oracle import forcing, to_list
from torch_fixtures import BACKENDS

SITE = "layers.2"
D = np.random.default_rng(5).normal(size=64).astype(np.float32)
SELECTORS = {"reasoning": spans.reasoning(), "answer": spans.answer(), "generated": "generated",
             "tool": spans.between("<tool_call>", "</tool_call>")}


def marker(m, name):
    return int(m.tokenizer.convert_tokens_to_ids(name))


def monitored(m, schedule_of, n):
    ids = m.encode("Tell me a story about")
    force = forcing({tuple(ids): schedule_of(m)}, to_list)
    ban = m.ban_tokens_processor(sorted(m.eos_token_ids))
    return ids, an.projection_monitor(m, ids, site=SITE, direction=D, max_tokens=n, logits_processors=[force, ban])


@pytest.mark.parametrize("backend", BACKENDS)
def test_monitor_means_by_span_equal_means_over_hand_located_positions(marker_models, backend):
    m = marker_models(backend)
    ids, mon = monitored(m, lambda m: {2: marker(m, "<think>"), 7: marker(m, "</think>")}, 12)
    P, seq = len(ids), ids + list(mon.tokens)
    a, b = seq.index(marker(m, "<think>")), seq.index(marker(m, "</think>"))
    assert (a, b) == (P + 2, P + 7)
    # projection i is read at position P - 1 + i; the reasoning is a+1 .. b (the closing marker inside)
    reasoning = [i for i in range(12) if a + 1 <= P - 1 + i <= b]
    answer = [i for i in range(12) if P - 1 + i >= P and i not in reasoning]
    assert reasoning == [4, 5, 6, 7, 8] and answer == [1, 2, 3, 9, 10, 11]
    got = mon.by_span(SELECTORS, tokenizer=m.tokenizer)
    proj = mon.projections.astype(np.float64)
    assert got["reasoning"] == pytest.approx(proj[reasoning].mean(), rel=1e-12)
    assert got["answer"] == pytest.approx(proj[answer].mean(), rel=1e-12)
    assert got["generated"] == pytest.approx(proj[1:].mean(), rel=1e-12)
    assert np.isnan(got["tool"])  # no tool call: no tokens
    assert np.flatnonzero(mon.span_mask(spans.reasoning(), tokenizer=m.tokenizer)).tolist() == reasoning


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_forced_loop_is_found_in_the_reasoning_at_absolute_positions(marker_models, backend):
    m = marker_models(backend)
    block = [100, 101, 102, 103]
    steps = {0: "<think>", **{1 + j: block[j % 4] for j in range(12)}, 13: "</think>"}
    ids, mon = monitored(m, lambda m: {k: marker(m, t) if isinstance(t, str) else t for k, t in steps.items()}, 16)
    P = len(ids)
    assert list(mon.tokens[1:13]) == block * 3
    expected = Loop(P + 1, P + 13, tuple(block), 3)  # generated tokens 1..12 hold positions P+1..P+12
    assert mon.loops() == [expected]
    labelled = mon.loops(spans={"answer": spans.answer(), "reasoning": spans.reasoning()}, tokenizer=m.tokenizer)
    assert labelled == [Loop(P + 1, P + 13, tuple(block), 3, span="reasoning")]
    assert generation_loops(ids, mon.tokens, spans={"answer": spans.answer()}, tokenizer=m.tokenizer)[0].span is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_recording_split_by_span_equals_its_hand_located_rows(marker_models, backend):
    m = marker_models(backend)
    k0, k1 = marker(m, "<think>"), marker(m, "</think>")
    words = [list(m.tokenizer.encode(t, add_special_tokens=False)) for t in (" a story", " about a cat")]
    seq = m.encode("Tell me") + [k0] + words[0] + [k1] + words[1]
    acts = m.to_numpy(m.run([seq], record=["layers.1"]).activations["model.layers.1"])[0]  # (T, D)
    a, b = seq.index(k0), seq.index(k1)
    masks = span_masks({"think": spans.between("<think>", "</think>"), "after": spans.after("</think>")}, seq,
                       tokenizer=m.tokenizer, prompt_len=len(seq))
    got = span_means(acts, np.arange(len(seq)), masks)
    np.testing.assert_allclose(got["think"], acts[a + 1: b + 1].astype(np.float64).mean(0), rtol=1e-6)
    np.testing.assert_allclose(got["after"], acts[b + 1:].astype(np.float64).mean(0), rtol=1e-6)


def test_bad_inputs_are_refused_naming_them(marker_models):
    m = marker_models("mlx")
    seq = m.encode("Tell me a story")
    with pytest.raises(ValueError, match=r"prompt_len must be an int in 0..%d" % len(seq)):
        span_masks({"a": "generated"}, seq, tokenizer=m.tokenizer, prompt_len=len(seq) + 1)
    with pytest.raises(ValueError, match="unknown position selector 'answers'"):
        span_masks({"a": "answers"}, seq, tokenizer=m.tokenizer, prompt_len=2)
    with pytest.raises(ValueError, match="needs the tokenizer"):
        span_masks({"a": spans.reasoning()}, seq, tokenizer=None, prompt_len=2)
    with pytest.raises(ValueError, match=r"positions 0..9 fall outside mask 'a' \(0..3\)"):
        span_means(np.zeros(10), np.arange(10), {"a": np.ones(4, bool)})
    mon = an.MonitoredGeneration("", (5, 6), np.zeros(2), "x", prompt_len=3, finish_reason=None)
    with pytest.raises(ValueError, match="needs the prompt's 3 tokens; this generation holds 0"):
        mon.by_span({"a": "generated"}, tokenizer=m.tokenizer)
