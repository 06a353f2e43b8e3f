"""The runnable examples in quick mode on the real SmolLM2-135M-Instruct, each run once in-process
through its ``main(argv)`` and checked against oracles computed here: plain SteerableModel calls,
numpy, the model's weights edited by hand, and recomputation of a generation without a cache."""

import importlib.util
import json
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

import mlx_steer as ms
from mlx_steer import analysis as an
from mlx_steer.engine import interventions as niv
from mlx_steer.vectors import similarity
from mlx_steer.engine.positions import Positions

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quick(smollm2_dir):
    """quick(name) -> (module, what its main returned), run once per test module."""
    runs: dict = {}

    def get(name: str):
        if name not in runs:
            module = _load(name)
            runs[name] = module, module.main(["--quick", "--model", str(smollm2_dir)])
        return runs[name]

    return get


def _margin(logits: mx.array, good: list[int], bad: list[int]) -> np.ndarray:
    last = np.array(logits[:, -1].astype(mx.float32)).astype(np.float64)
    return last[:, good].mean(-1) - last[:, bad].mean(-1)


# -- caa_mlxterp: the mlxterp facade ---------------------------------------------------------------
def test_caa_facade_activations_equal_native_recording(quick):
    _, r = quick("caa_mlxterp")
    native, site = r["model"].steerable, f"layers.{r['layer']}"
    for prompts, acts in ((r["positive_prompts"], r["positive_acts"]), (r["negative_prompts"], r["negative_acts"])):
        for prompt, act in zip(prompts, acts):
            ref = native.run(prompt, record=[site], logits=False).activations[site][0, -1]
            assert np.array_equal(act, np.array(ref))
    expected = r["positive_acts"].mean(0) - r["negative_acts"].mean(0)
    np.testing.assert_allclose(r["steering_vector"], expected, rtol=1e-5, atol=1e-5)


def test_caa_facade_steering_equals_native_steering(quick):
    _, r = quick("caa_mlxterp")
    native, site, v, s = r["model"].steerable, f"layers.{r['layer']}", r["steering_vector"], r["strength"]
    prompt = r["test_prompt"]
    assert mx.array_equal(r["normal"], native.run(prompt).logits)
    assert mx.array_equal(r["steered"], native.run(prompt, interventions={site: niv.add_vector(v * s)}).logits)
    assert mx.array_equal(r["against"], native.run(prompt, interventions={site: niv.add_vector(-v * s)}).logits)
    for strength, logits in r["by_strength"].items():
        if strength == 0.0:
            assert mx.array_equal(logits, r["normal"])
    multi = {f"layers.{i}": niv.add_vector(d * r["multi_strength"]) for i, d in r["multi_vectors"].items()}
    assert mx.array_equal(r["multi"], native.run(prompt, interventions=multi).logits)
    tokens = native.generate_tokens(prompt, max_tokens=r["gen_tokens"], interventions={site: niv.add_vector(v * s)})
    assert r["texts"][1] == r["model"].decode(tokens)


def test_caa_vector_moves_the_sentiment_margin(quick):
    module, r = quick("caa_mlxterp")
    m = r["model"]
    good = [m.encode(w)[-1] for w in module.GOOD_WORDS]
    bad = [m.encode(w)[-1] for w in module.BAD_WORDS]
    plain, up, down = (_margin(r[k], good, bad)[0] for k in ("normal", "steered", "against"))
    assert down < plain < up, (down, plain, up)


# -- nnsight_recipes -------------------------------------------------------------------------------
def test_recipes_last_position_steering_and_persistent_edit(quick):
    _, r = quick("nnsight_recipes")
    base, steered = r["base"], r["steered_last"]
    assert mx.array_equal(steered[:, :-1], base[:, :-1])  # earlier positions untouched, bit for bit
    assert not mx.allclose(steered[:, -1], base[:, -1])
    assert mx.array_equal(r["under_handle"], steered)
    assert mx.array_equal(r["after_remove"], base)
    assert r["handle_text"] == r["steered_text"] != r["plain_text"]


def test_recipes_head_ablation_equals_zeroed_projection_columns(quick):
    module, r = quick("nnsight_recipes")
    m = r["model"]
    o_proj = m.model.layers[module.HEAD_LAYER].self_attn.o_proj
    hd = m.hidden_size // m.n_heads
    weight = o_proj.weight
    try:
        for head, logprob in r["head_logprobs"].items():
            keep = np.ones(weight.shape[1], dtype=np.float32)
            keep[head * hd : (head + 1) * hd] = 0.0
            o_proj.weight = weight * mx.array(keep)  # the head's input columns, zeroed by hand
            assert module.answer_logprob(m) == pytest.approx(logprob, abs=1e-4)
    finally:
        o_proj.weight = weight
    assert module.answer_logprob(m) == r["clean_logprob"]


def test_recipes_mean_ablation_uses_the_calibration_mean(quick):
    _, r = quick("nnsight_recipes")
    m, site = r["model"], r["mlp_site"]
    start, stop = r["calibration_window"]
    per_prompt = [m.to_numpy(m.run(c, record=[site], logits=False).activations[site])[0, start:stop].mean(0)
                  for c in r["calibration"]]
    np.testing.assert_allclose(r["mlp_mean"], np.mean(per_prompt, axis=0), rtol=1e-4, atol=1e-4)
    assert r["mean_ablated"] != r["clean_logprob"] and r["zeroed"] != r["clean_logprob"]


def test_recipes_probe_multi_layer_and_top_tokens(quick):
    module, r = quick("nnsight_recipes")
    m, vec = r["model"], r["vector"]
    site = m.resolve_path(f"layers.{module.LAYER}")
    assert np.linalg.norm(r["probe"][site]) == pytest.approx(1.0, abs=1e-5)
    assert r["probe_cosine"] > 0.5  # the probe and the mean difference agree on the direction
    by_layer = {p: niv.add_vector(vec[p], scale=r["multi_scale"] * w) for p, w in r["multi_weights"].items()}
    assert mx.array_equal(r["multi"], m.run(module.PROMPT, interventions=by_layer).logits)
    last = m.layer_paths[-1]
    logits = m.unembed(vec[last], final_norm=True)
    k = len(r["top_tokens"].boosted)
    assert [i for _, i, _ in r["top_tokens"].boosted] == np.argsort(-logits, kind="stable")[:k].tolist()
    assert [i for _, i, _ in r["top_tokens"].suppressed] == np.argsort(logits, kind="stable")[:k].tolist()


# -- actadd ----------------------------------------------------------------------------------------
def test_actadd_unit_vector_and_grid_cell(quick):
    module, r = quick("actadd")
    m, unit, grid = r["model"], r["unit"], r["grid"]
    for path, d in unit.directions.items():
        assert np.linalg.norm(d) == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(d, r["raw"][path] / np.linalg.norm(r["raw"][path]), rtol=1e-5, atol=1e-6)
    assert grid.grid().shape == (len(grid.layers), len(grid.strengths))
    good = [m.tokenizer.encode(w, add_special_tokens=False)[0] for w in module.TARGET]
    bad = [m.tokenizer.encode(w, add_special_tokens=False)[0] for w in module.CONTRAST]
    assert grid.baseline == pytest.approx(_margin(m.run(r["neutral"]).logits, good, bad).mean(), abs=1e-4)
    for row in grid.table:
        if row.strength == 0.0:
            assert (row.behaviour, row.kl) == (grid.baseline, 0.0)
            continue
        d = unit[m.resolve_path(f"layers.{row.layer}")]
        steered = m.run(r["neutral"], interventions={f"layers.{row.layer}:input": niv.add_vector(d, scale=row.strength)})
        assert row.behaviour == pytest.approx(_margin(steered.logits, good, bad).mean(), abs=1e-4)
        assert row.behaviour > grid.baseline and row.kl > 0.0  # love - hate raises the love margin


def test_actadd_front_aligned_tensor_and_seeded_sampling(quick):
    module, r = quick("actadd")
    m, site = r["model"], r["site"]
    pos, neg = (m.encode(w) for w in module.FRONT_PAIR)
    n = max(len(pos), len(neg))
    tensor = r["front"][m.resolve_path(site.split(":")[0])]
    assert r["front"].hook_point == "input" and tensor.shape == (n, m.hidden_size)
    space = m.encode(" ")[-1]
    rows = [pos + [space] * (n - len(pos)), neg + [space] * (n - len(neg))]
    acts = m.to_numpy(m.run(rows, record=[site], logits=False).activations[site])
    np.testing.assert_allclose(tensor, acts[0] - acts[1], rtol=1e-4, atol=1e-3)
    unit = r["unit"].select([m.resolve_path(site.split(":")[0])])
    again = m.generate(module.PROMPT, max_tokens=r["gen_tokens"], interventions=unit.to_interventions(scale=r["coefficient"]),
                       **module.SAMPLING)
    assert again == r["steered"]  # seeded sampling is reproducible


# -- persona_persistence ---------------------------------------------------------------------------
def test_persona_array_equals_extraction(quick):
    module, r = quick("persona_persistence")
    m, vectors = r["model"], r["vectors"]
    assert vectors.shape == (len(r["personas"]), len(r["layers"]), m.hidden_size) and vectors.dtype == np.float32
    sites = [f"layers.{i}" for i in r["layers"]]
    for p, name in enumerate(r["personas"]):
        persona = [f"{module.PERSONAS[name]} {q}" for q in r["questions"]]
        vec = ms.extract(m, persona, r["questions"], sites=sites, chat=True, system=module.SYSTEM)
        for li, path in enumerate(vec.sites):
            np.testing.assert_allclose(vectors[p, li], vec[path], rtol=1e-4, atol=1e-3)


def test_persistence_projections_match_recomputation(quick):
    module, r = quick("persona_persistence")
    m, run, site = r["model"], r["persistence"], r["site"]
    n = len(run.tokens)
    assert n == len(run.projections) == len(r["baseline"].projections)
    assert int(run.steered.sum()) == run.steer_tokens and n == run.steer_tokens + len(run.free_phase)
    prompt = m.encode(module.REPLY_TO, chat=True, system=module.SYSTEM)
    P = len(prompt)
    window = Positions.window(P - 1, P - 1 + run.steer_tokens)
    spec = {site: niv.add_vector(r["direction"], scale=r["scale"], positions=window)}
    acts = m.to_numpy(m.run([prompt + list(run.tokens)], interventions=spec, record=[site], logits=False).activations[site])[0]
    expected = similarity.project(acts[P - 1 : P - 1 + n], r["direction"])
    np.testing.assert_allclose(run.projections, expected, rtol=1e-3, atol=1e-2)
    assert run.projections[run.steered].mean() > r["baseline"].projections[run.steered].mean()


def test_transcript_reads_and_their_directions(quick):
    _, r = quick("persona_persistence")
    m = r["model"]
    key = m.resolve(r["site"]).key
    K = len(r["points"])
    assert len(r["transcripts"]) == 2 * K
    for ids in r["transcripts"]:
        assert m.tokenizer.decode(ids).endswith("<|im_start|>assistant\n")  # read just before the reply
    single = m.to_numpy(m.run([r["transcripts"][-1]], record=[key], logits=False).activations[key])[0, -1]
    np.testing.assert_allclose(r["reads"][-1], single, rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(r["diffs"], r["reads"][:K] - r["reads"][K:])
    cmat = r["cosine_matrix"]
    np.testing.assert_allclose(cmat, cmat.T)
    np.testing.assert_allclose(np.diag(cmat), 1.0, atol=1e-6)
    assert np.linalg.norm(r["top_direction"]) == pytest.approx(1.0, abs=1e-5)
    assert 0.0 < r["explained"] <= 1.0 and r["strength"] > 0  # signed toward the in-persona side


def test_refusal_direction_walkthrough(quick):
    """The exported folder, loaded on its own, answers exactly as the model ablated in-process (same
    refusals, same first-token KL); the direction is the hand-computed mean difference; the layer is the
    sweep's best."""
    module, r = quick("refusal_direction")
    cfg = module.QUICK
    data = json.loads(module.DATA.read_text())
    rows = r["rows"]
    assert list(rows)[:3] == ["base", "ablated in-process", "exported (ablated weights)"]
    ablated, exported = rows["ablated in-process"], rows["exported (ablated weights)"]
    assert exported["harmful_refused"] == ablated["harmful_refused"]
    assert exported["harmless_refused"] == ablated["harmless_refused"]
    assert exported["first_token_kl"] == pytest.approx(ablated["first_token_kl"], rel=1e-3, abs=1e-5)
    assert rows["base"]["first_token_kl"] == pytest.approx(0.0, abs=1e-9)
    m = ms.load(str(r["vector"].model_id))
    key = m.resolve(f"layers.{r['layer']}").key
    reads = {}
    for kind in ("harmful_train", "harmless_train"):
        prompts = data[kind][: cfg.n_train]
        reads[kind] = np.stack([m.to_numpy(m.run(p, chat=True, record=[key], logits=False).activations[key])[0, -1]
                                for p in prompts]).mean(0)
    np.testing.assert_allclose(r["vector"].directions[key], reads["harmful_train"] - reads["harmless_train"],
                               rtol=1e-3, atol=1e-3)
    assert r["layer"] == max(r["sweep"])[2] and r["layer"] in cfg.layers


def test_conditional_steering_walkthrough(quick):
    """Held-out requests that pass the condition get exactly the unconditionally steered run's tokens,
    the others exactly the plain run's; each decision's cosine is the recorded prompt mean's."""
    module, r = quick("conditional_steering")
    m, cfg, cond = r["model"], module.QUICK, r["condition"]
    ungated = {k: niv.add_vector(s.vector, scale=s.scale, positions="generated") for k, s in r["steer"].items()}
    values = an.condition_values(m, r["test"], site=str(cond.site), direction=cond.direction, chat=True)
    for i, prompt in enumerate(r["test"]):
        met = r["met"][i]
        assert met == bool(values[i] > cond.threshold)
        assert r["gated"].conditions[i][0]["values"]["cooking"] == pytest.approx(values[i], rel=1e-4, abs=1e-5)
        want = m.batch_generate([prompt], max_tokens=cfg.max_tokens, chat=True, interventions=ungated if met else None)
        assert r["gated"].token_ids[i] == want.token_ids[0], i
    assert r["accuracy"] == pytest.approx(np.mean([a == b for a, b in zip(r["met"], r["truth"])]))
    assert any(r["met"]) and not all(r["met"])


def test_sae_features_walkthrough(quick):
    """The top features are the SAE's encoding of the recorded prompt, ranked; the steered text is the
    generation with the feature's decoder row added by hand; the feature is one that fired on the word."""
    module, r = quick("sae_features")
    m, sae, f = r["model"], r["sae"], r["feature"]
    enc = sae.encode(r["acts"])
    for row, feats in zip(enc, r["top"]):
        assert [i for i, _ in feats] == [int(i) for i in np.argsort(-row)[: len(feats)]]
    assert enc[r["where"], f] > 0
    by_hand = m.generate(module.STEER_PROMPT, chat=True, max_tokens=8,
                         interventions={sae.site: niv.add_vector(sae.W_dec[f], scale=r["scale"], positions="generated")})
    assert r["steered"] == by_hand
