"""Span selectors' rules on token sequences: markers split across tokens, nested and unclosed spans,
a closing marker before an opening one, markers that never appear, budgets, combinations and the
JSON forms. The engine's resolver (``locate``, the same book the model uses while generating) is
checked against ``span_oracle.inside``, which searches the whole decoded text at once."""

import numpy as np
import pytest

from mlx_steer import spans
from mlx_steer.engine import interventions as iv
from mlx_steer.engine.positions import Positions, as_positions
from mlx_steer.engine.span_locate import locate
from span_oracle import forcing, inside, to_list


@pytest.fixture(scope="module")
def plain(shared_models):
    """The tiny llama whose tokenizer has no marker tokens: ``<think>`` is several tokens."""
    return shared_models("llama")


def where(mask):
    return np.flatnonzero(mask).tolist()


def test_text_markers_split_across_tokens_are_found(plain):
    tok = plain.tokenizer
    seq = plain.encode("a <think> b c </think> d <think> e")
    pieces = [tok.decode([t]) for t in seq]
    assert "<think>" not in pieces and len(seq) > 12  # the marker is split
    text_of = lambda t: tok.decode([t])  # noqa: E731
    want = inside(seq, "<think>", "</think>", text_of)
    got = where(locate(spans.between("<think>", "</think>"), seq, tokenizer=tok))
    assert got == want and want
    # the span starts after the token completing "<think>" and ends with the one completing "</think>"
    first_open = next(i for i in range(len(seq)) if "<think>" in "".join(pieces[: i + 1]))
    first_close = next(i for i in range(len(seq)) if "</think>" in "".join(pieces[: i + 1]))
    assert want[0] == first_open + 1 and first_close in want and first_close + 1 not in want
    assert where(locate(spans.after("</think>"), seq, tokenizer=tok)) == list(range(first_close + 1, len(seq)))
    assert where(locate(spans.before("</think>"), seq, tokenizer=tok)) == list(range(first_close + 1))


@pytest.mark.parametrize("text, want_tokens", [
    ("x <think> a <think> b </think> c </think> d", " a <think> b </think>"),  # no nesting
    ("x </think> a <think> b", " b"),  # a closing marker before the opening one changes nothing; unclosed
    ("x a b", ""),  # never appears
])
def test_nested_unclosed_and_early_closing_markers(plain, text, want_tokens):
    tok = plain.tokenizer
    seq = plain.encode(text)
    got = where(locate(spans.between("<think>", "</think>"), seq, tokenizer=tok))
    assert got == inside(seq, "<think>", "</think>", lambda t: tok.decode([t]))
    assert tok.decode([seq[p] for p in got]) == want_tokens


def test_token_id_markers_and_budgets(marker_models):
    m = marker_models("mlx")
    tok = m.tokenizer
    o, c = (int(tok.convert_tokens_to_ids(t)) for t in ("<think>", "</think>"))
    seq = m.encode("a <think> one two three four </think> b <think> five six seven")
    text_of = lambda t: tok.decode([t])  # noqa: E731
    for n in (0, 1, 3, 50):
        got = where(locate(spans.between([o], [c], from_token=n), seq, tokenizer=tok))
        assert got == inside(seq, [o], [c], text_of, from_token=n)
        assert got == where(locate(spans.between("<think>", "</think>", from_token=n), seq, tokenizer=tok))
    # a budget counts afresh in each span: the second span's tokens from its own 2nd on
    spans_ = [inside(seq[: i + 1], [o], [c], text_of) for i in range(len(seq))]
    assert spans_[-1] and where(locate(spans.reasoning(from_token=2), seq, tokenizer=tok)) == \
        inside(seq, [o], [c], text_of, from_token=2)
    # a two-id marker matches only the pair
    pair = where(locate(spans.after([c, seq[seq.index(c) + 1]]), seq, tokenizer=tok))
    assert pair == list(range(seq.index(c) + 2, len(seq)))


def test_answer_special_and_combinations(marker_models, plain):
    m = marker_models("mlx")
    tok = m.tokenizer
    seq = m.encode("q <think> r s </think> t u")
    plen = 3
    think = inside(seq, "<think>", "</think>", lambda t: tok.decode([t]))
    assert where(locate(spans.answer(), seq, tokenizer=tok, prompt_len=plen)) == \
        [p for p in range(plen, len(seq)) if p not in think]
    special = [p for p, t in enumerate(seq) if tok.decode([t], skip_special_tokens=True) == ""]
    assert special and where(locate(spans.special(), seq, tokenizer=tok)) == special
    combo = Positions("generated") & ~spans.special() | spans.between("<think>", "</think>")
    want = sorted(({p for p in range(plen, len(seq))} - set(special)) | set(think))
    assert where(locate(combo, seq, tokenizer=tok, prompt_len=plen)) == want
    # a tokenizer without reasoning markers: everything generated is the answer
    seq2 = plain.encode("q <think> r s </think> t u")
    assert where(locate("answer", seq2, tokenizer=plain.tokenizer, prompt_len=plen)) == list(range(plen, len(seq2)))


def test_json_forms_equal_the_python_forms():
    assert as_positions({"between": ["<think>", "</think>"], "from_token": 3}) == \
        spans.between("<think>", "</think>", from_token=3)
    assert as_positions({"outside": ["<a>", [5, 6]]}) == spans.outside("<a>", [5, 6])
    assert as_positions({"before": "x"}) == spans.before("x")
    assert as_positions({"and": ["generated", {"not": "special"}]}) == Positions("generated") & ~spans.special()
    assert as_positions({"answer": ["<t>", "</t>"]}) == spans.answer(open="<t>", close="</t>")
    assert str(as_positions({"or": ["last", {"after": "A:"}]})) == "(last | after('A:'))"


@pytest.mark.parametrize("spec, words", [
    ({"between": "<think>"}, "[open, close]"),
    ({"between": ["", "x"]}, "empty string"),
    ({"after": [1.5]}, "not a marker"),
    ({"between": ["a", "b"], "from_token": -2}, "from_token must be an int >= 0"),
    ({"before": "a", "from_token": 2}, "from_token applies to"),
    ({"whereever": 1}, "one of the keys"),
    ({"and": []}, "non-empty list"),
    ("thinking", "valid: all, last, prompt, generated, special, reasoning, answer"),
    ({"reasoning": ["<t>", None]}, "name both reasoning markers or neither"),
])
def test_bad_span_selectors_are_refused_by_name(spec, words):
    with pytest.raises(ValueError, match=None) as err:
        as_positions(spec)
    assert words in str(err.value)


def test_split_markers_open_and_close_while_generating(plain):
    """The closing marker is generated as several forced tokens: steering stops after its last one,
    equal to the located index list; nothing raises when markers arrive split or out of order."""
    m = plain
    tok = m.tokenizer
    p = m.encode("Tell me <think> a story")
    close = tok.encode("</think>", add_special_tokens=False)
    force = forcing({tuple(p): {2 + i: t for i, t in enumerate(close)}}, to_list)
    v = np.random.default_rng(2).normal(size=m.hidden_size).astype(np.float32)
    sel = spans.between("<think>", "</think>")
    got = m.generate_tokens(p, max_tokens=12, logits_processors=[force],
                            interventions={"layers.1": iv.add_vector(v, scale=6.0, positions=sel)})
    seq = p + got
    idx = inside(seq, "<think>", "</think>", lambda t: tok.decode([t]))
    assert idx and max(idx) == len(p) + 2 + len(close) - 1  # through the last token of "</think>"
    oracle = m.generate_tokens(p, max_tokens=12, logits_processors=[force],
                               interventions={"layers.1": iv.add_vector(v, scale=6.0, positions=idx)})
    assert got == oracle
