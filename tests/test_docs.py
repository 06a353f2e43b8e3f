"""The documentation site builds offline, strictly: any warning (broken links, API references,
docstrings griffe cannot parse) fails, as a plain ``mkdocs build --strict`` would."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_docs_build_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is in the test extra; install .[test]")
    out = tmp_path / "site"
    # no -q: it lowers the log level to ERROR, which hides the warnings --strict is meant to fail on
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    warnings = [line for line in log.splitlines() if line.lstrip().startswith(("WARNING", "ERROR"))]
    assert proc.returncode == 0 and not warnings, log
    api = (out / "api" / "index.html").read_text()
    assert "add_vector" in api and "SteerableModel" in api and "prepare_smollm2" in api
    assert "method_table" in api
    assert (out / "concepts" / "index.html").exists()
    shutil.rmtree(out)
