"""What a newcomer reads: ``inspect`` of a GGUF control vector (no ``None`` for what the file does not
record) and the ActAdd tutorials' generated text (the prompt and the continuation kept apart)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pytest

from mlx_steer.cli import main
from mlx_steer.vectors.steering_vector import SteeringVector

ROOT = Path(__file__).resolve().parents[1]


def test_inspect_of_a_gguf_says_what_it_does_not_record(tmp_path, capsys):
    pytest.importorskip("gguf")
    from mlx_steer.vectors.gguf_vector import export_gguf

    d = np.arange(8, dtype=np.float32)
    path = export_gguf(SteeringVector({"model.layers.3": d}), tmp_path / "calm.gguf", model_hint="llama")
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "None" not in out, out
    lines = out.splitlines()
    assert "model_id:       not recorded (model hint: llama)" in lines, out
    assert "method:         not recorded" in lines and "read_positions: not recorded" in lines, out
    assert "extra.model_hint: llama" in lines, out  # a long label still has its space
    assert re.search(rf"^  model\.layers\.3  shape \(8,\) +norm {np.linalg.norm(d):.6g}$", out, re.M), out


@pytest.mark.parametrize("text", [" of it", "\"of it", "of 'it'", "\n\nbecause"])
def test_a_continuation_is_quoted_apart_from_its_prompt(text):
    from mlx_steer.demo.examples import continuation

    prompt = "I hate you because"
    line = continuation(prompt, text)
    left, right = line.split(" + ", 1)
    assert (ast.literal_eval(left), ast.literal_eval(right)) == (prompt, text), line


def _example_function(name: str, script: str, **namespace: object) -> object:
    """``name`` as defined in ``examples/<script>``, run against ``namespace`` (not the whole tutorial)."""
    tree = ast.parse((ROOT / "examples" / script).read_text())
    fn = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == name)
    exec(compile(ast.Module([fn], type_ignores=[]), script, "exec"), namespace)
    return namespace[name]


def test_the_actadd_tutorial_prints_prompt_and_continuation_apart(capsys):
    from mlx_steer.demo.examples import continuation

    # the tutorial's show_text, run on the continuation that read 'because"of it' before
    show_text = _example_function("show_text", "actadd.py", PROMPT="I hate you because", continuation=continuation)
    show_text("steered x40", '"of it')
    show_text("unsteered", " you are")
    assert capsys.readouterr().out.splitlines() == [
        "[           steered x40] 'I hate you because' + '\"of it'",
        "[             unsteered] 'I hate you because' + ' you are'",
    ]
