"""The evaluation harness against oracles computed here: each cell's A/B probability from a solo
forward and a hand softmax, CAA's vector from solo recordings, generations from solo runs, their
perplexity from a forward without cache and a numpy log-softmax, distinct-n by hand; both backends
give the same table; ``best`` under budgets; the table's files; judges; bad input refused by name."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from mlx_steer import evaluate as ev
from mlx_steer.engine import interventions as iv
from torch_fixtures import *  # noqa: F403  (fixtures)
from torch_fixtures import assert_untouched, snapshot

BACKENDS = ["mlx", "torch"]
ITEMS = [
    {"question": "Do you like the cat?\n\nChoices:\n (A) Yes\n (B) No", "answer_matching": "(A)", "answer_not_matching": "(B)"},
    {"question": "Is the day long?\n\nChoices:\n (A) No\n (B) Yes", "answer_matching_behavior": "(B)",
     "answer_not_matching_behavior": "(A)"},
    {"question": "The dog ran home. Agree?\n\nChoices:\n (A) Agree\n (B) Disagree", "answer_matching": "A",
     "answer_not_matching": "B"},
]
PROMPTS = ["The cat", "I think the day"]


def _vector(m, seed=0):
    return np.random.default_rng(seed).standard_normal(m.hidden_size).astype(np.float32)


def _solo_probability(m, item, intervention):
    """p(matching)/(p(matching)+p(not)) from one solo forward and a hand softmax over the vocabulary."""
    ids = m.encode(item.question, chat=True, assistant_prefix="(")
    letter = {c: m.tokenizer.encode(c, add_special_tokens=False)[0] for c in (item.matching, item.not_matching)}
    logits = m.to_numpy(m.run([ids], interventions=intervention).logits)[0, -1].astype(np.float64)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    return p[letter[item.matching]] / (p[letter[item.matching]] + p[letter[item.not_matching]])


@pytest.mark.parametrize("backend", BACKENDS)
def test_ab_probability_equals_solo_forwards(backend_models, backend):
    m = backend_models(backend, "llama")
    items, vec = ev.as_items(ITEMS), _vector(m)
    table = ev.evaluate(m, vector=vec, layers=[1, 2], strengths=[-5.0, 0.0, 5.0], items=items,
                        controls=["random", "flipped"], batch_size=5, progress=False)
    assert table.measures == ("ab_probability",)
    assert len(table.rows) == 3 * 2 * 3
    grid = ev.Grid(m, vector=vec, layers=[1, 2], strengths=[1.0], controls=["random", "flipped"])
    for row in table.rows:
        d = grid.direction(row.vector, row.layer)
        spec = {f"layers.{row.layer}": iv.add_vector(d, scale=row.strength, positions="last")} if row.strength else None
        want = np.mean([_solo_probability(m, it, spec) for it in items])
        assert row.ab_probability == pytest.approx(want, abs=2e-5), row
    # the controls: the flipped vector at s is the vector at -s; the random one keeps the norm
    assert table.cell(1, 5.0, "flipped").ab_probability == pytest.approx(table.cell(1, -5.0).ab_probability, abs=1e-12)
    np.testing.assert_allclose(np.linalg.norm(grid.direction("random", 2)), np.linalg.norm(vec), rtol=1e-5)
    assert abs(float(grid.direction("random", 1) @ grid.direction("random", 2))) < np.linalg.norm(vec) ** 2
    # starting the steered forwards at their layer changes nothing
    whole = ev.evaluate(m, vector=vec, layers=[1, 2], strengths=[-5.0, 0.0, 5.0], items=items, share_layers=False,
                        controls=["random", "flipped"], batch_size=5, progress=False)
    for a, b in zip(table.rows, whole.rows):
        assert a.ab_probability == pytest.approx(b.ab_probability, abs=2e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ab_vector_is_the_mean_letter_difference(backend_models, backend):
    m = backend_models(backend, "llama")
    items = ev.as_items(ITEMS)
    vec = ev.ab_vector(m, items, layers=[1, 3], progress=False)
    for layer in (1, 3):
        diffs = []
        for it in items:
            ids = m.encode(it.question, chat=True, assistant_prefix="(")
            acts = {}
            for letter in (it.matching, it.not_matching):
                row = ids + [m.tokenizer.encode(letter, add_special_tokens=False)[0]]
                acts[letter] = m.to_numpy(m.run([row], record=[f"layers.{layer}"], logits=False)
                                          .activations[f"layers.{layer}"])[0, -1]
            diffs.append(acts[it.matching] - acts[it.not_matching])
        np.testing.assert_allclose(vec.directions[m.resolve_path(f"layers.{layer}")], np.mean(diffs, axis=0),
                                   rtol=1e-4, atol=1e-5)
    assert vec.read_positions == "answer letter (A/B)"


def _length_judge(texts):
    return [float(len(t)) for t in texts]


@pytest.mark.parametrize("backend", BACKENDS)
def test_generation_scores_equal_solo_runs_and_a_recomputed_perplexity(backend_models, backend):
    m = backend_models(backend, "llama")
    vec = _vector(m, 1)
    table = ev.evaluate(m, vector=vec, layers=[2], strengths=[0.0, 4.0], prompts=PROMPTS, judge=_length_judge,
                        max_tokens=6, batch_size=3, progress=False)
    assert table.measures == ("behaviour", "perplexity", "fluency", "distinct_1", "distinct_2", "loop_fraction")
    ppl = {}
    for s in (0.0, 4.0):
        spec = {"layers.2": iv.add_vector(vec, scale=s)} if s else None
        nll, n, texts = 0.0, 0, []
        for p in PROMPTS:
            ids = m.encode(p, chat=True)
            gen = m.generate_tokens(ids, max_tokens=6, interventions=spec)
            texts.append(m.prompts.decode(gen))
            logits = m.to_numpy(m.run([ids + gen]).logits)[0].astype(np.float64)  # unsteered, no cache
            for j, t in enumerate(gen):
                x = logits[len(ids) - 1 + j]
                nll -= x[t] - (x.max() + np.log(np.exp(x - x.max()).sum()))
                n += 1
        ppl[s] = math.exp(nll / n)
        row = table.cell(2, s)
        assert table.texts[("steering", 2, s)] == tuple(texts)
        assert row.behaviour == pytest.approx(np.mean([len(t) for t in texts]))
        assert row.perplexity == pytest.approx(ppl[s], rel=1e-4)
        assert row.distinct_1 == pytest.approx(ev.distinct_n(texts, 1))
    assert table.cell(2, 4.0).fluency == pytest.approx(ppl[0.0] / ppl[4.0], rel=1e-4)
    assert table.cell(2, 0.0).fluency == 1.0


def test_distinct_n_by_hand():
    assert ev.distinct_n(["the cat the cat", "a cat"], 1) == pytest.approx(3 / 6)
    assert ev.distinct_n(["the cat the cat", "a cat"], 2) == pytest.approx(3 / 4)  # the cat, cat the, a cat
    assert math.isnan(ev.distinct_n(["one"], 2))


def test_both_backends_give_the_same_table(backend_models):
    tables = {}
    for backend in BACKENDS:
        m = backend_models(backend, "llama")
        tables[backend] = ev.evaluate(m, vector=_vector(m, 2), layers=[1, 3], strengths=[-4.0, 0.0, 4.0], items=ITEMS,
                                      prompts=PROMPTS, judge=_length_judge, max_tokens=5, controls=["random"],
                                      progress=False)
    a, b = tables["mlx"], tables["torch"]
    assert a.measures == b.measures and [(r.vector, r.layer, r.strength) for r in a.rows] == \
        [(r.vector, r.layer, r.strength) for r in b.rows]
    assert a.texts == b.texts  # greedy: the same tokens
    for ra, rb in zip(a.rows, b.rows):
        for measure in a.measures:
            assert ra.value(measure) == pytest.approx(rb.value(measure), rel=1e-4, abs=1e-5, nan_ok=True), (ra, rb, measure)
    assert (a.best().layer, a.best().strength) == (b.best().layer, b.best().strength)


def _table():
    rows = (ev.EvalRow("steering", 4, 0.0, behaviour=0.1, perplexity=10.0, fluency=1.0, distinct_1=0.9, distinct_2=1.0),
            ev.EvalRow("steering", 4, 4.0, behaviour=0.5, perplexity=12.0, fluency=10 / 12, distinct_1=0.8, distinct_2=0.9),
            ev.EvalRow("steering", 4, 8.0, behaviour=0.9, perplexity=40.0, fluency=0.25, distinct_1=0.3, distinct_2=0.2),
            ev.EvalRow("steering", 6, 8.0, behaviour=0.9, perplexity=20.0, fluency=0.5, distinct_1=0.7, distinct_2=0.8),
            ev.EvalRow("random", 4, 8.0, behaviour=0.95, perplexity=11.0, fluency=10 / 11, distinct_1=0.9, distinct_2=1.0))
    return ev.EvalTable(rows, ("behaviour", "perplexity", "fluency", "distinct_1", "distinct_2"), {"model": "x"},
                        {("steering", 4, 8.0): ("a b", "c")})


def test_best_chooses_within_the_budget():
    t = _table()
    assert (t.best().layer, t.best().strength) == (4, 8.0)  # a tie at 0.9: the earlier layer
    assert (t.best(min_fluency=0.4).layer, t.best(min_fluency=0.4).strength) == (6, 8.0)
    assert t.best(min_fluency=0.6).strength == 4.0
    assert t.best(max_perplexity=11.0).strength == 0.0
    assert t.best(min_distinct=0.85).strength == 4.0
    assert t.best(maximize=False).strength == 0.0
    assert t.best(vector="random").vector == "random"
    with pytest.raises(ValueError, match="no steering cell is within the budget"):
        t.best(min_fluency=2.0)
    with pytest.raises(ValueError, match="has no 'ab_probability'"):
        t.best(measure="ab_probability")
    ab = ev.EvalTable((ev.EvalRow("steering", 1, 0.0, ab_probability=0.4),), ("ab_probability",))
    with pytest.raises(ValueError, match="fluency budget needs an evaluation that measures fluency"):
        ab.best(min_fluency=0.5)
    with pytest.raises(KeyError, match="no cell"):
        t.cell(5, 1.0)


def test_table_files_round_trip_and_plot(tmp_path):
    t = _table()
    csv = t.to_csv(tmp_path / "t.csv")
    assert csv.splitlines()[0] == "vector,layer,strength,behaviour,perplexity,fluency,distinct_1,distinct_2"
    assert (tmp_path / "t.csv").read_text() == csv and len(csv.splitlines()) == 6
    t.to_json(tmp_path / "t.json")
    back = ev.EvalTable.from_json(tmp_path / "t.json")
    assert back.rows == t.rows and back.measures == t.measures and back.texts == t.texts and back.info == t.info
    nan = ev.EvalTable((ev.EvalRow("steering", 1, 9.0, ab_probability=float("nan")),), ("ab_probability",))
    assert json.loads(nan.to_json())["rows"][0]["ab_probability"] is None
    nan.to_json(tmp_path / "nan.json")
    assert math.isnan(ev.EvalTable.from_json(tmp_path / "nan.json").rows[0].ab_probability)
    pytest.importorskip("matplotlib")
    png = t.plot(tmp_path / "t.png", title="x")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig = t.figure()
    assert len(fig.axes) == 2  # the behaviour panel and its fluency axis
    with pytest.raises(ValueError, match="not an evaluation table"):
        (tmp_path / "bad.json").write_text("[1]")
        ev.EvalTable.from_json(tmp_path / "bad.json")


def test_judges():
    pytest.importorskip("vaderSentiment")
    sentiment = ev.sentiment_judge()
    good, bad, flat = sentiment(["I love this wonderful day!", "I hate this awful day.", "The table has four legs."])
    assert good > 0.5 and bad < -0.5 and flat == 0.0
    judge = ev.substring_judge(["Wedding", "bride"])
    assert judge(["the WEDDING was", "a bride", "nothing"]) == [1.0, 1.0, 0.0]
    assert ev.substring_judge("Bride", case_sensitive=True)(["bride", "Bride"]) == [0.0, 1.0]
    with pytest.raises(ValueError, match="non-empty strings"):
        ev.substring_judge([""])
    with pytest.raises(ValueError, match="returned 1 score"):
        ev.judge_scores(lambda texts: [0.0], ["a", "b"])
    with pytest.raises(ValueError, match="non-finite"):
        ev.judge_scores(lambda texts: [float("nan")], ["a"])
    with pytest.raises(TypeError, match="callable"):
        ev.judge_scores("sentiment", ["a"])


def test_items_shipped_loaded_and_split(tmp_path):
    from importlib import resources

    assert {b: len(ev.caa_items(b)) for b in ev.CAA_BEHAVIOURS} == {
        "coordinate-other-ais": 410, "corrigible-neutral-HHH": 340, "myopic-reward": 1000, "refusal": 458,
        "survival-instinct": 953}
    data = resources.files("mlx_steer.evaluate").joinpath("datasets", "caa")
    assert "MIT License" in data.joinpath("LICENSE").read_text()
    item = ev.caa_items("refusal")[0]
    assert item.question.endswith("(B) Sure, my social security number is AAA-GG-SSSS") and item.matching == "A"
    items = ev.caa_items("corrigible-neutral-HHH")
    train, test = ev.split_items(items, held_out=50, seed=0)
    assert len(test) == 50 and len(train) == 290 and not set(train) & set(test)
    assert ev.split_items(items, held_out=50, seed=0) == (train, test) != ev.split_items(items, held_out=50, seed=1)
    assert len(ev.split_items(items, held_out=5, train=7, seed=0)[0]) == 7
    (tmp_path / "i.jsonl").write_text("\n".join(json.dumps(i) for i in ITEMS) + "\n\n")
    assert ev.load_items(tmp_path / "i.jsonl") == ev.as_items(ITEMS)
    (tmp_path / "i.json").write_text(json.dumps(ITEMS))
    assert ev.load_items(tmp_path / "i.json") == ev.as_items(ITEMS)
    from mlx_steer.cli import evaluate as command

    assert command.CAA == ev.CAA_BEHAVIOURS  # the command's copy keeps its start-up free of the package
    with pytest.raises(ValueError, match="unknown CAA behaviour 'sycophancy'"):
        ev.caa_items("sycophancy")
    with pytest.raises(ValueError, match="cannot split 340 items"):
        ev.split_items(items, held_out=300, train=100)
    with pytest.raises(ValueError, match="item 0 needs 'question'"):
        ev.as_items([{"question": "q"}])
    with pytest.raises(ValueError, match="answer letter like"):
        ev.as_items([{"question": "q", "answer_matching": "(AB)", "answer_not_matching": "(B)"}])
    with pytest.raises(ValueError, match="must differ"):
        ev.as_items([{"question": "q", "answer_matching": "A", "answer_not_matching": "(A)"}])
    (tmp_path / "bad.jsonl").write_text('{"question": "q"}\nnot json\n')
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        ev.load_items(tmp_path / "bad.jsonl")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kwargs, match", [
    (dict(layers=[99]), "layers.99|99"),
    (dict(strengths=[float("inf")]), "strengths must be finite"),
    (dict(strengths=[1.0, 1.0]), "strengths repeat"),
    (dict(controls=["shuffled"]), "unknown control"),
    (dict(controls="random"), "unknown control"),
    (dict(items=None), "needs A/B items"),
    (dict(prompts=PROMPTS), "need a judge"),
    (dict(max_tokens=0), "max_tokens must be a positive int"),
    (dict(ab_positions="middle"), "unknown position selector 'middle'"),
    (dict(temp=-1.0), "temp must be a non-negative number"),
])
def test_bad_input_is_refused_by_name_and_leaves_the_model_untouched(fresh_models, backend, kwargs, match):
    m = fresh_models(backend, "llama")
    before = snapshot(m)
    args = dict(vector=_vector(m), layers=[1], strengths=[0.0, 2.0], items=ITEMS, progress=False) | kwargs
    with pytest.raises((ValueError, IndexError, KeyError), match=match):
        ev.evaluate(m, **args)
    assert_untouched(m, before)


def test_a_letter_of_several_tokens_is_scored_whole(shared_models):
    """The answer letter need not be one token: its continuation is scored whole (see
    tests/test_ab_continuations.py); here "(" and the letter are two tokens after the prompt."""
    m = shared_models("llama")
    seqs = ev.ab_prompt(m, ev.ABItem("q", "A", "B"))
    assert seqs.matching[: len(seqs.prompt)] == seqs.prompt and len(seqs.matching) == len(seqs.prompt) + 2
    assert seqs.steer_from == len(seqs.prompt) and seqs.rows == [seqs.matching[:-1]]


# -- the command line --------------------------------------------------------------------------
def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "mlx_steer.cli", "evaluate", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_cli_writes_the_table_and_plot(tiny_dir, tmp_path):
    pytest.importorskip("matplotlib")
    items = tmp_path / "items.jsonl"
    items.write_text("\n".join(json.dumps(i) for i in ITEMS * 4))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS))
    out = tmp_path / "eval"
    proc = _cli("--model", str(tiny_dir("llama")), "--items", str(items), "--held-out", "4", "--layers", "1", "2",
                "--strengths", "-4", "0", "4", "--controls", "random", "flipped", "--prompts-file", str(prompts),
                "--judge", "substring:the", "--max-tokens", "4", "--no-progress", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "extracted CAA's vector from 8 items; evaluating on 4 held-out items" in proc.stdout
    assert "best: layer" in proc.stdout
    table = ev.EvalTable.from_json(out / "table.json")
    assert len(table.rows) == 3 * 2 * 3 and table.measures[0] == "ab_probability"
    assert (out / "table.csv").read_text().startswith("vector,layer,strength,ab_probability,behaviour")
    assert (out / "plot.png").read_bytes()[:4] == b"\x89PNG"
    again = _cli("--model", str(tiny_dir("llama")), "--items", str(items), "--layers", "1", "-o", str(out))
    assert again.returncode == 2 and "exists; pass --force" in again.stderr and "Traceback" not in again.stderr


@pytest.mark.parametrize("args, message", [
    (["--layers", "1", "-o", "OUT"], "give A/B items"),
    (["--layers", "1", "--prompts-file", "P", "-o", "OUT"], "--prompts-file needs --judge"),
    (["--layers", "1", "--caa", "refusal", "--judge", "sentiment", "-o", "OUT"], "--judge scores generated text"),
    (["--layers", "1", "--caa", "refusal", "--judge", "stars", "--prompts-file", "P", "-o", "OUT"], "unknown --judge 'stars'"),
    (["--layers", "1", "--caa", "sycophancy", "-o", "OUT"], "invalid choice"),
    (["--layers", "1", "--caa", "refusal", "--min-fluency", "0.5", "-o", "OUT"], "--min-fluency needs open-ended"),
    (["--layers", "1", "--items", "missing.jsonl", "-o", "OUT"], "no such file: missing.jsonl"),
    (["--layers", "1", "--caa", "refusal", "--strengths", "nan", "-o", "OUT"], "must be finite"),
])
def test_cli_user_errors_name_the_problem(tiny_dir, tmp_path, args, message):
    (tmp_path / "P").write_text("The cat\n")
    proc = subprocess.run([sys.executable, "-m", "mlx_steer.cli", "evaluate", "--model", str(tiny_dir("llama")), *args],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr


# -- the real model ----------------------------------------------------------------------------
@pytest.mark.slow
def test_smollm2_cli_and_both_backends_agree(smollm2, smollm2_dir, tmp_path):
    from mlx_steer.torch_backend import load

    out = tmp_path / "caa"
    proc = _cli("--model", str(smollm2_dir), "--caa", "corrigible-neutral-HHH", "--held-out", "4", "--train", "8",
                "--layers", "12", "--strengths", "-8", "0", "8", "--no-progress", "-o", str(out), timeout=600)
    assert proc.returncode == 0, proc.stderr
    table = ev.EvalTable.from_json(out / "table.json")
    best = table.best()
    assert best.layer == 12 and best.strength in (-8.0, 0.0, 8.0) and 0 < best.ab_probability < 1
    assert (out / "plot.png").stat().st_size > 1000
    train, test = ev.split_items(ev.caa_items("corrigible-neutral-HHH"), held_out=4, train=8, seed=0)
    torch_model = load(str(smollm2_dir))
    tables = []
    for m in (smollm2, torch_model):
        vec = ev.ab_vector(m, train, layers=[12], progress=False)
        tables.append(ev.evaluate(m, vector=vec, layers=[12], strengths=[-8.0, 0.0, 8.0], items=test,
                                  prompts=["Tell me about your weekend."], judge=ev.sentiment_judge(), max_tokens=8,
                                  progress=False))
    mlx_table, torch_table = tables
    for a, b in zip(mlx_table.rows, torch_table.rows):
        assert a.ab_probability == pytest.approx(b.ab_probability, abs=2e-3)
        assert a.perplexity == pytest.approx(b.perplexity, rel=2e-2)
    for a, b in zip(mlx_table.rows, table.rows):  # the command's table is the library's
        assert a.ab_probability == pytest.approx(b.ab_probability, abs=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_front_aligned_tensor_steers_as_actadd(backend_models, backend):
    """ActAdd's (n, D) tensor is added at positions 0..n-1; its random control keeps each row's norm."""
    m = backend_models(backend, "llama")
    path = m.resolve_path("layers.1")
    tensor = np.random.default_rng(3).standard_normal((2, m.hidden_size)).astype(np.float32)
    from mlx_steer import SteeringVector

    sv = SteeringVector(directions={path: tensor}, hook_point="input")
    table = ev.evaluate(m, vector=sv, layers=[1], strengths=[0.0, 3.0], prompts=PROMPTS, judge=_length_judge,
                        max_tokens=4, chat=False, controls=["random"], progress=False)
    spec = {"layers.1:input": iv.add_vector(tensor, scale=3.0)}
    assert table.texts[("steering", 1, 3.0)] == tuple(m.generate(p, max_tokens=4, interventions=spec) for p in PROMPTS)
    grid = ev.Grid(m, vector=sv, layers=[1], strengths=[1.0], controls=["random"])
    np.testing.assert_allclose(np.linalg.norm(grid.direction("random", 1), axis=-1), np.linalg.norm(tensor, axis=-1),
                               rtol=1e-5)


def test_the_random_control_is_fixed_by_the_seed(shared_models):
    m = shared_models("llama")
    vec = _vector(m)
    a, b, c = (ev.Grid(m, vector=vec, layers=[1], strengths=[1.0], controls=["random"], seed=s) for s in (0, 0, 1))
    assert np.array_equal(a.direction("random", 1), b.direction("random", 1))
    assert not np.allclose(a.direction("random", 1), c.direction("random", 1))


@pytest.mark.slow
def test_the_docs_scripts_run_quick(smollm2_dir, tmp_path):
    """examples/caa_curves.py and examples/actadd_sentiment.py, which made docs/evaluate.md's numbers."""
    import importlib.util
    from pathlib import Path

    examples = Path(__file__).resolve().parents[1] / "examples"
    for name in ("caa_curves", "actadd_sentiment"):
        spec = importlib.util.spec_from_file_location(f"docs_{name}", examples / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        result = module.main(["--quick", "--model", str(smollm2_dir), "--out", str(tmp_path)])
        if name == "caa_curves":
            table = result["corrigible-neutral-HHH"]
            assert table.measures == ("ab_probability",) and table.vectors == ["steering", "random", "flipped"]
            assert (tmp_path / "img" / "caa_corrigible-neutral-HHH_zoom.png").exists()
        else:
            assert result.best().layer == 6 and ("steering", 6, 5.0) in result.texts
        assert ev.EvalTable.from_json(next((tmp_path / "results").glob(
            "caa_*.json" if name == "caa_curves" else "actadd_*.json"))).rows == (table if name == "caa_curves" else result).rows


def test_the_progress_bar_counts_every_row(shared_models, monkeypatch):
    """One tick per (item or prompt, distinct cell), the unsteered cell included: the bar ends full."""
    import mlx_steer.evaluate.evaluation as evaluation

    seen = {}

    class Bar:
        def __init__(self, *, total, **kwargs):
            seen["total"], seen["n"] = total, 0

        def update(self, n):
            seen["n"] += n

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(evaluation, "tqdm", Bar)
    m = shared_models("llama")
    ev.evaluate(m, vector=_vector(m), layers=[1, 2], strengths=[-1.0, 0.0, 1.0], items=ITEMS, prompts=PROMPTS,
                judge=_length_judge, max_tokens=2, controls=["flipped"], batch_size=4)
    assert seen["total"] == seen["n"] == 5 * (len(ITEMS) + len(PROMPTS))  # 4 steered cells + the unsteered one
