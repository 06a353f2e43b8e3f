"""A gated intervention (``.when(condition)``) acts only on generated tokens: its gate is decided once
the row's prompt has been read. One that could never act (positions "prompt", explicit positions in
the prompt, any in a forward over prompts) is refused when planned, naming the intervention and what a
gate acts on, in every entry point (generate, batch_generate, the continuous batch, run, HTTP), and the
model is untouched. Conditions themselves are validated strictly (threshold, site, a site that holds
no vector). Oracles: outputs after a refused call equal those before; a gated intervention on
positions past the prompt whose condition always holds equals the ungated one."""

from __future__ import annotations

import numpy as np
import pytest

from mlx_steer.engine import interventions as iv
from torch_fixtures import *  # noqa: F403  (fixtures)
from torch_fixtures import BACKENDS, assert_untouched, snapshot

PROMPT = "I love this wonderful day"
N = 4
HEAD = r"add_vector at 'model\.layers\.2' gated by a condition \(when\) cannot act where asked"
REFUSED = HEAD + r": .*generated tokens only"


def _always(m):
    """A condition that holds for every prompt (a cosine is always above -2)."""
    d = np.random.default_rng(1).normal(size=m.hidden_size).astype(np.float32)
    return iv.condition(d, site="layers.1", threshold=-2.0, name="always")


def _vector(m):
    return np.random.default_rng(2).normal(size=m.hidden_size).astype(np.float32) * 4


def _state(m):
    return m.generate_tokens(PROMPT, max_tokens=N), m.to_numpy(m.run(PROMPT).logits)


def _assert_same_state(m, before) -> None:
    tokens, logits = _state(m)
    assert tokens == before[0] and np.array_equal(logits, before[1])
    assert m.remove_all_hooks() == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_gated_interventions_that_could_never_act_are_refused(backend_models, backend):
    m = backend_models(backend, "llama")
    cond, v = _always(m), _vector(m)
    n = len(m.encode(PROMPT))
    before, params = _state(m), snapshot(m)
    for positions in ("prompt", [1], slice(0, 2), [1, n + 1], slice(n - 1, n + 2)):
        gated = {"layers.2": iv.add_vector(v, positions=positions).when(cond)}
        with pytest.raises(ValueError, match=REFUSED):
            m.generate_tokens(PROMPT, max_tokens=N, interventions=gated)
        with pytest.raises(ValueError, match=REFUSED):
            m.batch_generate([PROMPT, "sad"], max_tokens=N, interventions=gated)
        with pytest.raises(ValueError, match=REFUSED):
            m.compile_steering(gated, prompt_len=n, max_tokens=N)  # the server's and the batch's planner
    for positions in ("all", "generated", "last", [n + 1]):  # a forward over prompts generates nothing
        with pytest.raises(ValueError, match=HEAD + r": a forward over prompts \(run/trace\) generates nothing.*generated tokens only"):
            m.run(PROMPT, interventions={"layers.2": iv.add_vector(v, positions=positions).when(cond)})
    with pytest.raises(ValueError, match=REFUSED), m.batch_generator() as gen:
        gen.insert(m.encode(PROMPT), max_tokens=N, interventions={"layers.2": iv.add_vector(v, positions="prompt")
                                                                   .when(cond)})
    with pytest.raises(ValueError, match=REFUSED):  # a persistent edit on the prompt is refused too
        m.steer({"layers.2": iv.add_vector(v, positions="prompt").when(cond)})
    _assert_same_state(m, before)
    assert_untouched(m, params)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gated_positions_past_the_prompt_act(backend_models, backend):
    """Explicit positions past the prompt are accepted and act: with a condition that always holds,
    the gated run equals the ungated one, which differs from the plain run."""
    m = backend_models(backend, "llama")
    cond, v = _always(m), _vector(m)
    n = len(m.encode(PROMPT))
    for positions in ([n + 1], slice(n, n + 2)):
        steer = iv.add_vector(v, positions=positions)
        gated = m.generate_tokens(PROMPT, max_tokens=N, interventions={"layers.2": steer.when(cond)})
        assert gated == m.generate_tokens(PROMPT, max_tokens=N, interventions={"layers.2": steer})
        assert gated != m.generate_tokens(PROMPT, max_tokens=N)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_row_scoped_gate_is_checked_against_its_own_rows_prompt(backend_models, backend):
    """A window past a short row's prompt but inside a long row's: refused for every row, accepted for
    the short row alone (and then it is that row's gated run)."""
    m = backend_models(backend, "llama")
    cond, v = _always(m), _vector(m)
    short, long = "sad", "The weather is great, happy people walk in the park"
    ns, nl = len(m.encode(short)), len(m.encode(long))
    assert ns + 1 < nl
    steer = iv.add_vector(v, positions=slice(ns, ns + 3))
    with pytest.raises(ValueError, match=HEAD + f".*position {ns} lies in the prompt \\(positions < {nl}\\).*generated tokens only"):
        m.batch_generate([short, long], max_tokens=N, interventions={"layers.2": steer.when(cond)})
    res = m.batch_generate([short, long], max_tokens=N, interventions=[{"layers.2": steer.when(cond)}, None])
    assert res.token_ids[0] == m.generate_tokens(short, max_tokens=N, interventions={"layers.2": steer})
    assert res.token_ids[1] == m.generate_tokens(long, max_tokens=N)


def test_the_server_answers_400_with_the_engines_message(load_tiny):
    """Over HTTP (the app in process): a gated entry on the prompt is a 400 naming the intervention,
    not a 200 with ``condition_met: true`` and unsteered tokens."""
    pytest.importorskip("fastapi")
    import mlx_steer as ms
    from fastapi.testclient import TestClient
    from mlx_steer.serve.app import create_app

    m = load_tiny("llama")
    d = np.random.default_rng(1).normal(size=m.hidden_size).astype(np.float32)
    app = create_app(m, model_id="tiny", vectors={"topic": ms.SteeringVector({"model.layers.1": d}),
                                                  "love": ms.SteeringVector({"model.layers.2": _vector(m)})})
    when = {"vector": "topic", "layer": 1, "threshold": -2.0}
    with TestClient(app) as client:
        for positions in ("prompt", [0, 1]):
            body = {"model": "tiny", "prompt": PROMPT, "max_tokens": N, "steering": [
                {"vector": "love", "layers": [2], "scale": 4.0, "positions": positions, "when": when}]}
            r = client.post("/v1/completions", json=body)
            assert r.status_code == 400, r.text
            assert "gated by a condition (when) cannot act where asked" in r.text and "generated tokens only" in r.text
        ok = client.post("/v1/completions", json={**body, "steering": [{**body["steering"][0], "positions": "generated"}]})
        assert ok.status_code == 200, ok.text


def test_condition_arguments_are_validated_strictly(shared_models):
    m = shared_models("llama")
    d = np.ones(m.hidden_size, np.float32)
    for bad in (None, "0.5", True, np.bool_(False), [0.5], 1 + 0j):
        with pytest.raises(TypeError, match=r"condition threshold must be a real number, got"):
            iv.condition(d, site="layers.1", threshold=bad)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"condition threshold must be finite"):
            iv.condition(d, site="layers.1", threshold=bad)
    for good in (0, 0.5, np.float32(0.25), np.int64(1)):
        assert iv.condition(d, site="layers.1", threshold=good).threshold == float(good)
    for bad in (None, "", 6, ":input"):
        with pytest.raises(ValueError, match=r"condition site must be a site string like 'layers\.6'"):
            iv.condition(d, site=bad, threshold=0.0)
    with pytest.raises(ValueError, match=r"unknown hook point 'middle' in condition site 'layers\.1:middle'; "
                                         r"valid: output, input"):
        iv.condition(d, site="layers.1:middle", threshold=0.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_condition_on_a_site_that_holds_no_vector_is_refused(backend_models, backend):
    """``embed_tokens:input`` is token ids: refused by name (it was a raw matmul error); a site that
    does not resolve is refused by the resolver; the model is untouched."""
    m = backend_models(backend, "llama")
    v = _vector(m)
    before, params = _state(m), snapshot(m)
    ids = iv.condition(np.ones(m.hidden_size), site="embed_tokens:input", threshold=0.0, name="ids")
    with pytest.raises(ValueError, match=r"condition 'ids' reads site 'model\.embed_tokens:input', whose "
                                         r"activation is not a vector .*token ids.*'layers\.i'"):
        m.generate_tokens(PROMPT, max_tokens=N, interventions={"layers.2": iv.add_vector(v).when(ids)})
    nowhere = iv.condition(np.ones(m.hidden_size), site="layers.1.nope", threshold=0.0)
    with pytest.raises(ValueError, match=r"unknown site path 'layers\.1\.nope'"):
        m.generate_tokens(PROMPT, max_tokens=N, interventions={"layers.2": iv.add_vector(v).when(nowhere)})
    _assert_same_state(m, before)
    assert_untouched(m, params)
