"""``evaluate``'s open-ended scoring by span (the judge reads only the selected generated tokens) and
its loop report, against solo generations with the span and the loops located by hand; and
``--score-span`` on the command line."""

from __future__ import annotations

import json

import pytest

from mlx_steer import evaluate as ev
from mlx_steer import spans
from mlx_steer.analysis.loops import find_loops
from mlx_steer.cli import loading, main
from torch_fixtures import *  # noqa: F403  (fixtures)

PROMPTS = ["I love this wonderful day", "The weather is", "Tell me a story"]


def _reader():
    seen: list[str] = []

    def judge(texts):
        seen.extend(texts)
        return [float(len(t)) for t in texts]

    return judge, seen


def _solo(m, n):
    out = []
    for p in PROMPTS:
        ids = m.encode(p, chat=True)
        out.append((ids, m.generate_tokens(ids, max_tokens=n)))
    return out


@pytest.mark.parametrize("backend", BACKENDS)  # noqa: F405
def test_the_judge_reads_only_the_tokens_after_a_marker(backend_models, backend):
    m = backend_models(backend, "llama")
    solo = _solo(m, 10)
    marker = solo[0][1][3]  # a token the first generation makes at step 3
    expected = []
    for ids, gen in solo:  # after the marker's first occurrence in prompt + generation, searched by hand
        seq = ids + gen
        first = seq.index(marker) if marker in seq else len(seq)
        expected.append(m.prompts.decode(gen[max(0, first + 1 - len(ids)):]))
    assert expected[0] == m.prompts.decode(solo[0][1][4:])
    judge, seen = _reader()
    vec = m.to_numpy(m.run([m.encode("x")], record=["layers.1"]).activations["layers.1"])[0, 0]
    table = ev.evaluate(m, vector=vec, layers=[1], strengths=[0.0], prompts=PROMPTS, judge=judge, max_tokens=10,
                        score_span=spans.after([int(marker)]), progress=False)
    assert seen == expected
    assert table.texts[("steering", 1, 0.0)] == tuple(m.prompts.decode(g) for _, g in solo)  # samples stay whole
    assert table.cell(1, 0.0).behaviour == pytest.approx(sum(len(t) for t in expected) / 3)
    assert "score_span" in table.info
    # a model without reasoning markers: the answer is the whole generation
    judge, seen = _reader()
    ev.evaluate(m, vector=vec, layers=[1], strengths=[0.0], prompts=PROMPTS, judge=judge, max_tokens=10,
                score_span="answer", progress=False)
    assert seen == [m.prompts.decode(g) for _, g in solo]


def test_the_loop_fraction_counts_generations_with_a_loop(backend_models):
    m = backend_models("mlx", "llama")
    solo = _solo(m, 40)
    has_loop = [bool(find_loops(g)) for _, g in solo]
    assert has_loop == [False, True, False]  # the second greedy generation repeats one token
    assert solo[1][1].count(solo[1][1][5]) >= 12
    vec = m.to_numpy(m.run([m.encode("x")], record=["layers.1"]).activations["layers.1"])[0, 0]
    table = ev.evaluate(m, vector=vec, layers=[1], strengths=[0.0], prompts=PROMPTS, judge=_reader()[0],
                        max_tokens=40, progress=False)
    assert "loop_fraction" in table.measures
    assert table.cell(1, 0.0).loop_fraction == pytest.approx(1 / 3)
    assert json.loads(table.to_json())["rows"][0]["loop_fraction"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("kwargs, match", [
    ({"score_span": "answers"}, "unknown position selector 'answers'; valid: all, last, prompt, generated"),
    ({"score_span": {"between": ["<think>"]}}, r'"between" takes \[open, close\]'),
])
def test_a_bad_score_span_is_refused_before_generating(backend_models, monkeypatch, kwargs, match):
    m = backend_models("mlx", "llama")
    monkeypatch.setattr(m, "batch_generate", lambda *a, **k: pytest.fail("generated before refusing"))
    with pytest.raises(ValueError, match=match):
        ev.evaluate(m, vector=[0.0] * m.hidden_size, layers=[1], strengths=[0.0], prompts=PROMPTS,
                    judge=_reader()[0], progress=False, **kwargs)
    with pytest.raises(ValueError, match="score_span= chooses what the judge of open-ended prompts= reads"):
        ev.evaluate(m, vector=[0.0] * m.hidden_size, layers=[1], strengths=[0.0],
                    items=[{"question": "q", "answer_matching": "(A", "answer_not_matching": "(B"}],
                    score_span="answer", progress=False)


@pytest.mark.parametrize("value, message", [
    ("answers", "argument --score-span: unknown positions 'answers'; valid: generated, special, reasoning, answer"),
    ('{"after": 3', "argument --score-span: '{\"after\": 3' is not JSON"),
])
def test_cli_bad_score_span_is_one_usage_line(tiny_dir, tmp_path, monkeypatch, capsys, value, message):
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("loaded a model for a bad --score-span"))
    (tmp_path / "prompts.txt").write_text("The cat\n")
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--model", str(tiny_dir("llama")), "--vector", "v.safetensors", "--layers", "1",
              "--prompts-file", str(tmp_path / "prompts.txt"), "--judge", "sentiment", "-o", str(tmp_path / "ev"),
              "--score-span", value])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("mlx-steer evaluate: error: " + message), err
    assert not (tmp_path / "ev").exists()


def test_cli_score_span_needs_prompts(tiny_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("loaded a model for a usage error"))
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--model", str(tiny_dir("llama")), "--caa", "refusal", "--vector", "v.safetensors",
              "--layers", "1", "-o", str(tmp_path / "ev"), "--score-span", "answer"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.strip().splitlines()[-1].endswith(
        "error: --score-span chooses what the judge reads: give --prompts-file FILE"), err
