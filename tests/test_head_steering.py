"""Head-level steering (``mlx_steer.heads.add_to_heads``): the chosen heads' ``z`` move by exactly
``scale * v`` at the selected positions and nothing else at that site moves; it equals ``add_vector``
of the vector padded by hand at the output projection's input (logits bit-identical), per row, by
span, gated and in generation, on both backends; bad layers, heads and lengths are refused by name."""

import numpy as np
import pytest

from mlx_steer import spans
from mlx_steer.engine import interventions as iv
from mlx_steer.heads import add_to_heads, head_z_site
from span_oracle import inside
from tiny_models import HEADS, HIDDEN
from torch_fixtures import *  # noqa: F403  (fixtures)
from torch_fixtures import BACKENDS, assert_untouched, snapshot

D_HEAD = HIDDEN // HEADS
BATCH = ["I love", "The weather is great, happy people walk", "Tell me a story about a cat"]
O_PROJ = {"gpt2": "attn.c_proj"}


def _vectors(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=D_HEAD).astype(np.float32), rng.normal(size=D_HEAD).astype(np.float32)


def _by_hand(arch: str, layer: int, chosen: dict[int, np.ndarray]) -> tuple[str, np.ndarray]:
    """The site and the (H * d_head) vector, written out here: v in each head's columns, zero elsewhere."""
    padded = np.zeros(HEADS * D_HEAD, np.float32)
    for h, v in chosen.items():
        padded[h * D_HEAD:(h + 1) * D_HEAD] = v
    return f"layers.{layer}.{O_PROJ.get(arch, 'self_attn.o_proj')}:input", padded


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arch", ["llama", "gpt2", "phi3"])
def test_chosen_heads_move_by_v_and_equal_the_padded_add_vector(backend_models, backend, arch):
    m = backend_models(backend, arch)
    a, b = _vectors()
    before = snapshot(m)
    steer = add_to_heads(m, {1: {0: a, -2: b}}, scale=2.5, positions="last")
    site = head_z_site(m, 1)
    assert list(steer) == [site] == [m.resolve_key(_by_hand(arch, 1, {})[0])]
    plain = m.run(BATCH, record=[site])
    steered = m.run(BATCH, record=[site], interventions=steer)
    hand_site, padded = _by_hand(arch, 1, {0: a, 2: b})
    oracle = m.run(BATCH, interventions={hand_site: iv.add_vector(padded, scale=2.5, positions="last")})
    assert_untouched(m, before)
    np.testing.assert_array_equal(m.to_numpy(steered.logits), m.to_numpy(oracle.logits))
    moved = m.to_numpy(steered.activations[site]) - m.to_numpy(plain.activations[site])
    want = np.zeros_like(moved)
    want[:, -1] = 2.5 * padded  # the last position of each row (left padding puts it at -1)
    np.testing.assert_allclose(moved, want, atol=1e-5, rtol=0)
    assert not np.array_equal(m.to_numpy(steered.logits), m.to_numpy(plain.logits))


@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_and_generation_equal_solo_runs(backend_models, backend):
    m = backend_models(backend, "qwen2")
    a, b = _vectors(1)
    steer = add_to_heads(m, {2: {3: a}, -1: {1: b}}, scale=4.0, positions="generated", rows=[1])
    got = m.batch_generate(BATCH[:2], max_tokens=6, interventions=steer)
    s2, p2 = _by_hand("qwen2", 2, {3: a})
    s3, p3 = _by_hand("qwen2", 3, {1: b})
    alone = {s2: iv.add_vector(p2, scale=4.0, positions="generated"),
             s3: iv.add_vector(p3, scale=4.0, positions="generated")}
    assert got.token_ids[0] == m.generate_tokens(BATCH[0], max_tokens=6)
    assert got.token_ids[1] == m.generate_tokens(BATCH[1], max_tokens=6, interventions=alone)
    assert got.token_ids[1] != m.generate_tokens(BATCH[1], max_tokens=6)
    assert got.token_ids[0] != m.generate_tokens(BATCH[0], max_tokens=6, interventions=alone)  # rows= held it off


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_span_selector_equals_the_indices_found_by_hand(backend_models, backend):
    m = backend_models(backend, "llama")
    a, _ = _vectors(2)
    seq = m.encode("a <think> b c </think> d e")
    text_of = lambda t: m.tokenizer.decode([t])  # noqa: E731
    idx = list(inside(seq, "<think>", "</think>", text_of))
    assert 0 < len(idx) < len(seq)
    by_span = add_to_heads(m, {0: {2: a}}, scale=3.0, positions=spans.between("<think>", "</think>"))
    site, padded = _by_hand("llama", 0, {2: a})
    by_index = {site: iv.add_vector(padded, scale=3.0, positions=idx)}
    got, want = (m.to_numpy(m.run([seq], interventions=s).logits) for s in (by_span, by_index))
    np.testing.assert_array_equal(got, want)
    assert not np.array_equal(got, m.to_numpy(m.run([seq]).logits))


@pytest.mark.parametrize("backend", BACKENDS)
def test_gated_head_steering_acts_only_where_the_condition_holds(backend_models, backend):
    m = backend_models(backend, "llama")
    a, _ = _vectors(3)
    d = m.to_numpy(m.run(BATCH[1:2], record=["layers.1"], record_positions="last").activations[
        m.resolve_key("layers.1")])[0, 0]
    yes = iv.condition(d, site="layers.1", threshold=0.9, read="last", name="like row 1")
    steer = add_to_heads(m, {1: {1: a}}, scale=5.0, positions="generated", when=yes)
    got = m.batch_generate(BATCH[:2], max_tokens=5, interventions=steer)
    site, padded = _by_hand("llama", 1, {1: a})
    ungated = {site: iv.add_vector(padded, scale=5.0, positions="generated")}
    assert got.token_ids[0] == m.generate_tokens(BATCH[0], max_tokens=5)  # the condition fails for row 0
    assert got.token_ids[1] == m.generate_tokens(BATCH[1], max_tokens=5, interventions=ungated)
    assert got.token_ids[1] != m.generate_tokens(BATCH[1], max_tokens=5)
    assert got.token_ids[0] != m.generate_tokens(BATCH[0], max_tokens=5, interventions=ungated)  # the gate held it off
    assert [c[0]["met"] for c in got.conditions] == [False, True]


BAD = [
    ({4: {0: "v"}}, r"layer 4 out of range for a 4-layer model; valid: -4\.\.3"),
    ({1: {4: "v"}}, r"head 4 out of range at layer 1 \(4 heads\); valid: -4\.\.3"),
    ({1: {0: "short"}}, r"the vector of layer 1 head 0 has length 15 \(shape \(15,\)\); this model's heads are "
                        r"d_head = 16 wide"),
    ({1: {0: "v", -4: "v"}}, r"head -4 of layer 1 is given twice"),
    ({1: {}}, r"layer 1: give a non-empty \{head: vector\} mapping"),
    ({}, r"heads must be a non-empty \{layer: \{head: vector\}\} mapping"),
    ({"1": {0: "v"}}, r"layer '1' is not an integer; valid: -4\.\.3"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec,message", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_layers_heads_and_lengths_are_refused_by_name(backend_models, backend, spec, message):
    m = backend_models(backend, "llama")
    vec = {"v": np.ones(D_HEAD, np.float32), "short": np.ones(D_HEAD - 1, np.float32)}
    heads = {layer: {h: vec[v] for h, v in chosen.items()} for layer, chosen in spec.items()}
    with pytest.raises(ValueError, match=message):
        add_to_heads(m, heads)


# -- the server's steering field: {"heads": [{"layer", "head", "vector"}]} --------------------------
@pytest.fixture(scope="module", params=BACKENDS)
def head_server(request, tiny_dir, tmp_path_factory):
    pytest.importorskip("fastapi", reason="the serve tests need the test extra: pip install -e '.[test]'")
    from serve_helpers import serving

    with serving(["--model", str(tiny_dir("llama")), "--backend", request.param],
                 tmp_path_factory.mktemp(f"heads_log_{request.param}")) as srv:
        yield request.param, srv


def _post(server, steering: list):
    import httpx

    return httpx.post(f"{server.url}/v1/completions", timeout=60, json={
        "model": "llama", "prompt": BATCH[1], "max_tokens": 8, "temperature": 0, "return_token_ids": True,
        "steering": steering})


def test_served_head_steering_equals_add_to_heads(head_server, backend_models):
    backend, server = head_server
    m = backend_models(backend, "llama")
    a, b = _vectors(4)
    body = [{"heads": [{"layer": 1, "head": 0, "vector": a.tolist()}, {"layer": -1, "head": 3, "vector": b.tolist()}],
             "scale": 3.0, "positions": "generated"}]
    r = _post(server, body)
    assert r.status_code == 200, r.text
    got = r.json()["choices"][0]["token_ids"]
    want = m.generate_tokens(BATCH[1], max_tokens=8, interventions=add_to_heads(
        m, {1: {0: a}, 3: {3: b}}, scale=3.0, positions="generated"))
    assert got == want and want != m.generate_tokens(BATCH[1], max_tokens=8)
    assert r.json()["steering"] == [{"vector": "heads", "scale": 3.0, "layers": [1, 3], "positions": "generated",
                                     "heads": [{"layer": 1, "head": 0}, {"layer": -1, "head": 3}]}]


SERVE_BAD = [
    ({"layer": 4, "head": 0, "vector": "v"}, "steering[0].heads[0].layer",
     "layer 4 out of range for a 4-layer model; valid: -4..3"),
    ({"layer": 1, "head": -5, "vector": "v"}, "steering[0].heads[0].head",
     "head -5 out of range (4 heads at layer 1); valid: -4..3"),
    ({"layer": 1, "head": 0, "vector": "short"}, "steering[0].heads[0].vector",
     "a head's vector has 15 values; this model's heads are d_head = 16 wide"),
]


@pytest.mark.parametrize("head,param,message", SERVE_BAD, ids=[c[1] for c in SERVE_BAD])
def test_bad_served_heads_are_a_400_naming_the_field(head_server, head, param, message):
    _, server = head_server
    vec = {"v": [0.5] * D_HEAD, "short": [0.5] * (D_HEAD - 1)}[head["vector"]]
    r = _post(server, [{"heads": [{"layer": 1, "head": 1, "vector": [0.0] * D_HEAD}, {**head, "vector": vec}]}])
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    param = param.replace("heads[0]", "heads[1]")
    assert error["param"] == param and error["message"] == f"{param}: {message}", error
    both = _post(server, [{"heads": [{"layer": 1, "head": 1, "vector": [0.0] * D_HEAD}], "layers": [1]}])
    assert both.status_code == 400 and both.json()["error"]["param"] == "steering[0].heads"
