"""The documentation site builds offline, strictly (broken links or API references fail)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_docs_build_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is in the test extra; install .[test]")
    out = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    api = (out / "api" / "index.html").read_text()
    assert "add_vector" in api and "SteerableModel" in api and "prepare_smollm2" in api
    assert (out / "concepts" / "index.html").exists()
    shutil.rmtree(out)
