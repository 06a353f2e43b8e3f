"""docs/spans.md runs as written on the real SmolLM2: its ``python`` blocks (``py`` blocks are a list of
forms, not run) as one script, each block's output equal to the ``text`` block after it. The generated
continuations may differ on another device, so for that block the test checks what the page says of
them: every generated token is inside the span, and the steered text differs from the unsteered one."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)
SEP = "---- next block ----"


def page_blocks() -> list[tuple[str, str]]:
    return FENCE.findall((ROOT / "docs" / "spans.md").read_text())


def code_and_output() -> list[tuple[str, str]]:
    """Each ``python`` block with the ``text`` block that follows it."""
    blocks, pairs = page_blocks(), []
    for (kind, code), (next_kind, shown) in zip(blocks, blocks[1:]):
        if kind == "python":
            assert next_kind == "text", f"a python block without its output:\n{code}"
            pairs.append((code, shown))
    return pairs


def test_page_lists_its_outputs():
    pairs = code_and_output()
    assert len(pairs) == 5 and "stream_generate" in pairs[-1][0]
    assert "TODO" not in (ROOT / "docs" / "spans.md").read_text()


@pytest.mark.slow
def test_spans_page_runs_as_written(smollm2_dir, tmp_path):
    pairs = code_and_output()
    script = f"\nprint({SEP!r})\n".join(code for code, _ in pairs)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MLX_STEER_CACHE": str(smollm2_dir.parent)}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outputs = proc.stdout.split(SEP + "\n")
    assert len(outputs) == len(pairs), proc.stdout
    for (code, shown), got in list(zip(pairs, outputs))[:-1]:
        assert got == shown, f"{code}\nprinted:\n{got}\nthe page shows:\n{shown}"
    lines = outputs[-1].splitlines()
    assert [ln.split(":")[0] for ln in lines[::2]] == ["unsteered", "steered"], outputs[-1]
    for line in lines[1::2]:
        n, total = re.fullmatch(r"  inside the span: (\d+) of (\d+) generated tokens", line).groups()  # type: ignore[union-attr]
        assert n == total and int(total) > 0, line
    assert lines[0].split(": ", 1)[1] != lines[2].split(": ", 1)[1]
