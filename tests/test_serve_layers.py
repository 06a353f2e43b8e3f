"""A steering or monitor layer the named vector has no direction at (what the playground's sweep
once sent for every cell of such a layer) is refused with 400 before anything runs: the message names
the layer as the request gave it and the vector's layers, which the vectors endpoint lists too."""

from __future__ import annotations

import httpx
import pytest

from serve_helpers import serving, write_vectors

pytest.importorskip("fastapi", reason="the serve tests need the test extra: pip install -e '.[test]'")

ARCH = "llama"


@pytest.fixture(scope="module")
def server(tiny_dir, shared_models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("layers_vectors")
    write_vectors(shared_models(ARCH), folder)  # love: layers 1, 2; calm: 2; edge: 1
    with serving(["--model", str(tiny_dir(ARCH)), "--vectors-dir", str(folder)],
                 tmp_path_factory.mktemp("layers_log")) as srv:
        yield srv


def counters(server) -> dict:
    stats = httpx.get(f"{server.url}/health", timeout=10).json()
    return {k: stats[k] for k in ("requests", "tokens", "failures", "active")}


CASES = [  # (extra request fields, param, message)
    ({"steering": [{"vector": "calm", "scale": 4, "layers": [1]}]}, "steering[0].layers",
     "vector 'calm' has no direction at layer 1 (model.layers.1); its layers: 2"),
    ({"steering": [{"vector": "love", "scale": 4, "layers": [2, 0]}]}, "steering[0].layers",
     "vector 'love' has no direction at layer 0 (model.layers.0); its layers: 1, 2"),
    ({"steering": [{"vector": "edge", "scale": 4, "layers": ["layers.2"]}]}, "steering[0].layers",
     "vector 'edge' has no direction at model.layers.2; its layers: 1"),
    ({"monitor": [{"vector": "calm", "layer": 1}]}, "monitor[0].layer",
     "vector 'calm' has no direction at layer 1 (model.layers.1); its layers: 2"),
]


@pytest.mark.parametrize("extra,param,message", CASES, ids=[c[1] + "-" + str(i) for i, c in enumerate(CASES)])
@pytest.mark.parametrize("route", ["/v1/completions", "/v1/chat/completions"])
def test_a_layer_the_vector_lacks_is_refused_naming_its_layers(server, route, extra, param, message):
    prompt = {"prompt": "I love"} if route == "/v1/completions" else {"messages": [{"role": "user", "content": "Hi"}]}
    before = counters(server)
    r = httpx.post(f"{server.url}{route}", json={"model": ARCH, **prompt, "max_tokens": 4, **extra}, timeout=60)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["message"] == f"{param}: {message}", error
    assert counters(server) == before  # refused before the engine saw it


def test_the_vectors_endpoint_lists_each_vectors_layers(server):
    """What the playground builds its layer choices from."""
    listed = httpx.get(f"{server.url}/v1/vectors", timeout=10).json()["data"]
    assert {v["id"]: v["layers"] for v in listed} == {"calm": [2], "edge": [1], "love": [1, 2]}
    for name, layers in (("calm", [2]), ("love", [1, 2])):
        r = httpx.post(f"{server.url}/v1/completions", timeout=60, json={
            "model": ARCH, "prompt": "I love", "max_tokens": 3,
            "steering": [{"vector": name, "scale": 2, "layers": layers}], "monitor": [{"vector": name, "layer": layers[-1]}]})
        assert r.status_code == 200, r.text
        assert r.json()["steering"][0]["layers"] == layers
