"""The oracle checks of the tutorials, run inside the kernel that has just executed the tutorial as a
notebook (tests/test_examples.py), each on the notebook's globals ``g``; oracles: plain SteerableModel
calls, numpy, the model's weights edited by hand, and recomputation of a generation without a cache.

Each check runs in its own cell after the notebook's; its traceback, if any, is the test's failure
(without pytest's assertion rewriting there, so asserts carry their values in a message).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import mlx.core as mx
import numpy as np
import pytest

import mlx_steer as ms
from mlx_steer.demo.examples import MODEL_ENV
from mlx_steer.engine import interventions as niv
from mlx_steer.engine.positions import Positions
from mlx_steer.vectors import similarity

TUTORIALS = ("nnsight_recipes", "actadd", "caa_mlxterp", "persona_persistence", "localize", "attention_heads")
Check = Callable[[dict], None]
CHECKS: dict[str, dict[str, Check]] = {name: {} for name in TUTORIALS}


def check(*tutorials: str) -> Callable[[Check], Check]:
    """Register a check of these tutorials, under its function name, in definition order."""

    def register(fn: Check) -> Check:
        for name in tutorials:
            CHECKS[name][fn.__name__] = fn
        return fn

    return register


def _margin(logits: mx.array, good: list[int], bad: list[int]) -> np.ndarray:
    last = np.array(logits[:, -1].astype(mx.float32)).astype(np.float64)
    return last[:, good].mean(-1) - last[:, bad].mean(-1)


@check(*TUTORIALS)
def settings_from_the_environment(g: dict) -> None:
    """Quick mode and the model came from the environment; the kernel's own argv was not parsed."""
    assert g["settings"].quick and g["cfg"] == g["QUICK"], g["settings"]
    assert g["settings"].model == os.environ[MODEL_ENV], g["settings"]


# -- caa_mlxterp: the mlxterp facade ---------------------------------------------------------------
@check("caa_mlxterp")
def facade_activations_equal_native_recording(g: dict) -> None:
    native, layer = g["model"].steerable, g["layer"]
    site = f"layers.{layer}"
    pos, neg = (np.array(mx.stack(g[k][layer])) for k in ("pos_acts", "neg_acts"))
    for prompts, acts in ((g["positive_prompts"], pos), (g["negative_prompts"], neg)):
        for prompt, act in zip(prompts, acts):
            ref = native.run(prompt, record=[site], logits=False).activations[site][0, -1]
            assert np.array_equal(act, np.array(ref)), prompt
    expected = pos.mean(0) - neg.mean(0)
    np.testing.assert_allclose(np.array(g["steering_vector"]), expected, rtol=1e-5, atol=1e-5)


@check("caa_mlxterp")
def facade_steering_equals_native_steering(g: dict) -> None:
    native, site, s, cfg = g["model"].steerable, f"layers.{g['layer']}", g["strength"], g["cfg"]
    v = np.array(g["steering_vector"])
    prompt = g["TEST_PROMPT"]
    assert mx.array_equal(g["normal"], native.run(prompt).logits)
    assert mx.array_equal(g["steered"], native.run(prompt, interventions={site: niv.add_vector(v * s)}).logits)
    assert mx.array_equal(g["against"], native.run(prompt, interventions={site: niv.add_vector(-v * s)}).logits)
    for strength, logits in g["by_strength"].items():
        if strength == 0.0:
            assert mx.array_equal(logits, g["normal"])
    multi = {f"layers.{i}": niv.add_vector(np.array(d) * cfg.multi_strength) for i, d in g["multi_vectors"].items()}
    assert mx.array_equal(g["multi"], native.run(prompt, interventions=multi).logits)
    tokens = native.generate_tokens(prompt, max_tokens=cfg.gen_tokens, interventions={site: niv.add_vector(v * s)})
    assert g["texts"][1] == g["model"].decode(tokens), (g["texts"][1], g["model"].decode(tokens))


@check("caa_mlxterp")
def vector_moves_the_sentiment_margin(g: dict) -> None:
    m = g["model"]
    good = [m.encode(w)[-1] for w in g["GOOD_WORDS"]]
    bad = [m.encode(w)[-1] for w in g["BAD_WORDS"]]
    plain, up, down = (_margin(g[k], good, bad)[0] for k in ("normal", "steered", "against"))
    assert down < plain < up, (down, plain, up)


# -- nnsight_recipes -------------------------------------------------------------------------------
@check("nnsight_recipes")
def last_position_steering_and_persistent_edit(g: dict) -> None:
    base, steered = g["base"], g["steered_last"]
    assert mx.array_equal(steered[:, :-1], base[:, :-1])  # earlier positions untouched, bit for bit
    assert not mx.allclose(steered[:, -1], base[:, -1])
    assert mx.array_equal(g["under_handle"], steered)
    assert mx.array_equal(g["after_remove"], base)
    assert g["handle_text"] == g["steered_text"] != g["plain_text"], (g["handle_text"], g["steered_text"], g["plain_text"])


@check("nnsight_recipes")
def head_ablation_equals_zeroed_projection_columns(g: dict) -> None:
    m, answer_logprob = g["model"], g["answer_logprob"]
    o_proj = m.model.layers[g["HEAD_LAYER"]].self_attn.o_proj
    hd = m.hidden_size // m.n_heads
    weight = o_proj.weight
    try:
        for head, logprob in g["head_logprobs"].items():
            keep = np.ones(weight.shape[1], dtype=np.float32)
            keep[head * hd : (head + 1) * hd] = 0.0
            o_proj.weight = weight * mx.array(keep)  # the head's input columns, zeroed by hand
            by_hand = answer_logprob(m)
            assert by_hand == pytest.approx(logprob, abs=1e-4), (head, by_hand, logprob)
    finally:
        o_proj.weight = weight
    assert answer_logprob(m) == g["clean_logprob"]


@check("nnsight_recipes")
def mean_ablation_uses_the_calibration_mean(g: dict) -> None:
    m, site = g["model"], g["mlp_site"]
    start, stop = g["calibration_window"]
    per_prompt = [m.to_numpy(m.run(c, record=[site], logits=False).activations[site])[0, start:stop].mean(0)
                  for c in g["calibration"]]
    np.testing.assert_allclose(g["mlp_mean"], np.mean(per_prompt, axis=0), rtol=1e-4, atol=1e-4)
    assert g["mean_ablated"] != g["clean_logprob"] and g["zeroed"] != g["clean_logprob"]


@check("nnsight_recipes")
def probe_multi_layer_and_top_tokens(g: dict) -> None:
    m, vec = g["model"], g["vec"]
    site = m.resolve_path(f"layers.{g['LAYER']}")
    norm = np.linalg.norm(g["probe"][site])
    assert norm == pytest.approx(1.0, abs=1e-5), norm
    assert g["probe_cosine"] > 0.5, g["probe_cosine"]  # the probe and the mean difference agree on the direction
    by_layer = {p: niv.add_vector(vec[p], scale=g["multi_scale"] * w) for p, w in g["multi_weights"].items()}
    assert mx.array_equal(g["multi"], m.run(g["PROMPT"], interventions=by_layer).logits)
    last = m.layer_paths[-1]
    logits = m.unembed(vec[last], final_norm=True)
    report = g["top_tokens"]
    k = len(report.boosted)
    assert [i for _, i, _ in report.boosted] == np.argsort(-logits, kind="stable")[:k].tolist()
    assert [i for _, i, _ in report.suppressed] == np.argsort(logits, kind="stable")[:k].tolist()


# -- actadd ----------------------------------------------------------------------------------------
@check("actadd")
def unit_vector_and_grid_cell(g: dict) -> None:
    m, unit, grid, raw = g["model"], g["unit"], g["grid"], g["raw"]
    for path, d in unit.directions.items():
        assert np.linalg.norm(d) == pytest.approx(1.0, abs=1e-5), (path, np.linalg.norm(d))
        np.testing.assert_allclose(d, raw[path] / np.linalg.norm(raw[path]), rtol=1e-5, atol=1e-6)
    assert grid.grid().shape == (len(grid.layers), len(grid.strengths))
    good = [m.tokenizer.encode(w, add_special_tokens=False)[0] for w in g["TARGET"]]
    bad = [m.tokenizer.encode(w, add_special_tokens=False)[0] for w in g["CONTRAST"]]
    baseline = _margin(m.run(g["neutral"]).logits, good, bad).mean()
    assert grid.baseline == pytest.approx(baseline, abs=1e-4), (grid.baseline, baseline)
    for row in grid.table:
        if row.strength == 0.0:
            assert (row.behaviour, row.kl) == (grid.baseline, 0.0), row
            continue
        d = unit[m.resolve_path(f"layers.{row.layer}")]
        steered = m.run(g["neutral"], interventions={f"layers.{row.layer}:input": niv.add_vector(d, scale=row.strength)})
        behaviour = _margin(steered.logits, good, bad).mean()
        assert row.behaviour == pytest.approx(behaviour, abs=1e-4), (row, behaviour)
        assert row.behaviour > grid.baseline and row.kl > 0.0, row  # love - hate raises the love margin


@check("actadd")
def front_aligned_tensor_and_seeded_sampling(g: dict) -> None:
    m, site, cfg = g["model"], g["site"], g["cfg"]
    pos, neg = (m.encode(w) for w in g["FRONT_PAIR"])
    n = max(len(pos), len(neg))
    tensor = g["front"][m.resolve_path(site.split(":")[0])]
    assert g["front"].hook_point == "input" and tensor.shape == (n, m.hidden_size), tensor.shape
    space = m.encode(" ")[-1]
    rows = [pos + [space] * (n - len(pos)), neg + [space] * (n - len(neg))]
    acts = m.to_numpy(m.run(rows, record=[site], logits=False).activations[site])
    np.testing.assert_allclose(tensor, acts[0] - acts[1], rtol=1e-4, atol=1e-3)
    unit = g["unit"].select([m.resolve_path(site.split(":")[0])])
    again = m.generate(g["PROMPT"], max_tokens=cfg.gen_tokens, interventions=unit.to_interventions(scale=cfg.coefficient),
                       **g["SAMPLING"])
    assert again == g["steered"], (again, g["steered"])  # seeded sampling is reproducible


# -- persona_persistence ---------------------------------------------------------------------------
@check("persona_persistence")
def persona_array_equals_extraction(g: dict) -> None:
    m, vectors, layers = g["model"], g["vectors"], g["cfg"].layers
    assert vectors.shape == (len(g["personas"]), len(layers), m.hidden_size) and vectors.dtype == np.float32
    sites = [f"layers.{i}" for i in layers]
    for p, name in enumerate(g["personas"]):
        persona = [f"{g['PERSONAS'][name]} {q}" for q in g["questions"]]
        vec = ms.extract(m, persona, g["questions"], sites=sites, chat=True, system=g["SYSTEM"])
        for li, path in enumerate(vec.sites):
            np.testing.assert_allclose(vectors[p, li], vec[path], rtol=1e-4, atol=1e-3)


@check("persona_persistence")
def persistence_projections_match_recomputation(g: dict) -> None:
    m, run, site, baseline = g["model"], g["persistence"], g["site"], g["baseline"]
    n = len(run.tokens)
    assert n == len(run.projections) == len(baseline.projections), (n, len(run.projections), len(baseline.projections))
    assert int(run.steered.sum()) == run.steer_tokens and n == run.steer_tokens + len(run.free_phase)
    prompt = m.encode(g["REPLY_TO"], chat=True, system=g["SYSTEM"])
    P = len(prompt)
    window = Positions.window(P - 1, P - 1 + run.steer_tokens)
    spec = {site: niv.add_vector(g["direction"], scale=g["scale"], positions=window)}
    acts = m.to_numpy(m.run([prompt + list(run.tokens)], interventions=spec, record=[site], logits=False).activations[site])[0]
    expected = similarity.project(acts[P - 1 : P - 1 + n], g["direction"])
    np.testing.assert_allclose(run.projections, expected, rtol=1e-3, atol=1e-2)
    steered, unsteered = run.projections[run.steered].mean(), baseline.projections[run.steered].mean()
    assert steered > unsteered, (steered, unsteered)


@check("persona_persistence")
def transcript_reads_and_their_directions(g: dict) -> None:
    m = g["model"]
    key = m.resolve(g["site"]).key
    K = len(g["points"])
    assert len(g["transcripts"]) == 2 * K
    for ids in g["transcripts"]:
        assert m.tokenizer.decode(ids).endswith("<|im_start|>assistant\n")  # read just before the reply
    single = m.to_numpy(m.run([g["transcripts"][-1]], record=[key], logits=False).activations[key])[0, -1]
    np.testing.assert_allclose(g["reads"][-1], single, rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(g["diffs"], g["reads"][:K] - g["reads"][K:])
    cmat = g["cosine_matrix"]
    np.testing.assert_allclose(cmat, cmat.T)
    np.testing.assert_allclose(np.diag(cmat), 1.0, atol=1e-6)
    assert np.linalg.norm(g["top_direction"]) == pytest.approx(1.0, abs=1e-5)
    assert 0.0 < g["explained"] <= 1.0 and g["strength"] > 0, (g["explained"], g["strength"])  # toward the in-persona side


# -- localize --------------------------------------------------------------------------------------
def _diff_at_last(g: dict, prompt: str, interventions: dict | None = None) -> float:
    m = g["model"]
    last = np.array(m.run(prompt, interventions=interventions).logits[0, -1].astype(mx.float32)).astype(np.float64)
    return float(last[g["paris"]] - last[g["rome"]])


@check("localize")
def lens_last_layer_is_the_models_output(g: dict) -> None:
    m, table = g["model"], g["lens_table"]
    logits = np.array(m.run(g["CLEAN"]).logits[0].astype(mx.float32)).astype(np.float64)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    final = [r for r in table.rows if r.layer == m.num_layers - 1]
    assert [r.position for r in final] == list(range(len(m.encode(g["CLEAN"])))), [r.position for r in final]
    for r in final:
        top = np.argsort(-p[r.position], kind="stable")[: len(r.top_ids)]
        assert list(r.top_ids) == top.tolist(), (r.position, r.top_ids, top)
        np.testing.assert_allclose(r.top_probs, p[r.position, top], rtol=1e-4, atol=1e-6)
        assert r.target_prob == pytest.approx(p[r.position, g["paris"]], rel=1e-4, abs=1e-6), r
    assert final[-1].top_tokens[0] == g["TARGET"], final[-1]  # the model answers Paris on the clean prompt


@check("localize")
def patching_cells_equal_solo_runs(g: dict) -> None:
    """The steering cell and the strongest subject cell: the corrupted prompt run alone with that one
    ``set`` of the clean activation, and the fraction recomputed from plain runs of both prompts."""
    m, table, last = g["model"], g["table"], g["LAST"]
    clean, corrupted = _diff_at_last(g, g["CLEAN"]), _diff_at_last(g, g["CORRUPTED"])
    assert table.clean_metric == pytest.approx(clean, abs=1e-4), (table.clean_metric, clean)
    assert table.corrupted_metric == pytest.approx(corrupted, abs=1e-4), (table.corrupted_metric, corrupted)
    subject = max((r for r in table.rows if r.method == "activation" and r.position < last), key=lambda r: r.fraction)
    for row in (g["found"], subject):
        acts = m.to_numpy(m.run(g["CLEAN"], record=[row.site], logits=False).activations[row.site])[0]
        alone = _diff_at_last(g, g["CORRUPTED"], {row.site: niv.set(acts[row.position], positions=[row.position])})
        assert row.metric == pytest.approx(alone, rel=1e-5, abs=1e-4), (row, alone)
        assert row.fraction == pytest.approx((alone - corrupted) / (clean - corrupted), abs=1e-4), (row, alone)
    assert g["found"].fraction >= 0.5 and g["found"].position == last, g["found"]


@check("localize")
def attribution_by_hand_and_its_correlation(g: dict) -> None:
    """Each attribution cell is corrupted + (clean - corrupted) . grad, the gradient from
    ``ms.gradients`` at the corrupted run; the printed r is numpy's corrcoef over the cells' metrics."""
    m, table = g["model"], g["table"]
    keys = list(dict.fromkeys(r.site for r in table.rows))
    metric = ms.logit_diff(g["paris"], g["rome"])
    grads = ms.gradients(m, [g["CORRUPTED"]], metric, sites=keys)
    clean = m.run(g["CLEAN"], record=keys, logits=False).activations
    for r in (r for r in table.rows if r.method == "attribution"):
        delta = m.to_numpy(clean[r.site])[0, r.position] - grads.activations[r.site][0, r.position]
        estimate = float(np.dot(delta.astype(np.float64), grads.gradients[r.site][0, r.position].astype(np.float64)))
        assert r.metric == pytest.approx(table.corrupted_metric + estimate, rel=1e-4, abs=1e-3), (r, estimate)
    cells = {(r.method, r.site, r.position): r.metric for r in table.rows}
    pairs = [(v, cells[("attribution", s, p)]) for (meth, s, p), v in cells.items() if meth == "activation"]
    assert len(pairs) == table.grid("activation").size, len(pairs)
    expected = np.corrcoef(np.array(pairs).T)[0, 1]
    assert g["correlation"] == pytest.approx(expected, abs=1e-12), (g["correlation"], expected)


@check("localize")
def steered_generations_equal_solo_generation(g: dict) -> None:
    """The vector is the clean - corrupted residual recorded by hand; each evaluated cell's text is a
    solo greedy generation with that intervention; the judge's scores say Paris where the text does,
    and steering flipped the answer."""
    m, site, last, cfg, steering = g["model"], g["steer_site"], g["LAST"], g["cfg"], g["steering"]
    acts = [m.to_numpy(m.run(p, record=[site], logits=False).activations[site])[0, last]
            for p in (g["CLEAN"], g["CORRUPTED"])]
    np.testing.assert_allclose(g["direction"], acts[0] - acts[1], rtol=1e-4, atol=1e-3)
    said = {}
    for s in cfg.strengths:
        spec = None if s == 0 else {site: niv.add_vector(g["direction"], scale=s, positions=[last])}
        alone = m.generate(g["CORRUPTED"], max_tokens=cfg.gen_tokens, interventions=spec)
        text = steering.texts[("steering", g["STEER_LAYER"], s)][0]
        assert text == alone, (s, text, alone)
        said[s] = steering.cell(g["STEER_LAYER"], s).behaviour
        assert said[s] == float(g["TARGET"].lower() in text.lower()), (s, text, said[s])
    assert said[0.0] == 0.0 and said[max(cfg.strengths)] == 1.0, said


# -- attention_heads -------------------------------------------------------------------------------
@check("attention_heads")
def induction_scores_by_hand_from_eager_attention(g: dict) -> None:
    """transformers' eager attention (``output_attentions=True``) of the same weights on the same repeated
    random tokens: the induction score of every head computed by hand from it ranks the notebook's top head
    first with the notebook's score, and the drawn pattern's stripe equals the eager one."""
    import torch
    from transformers import AutoModelForCausalLM

    from mlx_steer.heads import repeated_random_tokens

    cfg, top, n = g["cfg"], g["top"], g["cfg"].length
    hf = AutoModelForCausalLM.from_pretrained(g["settings"].model_path(), attn_implementation="eager",
                                              dtype=torch.float32)
    seqs = repeated_random_tokens(g["model"], length=n, batch=cfg.batch, seed=0)
    with torch.no_grad():
        attn = hf(torch.tensor(seqs), output_attentions=True).attentions  # per layer (B, H, T, T)
    T = len(seqs[0])
    by_hand = np.zeros((len(attn), attn[0].shape[1]))
    for layer, a in enumerate(attn):
        for q in range(T - n, T):  # the second copy; its earlier occurrence's next token is n - 1 back
            by_hand[layer] += a[:, :, q, q - (n - 1)].mean(0).numpy() / n
    assert np.unravel_index(np.argmax(by_hand), by_hand.shape) == (top.layer, top.head), (top, by_hand.max())
    assert top.score == pytest.approx(by_hand[top.layer, top.head], abs=1e-4), (top.score, by_hand[top.layer, top.head])
    np.testing.assert_allclose(g["induction"].grid(), by_hand, atol=1e-4)
    eager = attn[top.layer][0, top.head].numpy()
    np.testing.assert_allclose(g["pattern"], eager, atol=1e-4)
    stripe = np.mean([eager[q, q - (n - 1)] for q in range(T - n, T)])
    assert g["stripe"] == pytest.approx(stripe, abs=1e-4), (g["stripe"], stripe)


@check("attention_heads")
def iti_shift_is_add_vector_of_the_padded_vector(g: dict) -> None:
    """The padded vector built by hand (each chosen head's sigma * theta in its d_head slice of the output
    projection's input, zero elsewhere); head steering at alpha equals ``add_vector`` of it there, bit for bit."""
    m, probes, row, layer = g["model"], g["probes"], g["row"], g["ITI_LAYER"]
    H, width = m.backend.n_heads, m.hidden_size
    d = width // H
    site = m.resolve(g["site"])
    assert site.path == f"model.layers.{layer}.self_attn.o_proj" and site.point == "input", site
    iti, rand = g["iti_heads"], g["random_heads"]
    assert len(iti) == len(rand) == g["cfg"].k and not set(iti) & set(rand), (iti, rand)
    best = np.sort(probes.accuracy[row])[::-1][: g["cfg"].k]  # the layer's k best accuracies (ties either way)
    np.testing.assert_array_equal(np.sort(probes.accuracy[row, iti])[::-1], best)
    hand = {}
    for name, heads, vector in (("iti", iti, g["iti_vector"]), ("random", rand, g["random_vector"])):
        hand[name] = np.zeros(H * d, dtype=np.float32)
        for h in heads:
            hand[name][h * d : (h + 1) * d] = probes.sigma["mass_mean"][row, h] * probes.mass_mean[row, h]
        np.testing.assert_array_equal(vector, hand[name])
    spec = {site.key: niv.add_vector(hand["iti"], scale=g["alpha"])}
    validation = g["VALIDATION"]
    oracle = m.to_numpy(m.run(validation, interventions=spec, logits="last").logits)[:, -1]
    steered = m.to_numpy(m.run(validation, interventions=g["iti"], logits="last").logits)[:, -1]
    np.testing.assert_array_equal(steered, oracle)
    plain = m.to_numpy(m.run(validation, logits="last").logits)[:, -1]
    for logits, printed in ((oracle, g["iti_margin"]), (plain, g["unsteered_margin"])):
        by_hand = np.mean([np.mean(r[g["good"]]) - np.mean(r[g["bad"]]) for r in logits.astype(np.float64)])
        assert printed == pytest.approx(by_hand, abs=1e-4), (printed, by_hand)
    assert g["ITI_LAYER"] == max(g["moves"], key=g["moves"].get) and len(g["moves"]) == len(g["cfg"].candidate_layers)


@check("attention_heads")
def evaluation_cells_equal_solo_generations_scored_by_vader(g: dict) -> None:
    """Each steered cell's texts are solo greedy generations with ``add_vector`` of its vector at the site;
    the behaviour column is VADER's compound score of them, recomputed; the printed verdict follows it."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer  # type: ignore[import-untyped]

    m, cfg, site, table = g["model"], g["cfg"], g["site"], g["evaluation"]
    vader = SentimentIntensityAnalyzer()
    for name, vector in (("ITI heads", g["iti_vector"]), ("random heads", g["random_vector"])):
        for a in cfg.alphas:
            spec = None if a == 0 else {site: niv.add_vector(vector, scale=a)}
            texts = [m.generate(p, max_tokens=cfg.max_tokens, interventions=spec) for p in g["prompts"]]
            assert list(table.texts[(name, site, a)]) == texts, (name, a, table.texts[(name, site, a)], texts)
            score = np.mean([vader.polarity_scores(t)["compound"] for t in texts])
            assert table.cell(site, a, name).behaviour == pytest.approx(score, abs=1e-9), (name, a, score)
    last = cfg.alphas[-1]
    mine, control = (table.cell(site, last, v).behaviour for v in ("ITI heads", "random heads"))
    assert (g["verdict"] == "beats") == (mine > control), (g["verdict"], mine, control)

