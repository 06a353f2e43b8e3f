"""Span positions over HTTP: a request steering ``{"between": ["<think>", "</think>"]}`` (or any span
selector) gives the same greedy tokens and log-probabilities as the same request steering the
explicit index list of that span, located by hand in the prompt's tokens; the response says which
generated tokens were steered and splits the monitors by span; bad span JSON is a 400 naming the
field and the valid forms. On both backends, on a tiny model whose tokenizer has ``<think>`` and
``</think>`` as added tokens."""

from __future__ import annotations

import concurrent.futures
import json

import httpx
import numpy as np
import pytest

from serve_helpers import serving, write_vectors

pytest.importorskip("fastapi", reason="the serve tests need the test extra: pip install -e '.[test]'")

MODEL = "llama-markers"
N = 6  # tokens generated
CLOSED = "I love <think> cats and dogs are good </think> so"  # a span that ends in the prompt
OPEN = "I love cats <think> and dogs"  # a span still open when generation starts: it lasts to the end


@pytest.fixture(scope="module", params=["mlx", "torch"])
def backend(request):
    return request.param


@pytest.fixture(scope="module")
def oracle(marker_models, backend):
    """The library's copy of the marker model: its tokenizer locates the spans by hand."""
    return marker_models(backend)


@pytest.fixture(scope="module")
def server(oracle, tiny_root, backend, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"span_vectors_{backend}")
    write_vectors(oracle, folder)  # love: layers 1, 2; calm: 2; edge: 1
    with serving(["--model", str(tiny_root / MODEL), "--vectors-dir", str(folder), "--backend", backend],
                 tmp_path_factory.mktemp(f"span_log_{backend}")) as srv:
        yield srv


def post(server, body: dict, route: str = "/v1/completions") -> httpx.Response:
    return httpx.post(f"{server.url}{route}", json={"model": MODEL, **body}, timeout=120)


def run(server, prompt: str, positions, *, monitor: bool = False) -> dict:
    """The first choice of a greedy completion steered by ``love`` x 6 at ``positions``."""
    body = {"prompt": prompt, "max_tokens": N, "ignore_eos": True, "logprobs": 3, "return_token_ids": True,
            "steering": [{"vector": "love", "scale": 6, "positions": positions}]}
    if monitor:
        body["monitor"] = [{"vector": "calm", "layer": 2}]
    r = post(server, body)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]


def by_hand(oracle, prompt: str) -> tuple[list[int], int]:
    """The prompt's ids and where its span begins: the token after ``<think>`` (its one id)."""
    ids = list(oracle.encode(prompt))
    think = oracle.tokenizer.convert_tokens_to_ids("<think>")
    assert ids.count(think) == 1, ids
    return ids, ids.index(think) + 1


def same(a: dict, b: dict) -> None:
    assert a["token_ids"] == b["token_ids"]
    np.testing.assert_allclose(a["logprobs"]["token_logprobs"], b["logprobs"]["token_logprobs"], atol=1e-5, rtol=0)


def test_a_closed_span_steers_what_its_index_list_steers(server, oracle):
    ids, start = by_hand(oracle, CLOSED)
    stop = ids.index(oracle.tokenizer.convert_tokens_to_ids("</think>")) + 1  # the closing marker is inside
    span = run(server, CLOSED, {"between": ["<think>", "</think>"]})
    same(span, run(server, CLOSED, list(range(start, stop))))
    same(span, run(server, CLOSED, {"between": [[ids[start - 1]], [ids[stop - 1]]]}))  # markers as token ids
    assert span["steered_tokens"] == [False] * N  # the span closed in the prompt
    unsteered = post(server, {"prompt": CLOSED, "max_tokens": N, "ignore_eos": True, "logprobs": 3}).json()
    assert not np.allclose(span["logprobs"]["token_logprobs"],
                           unsteered["choices"][0]["logprobs"]["token_logprobs"], atol=1e-3)  # it did steer


def test_an_open_span_steers_the_generation_as_its_index_list_does(server, oracle):
    ids, start = by_hand(oracle, OPEN)
    P = len(ids)
    span = run(server, OPEN, {"between": ["<think>", "</think>"]})
    assert oracle.tokenizer.convert_tokens_to_ids("</think>") not in span["token_ids"]  # it stays open
    same(span, run(server, OPEN, list(range(start, P + N))))
    assert span["steered_tokens"] == [True] * N
    outside = run(server, OPEN, {"not": {"between": ["<think>", "</think>"]}})
    same(outside, run(server, OPEN, list(range(start))))
    assert outside["steered_tokens"] == [False] * N


def test_answer_steers_the_generated_tokens_of_a_model_not_reasoning(server, oracle):
    ids, _ = by_hand(oracle, CLOSED)
    P = len(ids)
    answer = run(server, CLOSED, "answer")
    same(answer, run(server, CLOSED, list(range(P, P + N))))
    assert answer["steered_tokens"] == [True] * N
    mixed = run(server, CLOSED, {"and": ["generated", {"not": [P + 1, P + 3]}]})
    same(mixed, run(server, CLOSED, [P, P + 2, P + 4, P + 5]))
    assert mixed["steered_tokens"] == [True, False, True, False, True, True]


@pytest.mark.parametrize("prompt", [OPEN, CLOSED], ids=["open", "closed"])
def test_monitors_are_split_by_span(server, oracle, prompt):
    """Token i's projection is read from the activation at position P + i - 1 (the first token's at the
    prompt's last): the split puts it in the span that position is in, located by hand."""
    ids, start = by_hand(oracle, prompt)
    P, think_end = len(ids), ids.index(oracle.tokenizer.convert_tokens_to_ids("</think>")) if "</think>" in prompt else None
    choice = run(server, prompt, {"between": ["<think>", "</think>"]}, monitor=True)
    values = np.array(choice["projections"]["calm"])
    read = np.arange(P - 1, P - 1 + N)
    inside = (read >= start) & (read <= (think_end if think_end is not None else P + N))
    answer = (read >= P) & ~inside
    split = choice["projection_spans"]["calm"]
    assert split["reasoning"]["tokens"] == int(inside.sum()) and split["answer"]["tokens"] == int(answer.sum())
    for name, mask in (("reasoning", inside), ("answer", answer)):
        expected = values[mask].mean() if mask.any() else None
        assert split[name]["mean"] == pytest.approx(expected, abs=1e-9)
    assert (inside.sum(), answer.sum()) == ((N, 0) if prompt == OPEN else (0, N - 1))


BAD = [  # (positions, what the message says)
    ({"between": "<think>"}, '"between" takes [open, close]'),
    ({"between": ["", "</think>"]}, "opening marker is an empty string"),
    ({"betwixt": ["<think>", "</think>"]}, "a span object has one of the keys between, after, before"),
    ({"and": []}, '"and" takes a non-empty list of selectors'),
    ({"between": ["<think>", "</think>"], "from_token": -1}, "from_token must be an int >= 0"),
    ({"before": "x", "from_token": 2}, "from_token applies to between, after and reasoning"),
    ({"not": 1.5}, "cannot use 1.5 as positions"),
    ("thinking", "unknown position selector 'thinking'; valid: all, last, prompt, generated, special"),
    ({"or": ["special", {"after": [99999]}]}, "marker [99999]: token id 99999 is outside the vocabulary of"),
    ({"and": ["generated", {"not": [5, 400]}]}, "position 400 is never reached: prompt + max_tokens is"),
    (1.5, 'or a span selector ("reasoning", "answer", "special", {"between": [open, close]'),
]


@pytest.mark.parametrize("positions,message", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_span_json_is_a_400_naming_the_field(server, positions, message):
    before = httpx.get(f"{server.url}/health", timeout=10).json()["requests"]
    r = post(server, {"prompt": "I love", "max_tokens": 2,
                      "steering": [{"vector": "calm", "scale": 1}, {"vector": "love", "positions": positions}]})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == "steering[1].positions" and error["message"].startswith("steering[1].positions: ")
    assert message in error["message"], error["message"]
    assert httpx.get(f"{server.url}/health", timeout=10).json()["requests"] == before  # nothing ran


def test_a_streams_last_chunk_says_which_tokens_were_steered(server):
    whole = run(server, OPEN, {"after": "dogs"}, monitor=True)
    body = {"model": MODEL, "prompt": OPEN, "max_tokens": N, "ignore_eos": True, "stream": True,
            "steering": [{"vector": "love", "scale": 6, "positions": {"after": "dogs"}}],
            "monitor": [{"vector": "calm", "layer": 2}]}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=120) as r:
        chunks = [json.loads(line[5:]) for line in r.iter_lines() if line.startswith("data:") and "[DONE]" not in line]
    last = chunks[-1]["choices"][0]
    assert last["finish_reason"] == "length" and "steered_tokens" not in chunks[-2]["choices"][0]
    assert whole["steered_tokens"] == last["steered_tokens"] == [True] * N  # "dogs" ends the prompt
    assert last["projection_spans"] == whole["projection_spans"]


def test_span_rows_batched_together_each_equal_their_solo_run(server, oracle):
    """Requests with different spans (and prompts whose spans open at different places) run in one
    continuous batch: each equals its solo answer (a row's span is read from its own tokens)."""
    cases = [(OPEN, {"between": ["<think>", "</think>"]}), (CLOSED, {"between": ["<think>", "</think>"]}),
             (OPEN, "answer"), (CLOSED, {"not": {"after": "love"}})]
    solo = [run(server, prompt, positions) for prompt, positions in cases]
    with concurrent.futures.ThreadPoolExecutor(len(cases) * 2) as pool:
        together = list(pool.map(lambda c: run(server, *c), cases * 2))
    for a, b in zip(solo * 2, together):
        same(a, b)
        assert a["steered_tokens"] == b["steered_tokens"]


@pytest.mark.parametrize("threshold,met", [(-1e6, True), (1e6, False)], ids=["met", "not-met"])
def test_a_gated_entry_counts_as_steered_only_when_its_condition_held(server, threshold, met):
    body = {"prompt": OPEN, "max_tokens": N, "ignore_eos": True, "steering": [
        {"vector": "love", "scale": 6, "positions": {"between": ["<think>", "</think>"]},
         "when": {"vector": "calm", "threshold": threshold, "measure": "projection"}}]}
    r = post(server, body)
    assert r.status_code == 200, r.text
    assert r.json()["conditions"][0]["condition_met"] is met
    assert r.json()["choices"][0]["steered_tokens"] == [met] * N


def test_a_span_the_generation_opens_is_steered_from_the_next_token_on(server, oracle):
    """``{"after": [t]}`` with ``t`` a token the model generates (not in the prompt): nothing before it
    is steered, so it is generated where the unsteered run puts it, at position q; the span is then
    positions q + 1 on, and the request equals the one steering that index list."""
    ids, _ = by_hand(oracle, CLOSED)
    P = len(ids)
    r = post(server, {"prompt": CLOSED, "max_tokens": N, "ignore_eos": True, "return_token_ids": True})
    plain = r.json()["choices"][0]["token_ids"]
    k = next(i for i in range(1, N - 2) if plain[i] not in ids and plain[i] not in plain[:i])
    span = run(server, CLOSED, {"after": [plain[k]]})
    assert span["token_ids"][:k + 1] == plain[:k + 1]
    same(span, run(server, CLOSED, list(range(P + k + 1, P + N))))
    assert span["steered_tokens"] == [i > k for i in range(N)]
    assert span["token_ids"] != plain  # it did steer


def test_loops_are_reported_with_the_span_they_occurred_in(server, oracle):
    """``loops: true``: the choice's loops are those find_loops finds in its token ids, labelled
    ``reasoning`` when they lie inside the open ``<think>`` span, indexed by generated token."""
    from mlx_steer.analysis.loops import find_loops

    body = {"prompt": OPEN, "max_tokens": 40, "ignore_eos": True, "return_token_ids": True, "loops": True}
    r = post(server, body)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    ids = choice["token_ids"]
    want = find_loops(ids)
    assert want, f"the tiny model's greedy text should loop: {ids}"
    assert [(lp["start"], lp["stop"], tuple(lp["ngram"]), lp["repeats"]) for lp in choice["loops"]] == \
        [(lp.start, lp.stop, lp.ngram, lp.repeats) for lp in want]
    # the prompt leaves <think> open and the tokenizer's reasoning markers are <think> / </think>
    closes = oracle.tokenizer.convert_tokens_to_ids("</think>")
    end = ids.index(closes) if closes in ids else len(ids)
    inside = [lp for lp in choice["loops"] if lp["stop"] <= end]
    assert inside and all(lp["span"] == "reasoning" for lp in inside)
    assert "loops" not in post(server, {**body, "loops": False}).json()["choices"][0]
    bad = post(server, {**body, "loops": "yes"})
    assert bad.status_code == 400 and "loops" in bad.text
