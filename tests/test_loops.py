"""The loop detector against loops planted by hand (their start, stop and n-gram written out), and
fluent text it must leave alone: a real paragraph in the tiny tokenizer and in SmolLM2's."""

import numpy as np
import pytest

import tiny_models
from mlx_steer.analysis.loops import Loop, find_loops, label_loops, text_loops

PARAGRAPH = (
    "The history of the city goes back more than two thousand years. Its first settlers built a small "
    "harbour on the river, and the town grew as merchants came to trade wool, salt and wine. In the "
    "middle ages a wall was raised around the old market, and a cathedral was begun that took three "
    "centuries to finish. Today the walls are gone, but the streets still follow their line, and "
    "visitors can walk from the harbour to the cathedral in a quarter of an hour."
)
PREFIX, BLOCK, SUFFIX = list(range(10, 20)), [50, 51, 52, 53, 54], list(range(20, 30))


@pytest.fixture(scope="module")
def tok():
    return tiny_models.build_tokenizer(markers=True)


def test_a_planted_block_repeated_four_times_is_one_loop_over_exactly_its_tokens():
    seq = PREFIX + BLOCK * 4 + SUFFIX  # the block covers positions 10..29
    # every rotation of the block repeats; B[0:4] four times (at 10, 15, 20, 25), merged with the rest
    assert find_loops(seq) == [Loop(start=10, stop=30, ngram=(50, 51, 52, 53), repeats=4)]
    assert find_loops(np.array(seq, dtype=np.int32)) == find_loops(seq)


def test_three_repeats_are_needed_and_the_window_bounds_their_distance():
    filler = list(range(100, 160))  # 60 distinct tokens between the repeats
    seq = BLOCK[:4] + filler + BLOCK[:4] + filler + BLOCK[:4]  # starts 0, 64, 128
    assert find_loops(seq) == [Loop(0, 132, (50, 51, 52, 53), 3)]  # 64 apart: inside the default window
    assert find_loops(seq, window=63) == []
    assert find_loops(seq[:68], min_repeats=2) == [Loop(0, 68, (50, 51, 52, 53), 2)]
    assert find_loops(seq[:68]) == []


def test_repeats_are_counted_without_overlap():
    assert find_loops([7] * 12) == [Loop(0, 12, (7, 7, 7, 7), 3)]  # 7 7 7 7 | 7 7 7 7 | 7 7 7 7
    assert find_loops([7] * 11) == []  # only two whole 4-grams fit without overlap
    assert find_loops([1, 2] * 6, n=2) == [Loop(0, 12, (1, 2), 6)]


def test_two_separate_loops_stay_apart():
    seq = BLOCK * 3 + list(range(100, 170)) + [60, 61, 62, 63] * 3
    assert find_loops(seq) == [Loop(0, 15, (50, 51, 52, 53), 3), Loop(85, 97, (60, 61, 62, 63), 3)]


def test_short_sequences_have_no_loops():
    assert find_loops([]) == []
    assert find_loops([5, 5, 5], n=4) == []  # n longer than the sequence
    assert find_loops([5, 5, 5], n=1) == [Loop(0, 3, (5,), 3)]


@pytest.mark.parametrize("kwargs, match", [
    ({"n": 0}, r"n must be an int >= 1, got 0"),
    ({"n": 2.5}, r"n must be an int >= 1, got 2.5"),
    ({"min_repeats": 1}, r"min_repeats must be an int >= 2, got 1"),
    ({"n": 4, "window": 3}, r"window must be an int >= 4 .*got 3"),
    ({"window": True}, r"window must be an int >= 4 .*got True"),
])
def test_bad_options_name_the_value_and_the_valid_range(kwargs, match):
    with pytest.raises(ValueError, match=match):
        find_loops(BLOCK * 4, **kwargs)


@pytest.mark.parametrize("tokens", [[[1, 2], [3, 4]], [0.5, 1.5], np.zeros((2, 3), dtype=np.int64)])
def test_tokens_must_be_one_row_of_ids(tokens):
    with pytest.raises(ValueError, match="1-D sequence of token ids"):
        find_loops(tokens)


def test_fluent_text_has_no_loop_and_a_planted_repeated_sentence_is_found(tok):
    ids = tok.encode(PARAGRAPH, add_special_tokens=False)
    assert len(ids) > 200 and find_loops(ids) == []
    sentence = " The town grew as merchants came."
    s_ids = tok.encode(sentence, add_special_tokens=False)
    looped = tok.encode(PARAGRAPH + sentence * 4, add_special_tokens=False)
    assert looped == ids + s_ids * 4  # the byte-level BPE splits at the spaces: each repeat tokenizes alike
    (found, gram), = text_loops(PARAGRAPH + sentence * 4, tokenizer=tok)
    # the paragraph ends with the sentence's last token ("."): the loop starts one token earlier,
    # the rotation ". The town grew ..." repeating 4 times from there
    assert ids[-1] == s_ids[-1]
    assert (found.start, found.stop, found.repeats) == (len(ids) - 1, len(ids) + 4 * len(s_ids), 4)
    assert found.ngram == (ids[-1], *s_ids[:3]) and gram == tok.decode([ids[-1], *s_ids[:3]])


def test_label_loops_names_the_span_holding_most_of_a_loop():
    loops = [Loop(0, 4, (1, 2), 2), Loop(4, 10, (3, 4), 3), Loop(10, 12, (5,), 2)]
    reasoning = np.zeros(12, bool)
    reasoning[1:6] = True  # 3 of the first loop's 4 tokens, 2 of the second's 6
    answer = np.zeros(12, bool)
    answer[6:10] = True  # 4 of the second's
    labelled = label_loops(loops, {"reasoning": reasoning, "answer": answer})
    assert [lp.span for lp in labelled] == ["reasoning", "answer", None]
    assert [lp.span for lp in label_loops(loops, {"a": answer, "b": answer})] == [None, "a", None]  # ties: first
    with pytest.raises(ValueError, match="mask 'short' covers 5 positions; the loops reach position 11"):
        label_loops(loops, {"short": np.ones(5, bool)})


@pytest.mark.slow
def test_fluent_text_in_smollm2s_tokenizer_has_no_loop(smollm2_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_dir))
    assert text_loops(PARAGRAPH, tokenizer=tokenizer) == []
    assert [lp.repeats for lp, _ in text_loops(PARAGRAPH + " I am sorry." * 6, tokenizer=tokenizer)] == [6]
