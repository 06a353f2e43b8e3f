"""``mlx-steer serve`` as a real process on a loopback port, driven by the official ``openai`` client
(and httpx where the client hides the wire): every served greedy result equals the library's own
generation with the same interventions (the oracle, on a separate copy of the model), alone and in
a batch of concurrent requests with different steering; bad input gets a 4xx naming the field and
leaves the server as it was; a dropped stream frees its row; a full queue answers 429; a key is
enforced."""

from __future__ import annotations

import concurrent.futures
import json
import time

import httpx
import numpy as np
import pytest

from serve_helpers import serving, write_vectors

ARCH = "llama"
MODEL = ARCH  # the served id is the --model path; its last part is accepted too
openai = pytest.importorskip("openai", reason="the serve tests need the test extra: pip install -e '.[test]'")
pytest.importorskip("fastapi", reason="the serve tests need the test extra: pip install -e '.[test]'")


@pytest.fixture(scope="module")
def oracle(shared_models):
    """The library on its own copy of the model (the server process loads another)."""
    return shared_models(ARCH)


@pytest.fixture(scope="module")
def vectors(oracle, tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve_vectors")
    return folder, write_vectors(oracle, folder)


@pytest.fixture(scope="module")
def server(tiny_dir, vectors, tmp_path_factory):
    with serving(["--model", str(tiny_dir(ARCH)), "--vectors-dir", str(vectors[0]), "--max-queue", "16"],
                 tmp_path_factory.mktemp("serve_log")) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)


def steer(vecs, name, scale, layers=None, positions="all"):
    """The library's interventions for one served ``steering`` entry."""
    vec = vecs[name]
    if layers is not None:
        vec = vec.select([vec.sites[0].rsplit(".", 1)[0] + f".{i}" for i in layers])
    return vec.to_interventions(scale=scale, positions=positions)


def completion(server, body: dict) -> dict:
    """The first choice of a ``/v1/completions`` answer, which must be a 200."""
    r = httpx.post(f"{server.url}/v1/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]


def health(server) -> dict:
    return httpx.get(f"{server.url}/health", timeout=10).json()


# -- the API -----------------------------------------------------------------------------------
def test_models_and_vectors_are_listed(client, server, oracle):
    models = client.models.list().data
    assert len(models) == 1 and models[0].id.endswith(ARCH)
    assert models[0].model_extra["num_layers"] == oracle.num_layers
    assert models[0].model_extra["hidden_size"] == oracle.hidden_size
    listed = httpx.get(f"{server.url}/v1/vectors", timeout=10).json()["data"]
    assert {v["id"]: v["layers"] for v in listed} == {"calm": [2], "edge": [1], "love": [1, 2]}
    love = next(v for v in listed if v["id"] == "love")
    assert love["method"] == "mean_diff" and love["hidden_size"] == oracle.hidden_size
    assert httpx.get(f"{server.url}/v1/vectors/nope", timeout=10).status_code == 404


def test_plain_and_steered_completions_equal_the_library(client, oracle, vectors):
    _, vecs = vectors
    ids = oracle.encode("I love")
    plain = client.completions.create(model=MODEL, prompt="I love", max_tokens=12, extra_body={"return_token_ids": True})
    want = oracle.generate_tokens(ids, max_tokens=12)
    assert plain.choices[0].model_extra["token_ids"] == want
    assert plain.choices[0].text == oracle.prompts.decode(want)
    assert plain.usage.prompt_tokens == len(ids) and plain.usage.completion_tokens == 12
    spec = {"vector": "love", "scale": 6.0, "layers": [1], "positions": "generated"}
    steered = client.completions.create(model=MODEL, prompt="I love", max_tokens=12,
                                        extra_body={"steering": [spec], "return_token_ids": True})
    want_steered = oracle.generate_tokens(ids, max_tokens=12, interventions=steer(vecs, "love", 6.0, [1], "generated"))
    assert steered.choices[0].model_extra["token_ids"] == want_steered != want
    assert steered.model_extra["steering"] == [{"vector": "love", "scale": 6.0, "layers": [1], "positions": "generated"}]


def test_several_vectors_inline_and_first_generated(client, oracle, vectors):
    """Two entries (a named vector on all its layers, an inline one) and a first-N window."""
    _, vecs = vectors
    ids = oracle.encode("The weather is")
    inline = np.random.default_rng(3).normal(size=oracle.hidden_size).astype(np.float32)
    body = [{"vector": "love", "scale": -3.0},
            {"vector": inline.tolist(), "scale": 5.0, "layers": [2], "positions": {"first_generated": 4}}]
    out = client.completions.create(model=MODEL, prompt="The weather is", max_tokens=10,
                                    extra_body={"steering": body, "return_token_ids": True})
    from mlx_steer.engine import interventions as iv
    from mlx_steer.engine.positions import Positions

    interventions = {k: [v] for k, v in steer(vecs, "love", -3.0).items()}
    key = oracle.resolve("layers.2").key
    interventions[key] = [*interventions.get(key, []), iv.add_vector(inline, scale=5.0, positions=Positions.first_generated(4))]
    assert out.choices[0].model_extra["token_ids"] == oracle.generate_tokens(ids, max_tokens=10, interventions=interventions)
    assert [s["vector"] for s in out.model_extra["steering"]] == ["love", "inline"]
    assert out.model_extra["steering"][1]["positions"] == "first_generated(4)"


def test_chat_template_streaming_and_monitor(client, oracle, vectors):
    _, vecs = vectors
    ids = oracle.encode("Tell me a story", chat=True)
    interventions = steer(vecs, "love", 4.0, [2])
    want = oracle.generate_tokens(ids, max_tokens=10, interventions=interventions)
    body = {"steering": [{"vector": "love", "scale": 4.0, "layers": [2]}], "monitor": [{"vector": "love", "layer": 2}],
            "return_token_ids": True}
    whole = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Tell me a story"}],
                                           max_tokens=10, extra_body=body)
    assert whole.choices[0].model_extra["token_ids"] == want
    assert whole.choices[0].message.content == oracle.prompts.decode(want)
    projections = whole.choices[0].model_extra["projections"]["love"]
    assert len(projections) == len(want) and all(np.isfinite(projections))
    chunks = list(client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Tell me a story"}],
                                                 max_tokens=10, stream=True, extra_body=body))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == oracle.prompts.decode(want)
    streamed = [c.choices[0].model_extra.get("projections") for c in chunks[1:-1]]
    assert [p["love"] for p in streamed] == pytest.approx(projections, rel=1e-6)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    # the monitor reads the steered value: it equals the solo run's recorded layer, projected
    hooks = []
    list(oracle.stream_generate(ids, max_tokens=10, interventions=interventions, record=["layers.2"], hooks_out=hooks))
    unit = vecs["love"][oracle.resolve("layers.2").path]
    unit = unit / np.linalg.norm(unit)
    recorded = oracle.to_numpy(hooks[0].activations["layers.2"])[0][: len(want)] @ unit
    np.testing.assert_allclose(projections, recorded, rtol=1e-4, atol=1e-4)


def test_logprobs_stop_and_usage(client, oracle, server):
    ids = oracle.encode("Paris is the")
    want = oracle.generate_tokens(ids, max_tokens=12)
    out = client.completions.create(model=MODEL, prompt="Paris is the", max_tokens=12, logprobs=3)
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == 12 and len(lp.top_logprobs) == 12
    for chosen, top in zip(lp.token_logprobs, lp.top_logprobs):  # greedy: the chosen token is the best
        assert chosen >= max(top.values()) - 1e-6  # (tokens that decode alike share a key here)
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=5,
                                          logprobs=True, top_logprobs=2)
    assert len(chat.choices[0].logprobs.content) == 5
    for entry in chat.choices[0].logprobs.content:
        assert len(entry.top_logprobs) == 2 and entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)
    text = oracle.prompts.decode(want)
    stop = text[len(text) // 2: len(text) // 2 + 3]
    cut = client.completions.create(model=MODEL, prompt="Paris is the", max_tokens=12, stop=[stop])
    assert cut.choices[0].text == text[: text.index(stop)] and cut.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model=MODEL, prompt="Paris is the", max_tokens=12, stop=[stop], stream=True,
                                         stream_options={"include_usage": True})
    chunks = list(streamed)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == text[: text.index(stop)]
    assert chunks[-1].usage.prompt_tokens == len(ids)


def test_concurrent_requests_with_different_steering_equal_their_solo_runs(server, oracle, vectors):
    _, vecs = vectors
    cases = [("I love", None), ("The weather is great, happy people walk", ("love", 6.0, [1], "all")),
             ("Tell me a story", ("calm", -5.0, None, "generated")), ("Once", None),
             ("Paris is the capital", ("edge", 8.0, None, "all")), ("def add(a, b):", ("love", 3.0, None, "last"))]

    def ask(i):
        prompt, s = cases[i]
        body = {"model": MODEL, "prompt": prompt, "max_tokens": 8 + i, "return_token_ids": True}
        if s is not None:
            body["steering"] = [{"vector": s[0], "scale": s[1], "positions": s[3], **({"layers": s[2]} if s[2] else {})}]
        return completion(server, body)["token_ids"]

    with concurrent.futures.ThreadPoolExecutor(len(cases)) as pool:
        served = list(pool.map(ask, range(len(cases))))
    for i, (prompt, s) in enumerate(cases):
        interventions = None if s is None else steer(vecs, s[0], s[1], s[2], s[3])
        assert served[i] == oracle.generate_tokens(oracle.encode(prompt), max_tokens=8 + i,
                                                   interventions=interventions), f"request {i}"
    assert health(server)["active"] == 0


def test_concurrent_seeded_sampling_draws_what_each_request_draws_alone(server, oracle):
    cases = [("I love", 0.9, 3), ("Tell me a story", 1.2, 3), ("Once", 0.8, 11), ("The weather is", 1.0, 42)]

    def ask(i):
        prompt, temp, seed = cases[i]
        body = {"model": MODEL, "prompt": prompt, "max_tokens": 10, "temperature": temp, "seed": seed,
                "return_token_ids": True}
        return completion(server, body)["token_ids"]

    with concurrent.futures.ThreadPoolExecutor(len(cases)) as pool:
        served = list(pool.map(ask, range(len(cases))))
    for i, (prompt, temp, seed) in enumerate(cases):
        assert served[i] == oracle.generate_tokens(oracle.encode(prompt), max_tokens=10, temp=temp, seed=seed), i


# -- bad input ---------------------------------------------------------------------------------
BAD = [
    ("{not json", 400, None),
    ("[1, 2]", 400, None),
    ({"prompt": "x"}, 400, "model"),
    ({"model": MODEL}, 400, "prompt"),
    ({"model": "gpt-4", "prompt": "x"}, 404, "model"),
    ({"model": MODEL, "prompt": ""}, 400, "prompt"),
    ({"model": MODEL, "prompt": [999999]}, 400, "prompt"),
    ({"model": MODEL, "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ({"model": MODEL, "prompt": "x", "max_tokens": 10**9}, 400, "max_tokens"),
    ({"model": MODEL, "prompt": "word " * 600}, 400, "prompt"),
    ({"model": MODEL, "prompt": "x", "temperature": "hot"}, 400, "temperature"),
    ({"model": MODEL, "prompt": "x", "temperature": -1}, 400, "temperature"),
    ({"model": MODEL, "prompt": "x", "stop": 5}, 400, "stop"),
    ({"model": MODEL, "prompt": "x", "n": 2}, 400, "n"),
    ({"model": MODEL, "prompt": "x", "logprobs": 50}, 400, "logprobs"),
    ({"model": MODEL, "prompt": "x", "steering": [{"vector": "nope"}]}, 400, "steering[0].vector"),
    ({"model": MODEL, "prompt": "x", "steering": [{"vector": [1.0, 2.0, 3.0], "layers": [1]}]}, 400, "steering[0].vector"),
    ({"model": MODEL, "prompt": "x", "steering": [{"vector": ["a"] * 64, "layers": [1]}]}, 400, "steering[0].vector"),
    ({"model": MODEL, "prompt": "x", "steering": [{"vector": [0.0] * 64}]}, 400, "steering[0].layers"),
    ({"model": MODEL, "prompt": "x", "steering": [{"vector": "love", "layers": [7]}]}, 400, "steering[0].layers"),
    ({"model": MODEL, "prompt": "x", "steering": [{"vector": "calm", "layers": [1]}]}, 400, "steering[0].layers"),
    ({"model": MODEL, "prompt": "x", "steering": [{"vector": "love", "positions": "middle"}]}, 400, "steering[0].positions"),
    ({"model": MODEL, "prompt": "x", "steering": [{"vector": "love", "positions": 5000}]}, 400, "steering[0].positions"),
    ({"model": MODEL, "prompt": "x", "steering": [{"vector": "love", "positions": {"start": 4, "stop": 2}}]}, 400,
     "steering[0].positions"),
    ({"model": MODEL, "prompt": "x", "steering": [{"vector": "love", "scale": True}]}, 400, "steering[0].scale"),
    ({"model": MODEL, "prompt": "x", "steering": [{"vector": "love", "strength": 2}]}, 400, "steering[0].strength"),
    ({"model": MODEL, "prompt": "x", "steering": {"vector": "love"}}, 400, "steering"),
    ({"model": MODEL, "prompt": "x", "monitor": ["nope"]}, 400, "monitor[0]"),
    ({"model": MODEL, "prompt": "x", "monitor": [{"vector": "calm", "layer": 1}]}, 400, "monitor[0].layer"),
]
RAW_NONFINITE = [
    '{"model": "%s", "prompt": "x", "steering": [{"vector": "love", "scale": NaN}]}' % MODEL,
    '{"model": "%s", "prompt": "x", "steering": [{"vector": "love", "scale": Infinity}]}' % MODEL,
    '{"model": "%s", "prompt": "x", "steering": [{"vector": [%s], "layers": [1]}]}' % (MODEL, ", ".join(["NaN"] * 64)),
    '{"model": "%s", "prompt": "x", "top_p": -Infinity}' % MODEL,
]


def _post(server, body, path="/v1/completions", **kw):
    content = body if isinstance(body, str) else json.dumps(body)
    return httpx.post(f"{server.url}{path}", content=content, headers={"Content-Type": "application/json", **kw},
                      timeout=30)


@pytest.mark.parametrize("body,status,param", BAD, ids=[f"{i}-{p}" for i, (_, _, p) in enumerate(BAD)])
def test_bad_input_is_a_4xx_naming_the_field(server, body, status, param):
    r = _post(server, body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param, error
    assert "Traceback" not in error["message"]


@pytest.mark.parametrize("raw", RAW_NONFINITE, ids=["nan-scale", "inf-scale", "nan-vector", "inf-top_p"])
def test_nan_and_inf_are_refused(server, raw):
    r = _post(server, raw)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] in ("steering[0].scale", "steering[0].vector", "top_p")


def test_bad_chat_bodies_and_routes(server):
    r = _post(server, {"model": MODEL, "messages": []}, "/v1/chat/completions")
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    r = _post(server, {"model": MODEL, "messages": [{"role": "robot", "content": "x"}]}, "/v1/chat/completions")
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages[0].role"
    r = _post(server, {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2},
              "/v1/chat/completions")
    assert r.status_code == 400 and r.json()["error"]["param"] == "top_logprobs"
    assert httpx.get(f"{server.url}/v1/nothing", timeout=10).status_code == 404
    r = _post(server, "x" * (9 * 1024 * 1024))
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"


def test_server_is_unchanged_after_bad_input(client, oracle, server):
    """Runs after the bad-input tests: the next unsteered request equals plain generation."""
    out = client.completions.create(model=MODEL, prompt="I love", max_tokens=9, extra_body={"return_token_ids": True})
    assert out.choices[0].model_extra["token_ids"] == oracle.generate_tokens(oracle.encode("I love"), max_tokens=9)
    stats = health(server)
    assert stats["active"] == 0 and stats["failures"] == 0


# -- faults ------------------------------------------------------------------------------------
def test_disconnect_mid_stream_frees_the_row(server):
    before = health(server)["cancelled"]
    body = {"model": MODEL, "prompt": "Tell me a story", "max_tokens": 400, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=30) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        got = [line for line in (next(lines) for _ in range(8)) if line.startswith("data:")]
        assert len(got) >= 3
        assert health(server)["active"] == 1
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and health(server)["active"]:
        time.sleep(0.02)
    stats = health(server)
    assert stats["active"] == 0 and stats["held"] == 0 and stats["cancelled"] == before + 1


@pytest.fixture(scope="module")
def small_server(tiny_dir, vectors, tmp_path_factory):
    """A second server: queue of 2, an API key."""
    with serving(["--model", str(tiny_dir(ARCH)), "--vector", f"love={vectors[0] / 'love.safetensors'}",
                  "--max-queue", "2", "--api-key", "s3cret"], tmp_path_factory.mktemp("serve_log2")) as srv:
        yield srv


def test_api_key_is_required(small_server):
    body = {"model": MODEL, "prompt": "x", "max_tokens": 2}
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        r = _post(small_server, body, **headers)
        assert r.status_code == 401, r.text
        assert r.json()["error"]["code"] in ("missing_api_key", "invalid_api_key")
    assert httpx.get(f"{small_server.url}/v1/models", timeout=10).status_code == 401
    keyed = openai.OpenAI(base_url=f"{small_server.url}/v1", api_key="s3cret", max_retries=0, timeout=60)
    assert keyed.completions.create(model=MODEL, prompt="x", max_tokens=2).choices[0].finish_reason
    assert httpx.get(f"{small_server.url}/", timeout=10).status_code == 200  # the page itself is public
    unkeyed = openai.OpenAI(base_url=f"{small_server.url}/v1", api_key="nope", max_retries=0, timeout=60)
    with pytest.raises(openai.AuthenticationError):
        unkeyed.models.list()


def test_full_queue_answers_429(small_server):
    """Eight requests at once on a server that holds two: the extra ones get 429 at once, the
    admitted ones complete, and the server takes requests again afterwards."""
    auth = {"Authorization": "Bearer s3cret"}
    long = {"model": MODEL, "prompt": "Tell me a story", "max_tokens": 480, "ignore_eos": True}
    with httpx.Client(timeout=60, headers=auth, limits=httpx.Limits(max_connections=16)) as http:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda _: http.post(f"{small_server.url}/v1/completions", json=long), range(8)))
        codes = [r.status_code for r in replies]
        assert codes.count(429) >= 1 and codes.count(200) >= 2 and set(codes) == {200, 429}, codes
        for r in replies:
            if r.status_code == 429:
                assert r.json()["error"]["code"] == "queue_full" and r.headers["retry-after"] == "1"
            else:
                assert r.json()["usage"]["completion_tokens"] == 480
        r = http.post(f"{small_server.url}/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 2})
        assert r.status_code == 200, r.text
        assert httpx.get(f"{small_server.url}/health").json()["busy"] >= 1


# -- the torch backend -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def torch_server(tiny_dir, vectors, tmp_path_factory):
    pytest.importorskip("torch")
    with serving(["--model", str(tiny_dir(ARCH)), "--vectors-dir", str(vectors[0]), "--backend", "torch"],
                 tmp_path_factory.mktemp("serve_log3")) as srv:
        yield srv


def test_torch_backend_serves_the_same_contract(torch_server, tiny_dir, vectors):
    """Concurrent requests, steered differently, each equal the torch library's solo run."""
    from mlx_steer.torch_backend import load

    _, vecs = vectors
    m = load(str(tiny_dir(ARCH)))
    cases = [("I love", None), ("Tell me a story", ("love", 6.0, [1])), ("The weather is", ("calm", -5.0, None))]

    def ask(case):
        prompt, s = case
        body = {"model": MODEL, "prompt": prompt, "max_tokens": 8, "return_token_ids": True, "monitor": ["calm"]}
        if s is not None:
            body["steering"] = [{"vector": s[0], "scale": s[1], **({"layers": s[2]} if s[2] else {})}]
        return completion(torch_server, body)

    with concurrent.futures.ThreadPoolExecutor(len(cases)) as pool:
        served = list(pool.map(ask, cases))
    assert httpx.get(f"{torch_server.url}/v1/models", timeout=10).json()["data"][0]["backend"] == "torch"
    for (prompt, s), choice in zip(cases, served):
        interventions = None if s is None else steer(vecs, *s)
        assert choice["token_ids"] == m.generate_tokens(m.encode(prompt), max_tokens=8, interventions=interventions)
        assert len(choice["projections"]["calm"]) == len(choice["token_ids"])


def test_conditional_steering_over_http(server, oracle, vectors):
    """``steering[0].when`` over the wire: each request is steered on its generated tokens only where its
    prompt passes the condition (the library's gated run is the oracle) and says so in ``conditions``."""
    from mlx_steer.analysis import condition_values
    from mlx_steer.engine import interventions as iv

    _, vecs = vectors
    prompts = ["I love", "Tell me a story about a cat"]
    d = vecs["edge"].directions[oracle.layer_paths[1]]
    values = [float(x) for x in condition_values(oracle, prompts, site="layers.1", direction=d)]
    threshold = sum(values) / 2
    cond = iv.condition(d, site="layers.1", threshold=threshold)
    for prompt, value in zip(prompts, values):
        body = {"model": MODEL, "prompt": prompt, "max_tokens": 8, "return_token_ids": True,
                "steering": [{"vector": "love", "scale": 6.0, "layers": [2],
                              "when": {"vector": "edge", "layer": 1, "threshold": threshold}}]}
        r = httpx.post(f"{server.url}/v1/completions", json=body, timeout=60)
        assert r.status_code == 200, r.text
        out = r.json()
        gated = {k: v.when(cond) for k, v in steer(vecs, "love", 6.0, [2]).items()}
        assert out["choices"][0]["token_ids"] == oracle.generate_tokens(oracle.encode(prompt), max_tokens=8,
                                                                        interventions=gated)
        (report,) = out["conditions"]
        assert report["condition_met"] is (value > threshold) and report["value"] == pytest.approx(value, rel=1e-4)
    bad = httpx.post(f"{server.url}/v1/completions", json={**body, "steering": [
        {"vector": "love", "layers": [2], "when": {"vector": "nope", "threshold": 0}}]}, timeout=60)
    assert bad.status_code == 400 and "steering[0].when.vector" in bad.text
