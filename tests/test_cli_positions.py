"""``--positions`` of ``calibrate`` and ``evaluate`` takes span selectors (a name or JSON): a bad value is
one usage line (exit 2, before any model loads) naming the value and the valid forms; a span given on
the command line steers exactly the positions located by hand in the same tokens."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import mlx_steer as ms
import tiny_models
from mlx_steer.analysis import calibrate
from mlx_steer.cli import main, loading
from mlx_steer.vectors.steering_vector import SteeringVector

PROMPT = "The cat <think> sat on the mat"
SPAN = '{"between": ["<think>", "</think>"]}'
KEYS = "between, after, before, outside, reasoning, answer, not, and, or"


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_root, marker_models) -> dict:
    m = marker_models("mlx")
    d = tmp_path_factory.mktemp("cli_positions")
    vec = SteeringVector({m.resolve_path("layers.1"): np.random.default_rng(2).standard_normal(m.hidden_size)})
    ms.save_vector(vec, d / "vec.safetensors")
    (d / "prompts.txt").write_text(PROMPT + "\n")
    folder = tiny_models.build("llama", tiny_root / "llama-markers", seed=3, markers=True)  # marker_models' folder
    return {"dir": d, "model": str(folder), "vec": str(d / "vec.safetensors"), "m": m, "raw": vec}


def usage_line(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err, err
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize("value, message", [
    ("middle", "unknown positions 'middle'; valid: all, prompt, generated, special, reasoning, answer, or a JSON "
               f"span object with one of the keys {KEYS}, e.g. '{SPAN}'"),
    ("last", "unknown positions 'last'; valid: all, prompt, generated, special"),  # evaluate never took last
    ('{"between": ["<think>"]}', '{"between": ["<think>"]}: "between" takes [open, close] (each text or token ids), '
                                 "got ['<think>']"),
    ('{"betwen": ["a", "b"]}', '{"betwen": ["a", "b"]}: a span object has one of the keys ' + KEYS),
    ('{"between": [', "'{\"between\": [' is not JSON (Expecting value at column 14); valid: all, prompt"),
    ('{"after": "x", "from_token": -1}', '{"after": "x", "from_token": -1}: from_token must be an int >= 0, got -1'),
])
def test_bad_positions_are_one_usage_line(ws, value, message, monkeypatch, capsys):
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("loaded a model for a bad --positions"))
    line = usage_line(["evaluate", "--model", ws["model"], "--vector", ws["vec"], "--layers", "1", "--prompts-file",
                       str(ws["dir"] / "prompts.txt"), "--judge", "sentiment", "-o", str(ws["dir"] / "ev"),
                       "--positions", value], capsys)
    assert line.startswith("mlx-steer evaluate: error: argument --positions: " + message), line
    assert not (ws["dir"] / "ev").exists()


def test_calibrate_names_its_own_valid_names(ws, capsys):
    line = usage_line(["calibrate", ws["vec"], "--model", ws["model"], "-o", str(ws["dir"] / "x.safetensors"),
                       "--positions", "each"], capsys)
    assert line.startswith("mlx-steer calibrate: error: argument --positions: unknown positions 'each'; valid: "
                           "all, last, prompt, generated, special, reasoning, answer, or a JSON span object")


def test_span_positions_steer_the_span_located_by_hand(ws, capsys):
    """``calibrate --positions '{"between": ...}'`` equals the library calibrated at the explicit indices
    inside the span, found by searching the marker ids in the prompt + rollout tokens."""
    m, out = ws["m"], str(ws["dir"] / "cal.safetensors")
    assert main(["calibrate", ws["vec"], "--model", ws["model"], "--target-kl", "0.05", "--prompts-file",
                 str(ws["dir"] / "prompts.txt"), "--rollout-tokens", "4", "--no-chat", "--no-progress", "-o", out,
                 "--positions", SPAN]) == 0
    got = ms.load_vector(out).calibration
    assert got is not None

    prompt = m.encode(PROMPT)
    tokens = prompt + list(m.batch_generate([prompt], max_tokens=4).token_ids[0])  # the greedy rollout
    think, end = (m.tokenizer.convert_tokens_to_ids(t) for t in ("<think>", "</think>"))
    start = prompt.index(think) + 1  # the opening marker is outside, what follows it inside
    stop = tokens.index(end, start) + 1 if end in tokens[start:] else len(tokens)  # the closing marker inside
    assert 0 < start < len(prompt)
    kw: dict[str, Any] = dict(target_kl=0.05, prompts=[PROMPT], rollout_tokens=4, chat=False)
    want = calibrate(m, ws["raw"], positions=list(range(start, stop)), **kw).calibration
    assert want is not None
    assert got.coefficients == want.coefficients and got.achieved_kl == want.achieved_kl
    everywhere = calibrate(m, ws["raw"], positions="all", **kw).calibration
    assert everywhere is not None and everywhere.coefficients != want.coefficients  # the span mattered
