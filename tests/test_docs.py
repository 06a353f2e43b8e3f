"""The documentation site builds offline, strictly: any warning (broken links, API references,
docstrings griffe cannot parse) fails, as a plain ``mkdocs build --strict`` would; the tutorials in
``examples/`` are pages of it."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tutorial_checks import TUTORIALS

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
    for name in TUTORIALS:  # examples/<name>.py, rendered as a notebook (mkdocs-jupyter, not executed)
        page = (out / "examples" / name / "index.html").read_text()
        assert 'class="jp-Notebook' in page and "jp-CodeCell" in page, name
        assert "notebook_settings" in page and "model_path" in page, name  # the code is shown
        assert f"python examples/{name}.py" in page, name  # and the narrative
    workflows = (out / "workflows" / "index.html").read_text()
    assert all(f'href="../examples/{name}/"' in workflows for name in TUTORIALS)
    shutil.rmtree(out)


@pytest.mark.slow
def test_docs_build_executes_the_tutorials(tmp_path, smollm2_dir):
    """``MLX_STEER_DOCS_EXECUTE=true mkdocs build --strict`` runs each tutorial (quick settings here) on the
    real model and renders its outputs, plots included; a failing cell would fail the build."""
    pytest.importorskip("mkdocs", reason="mkdocs is in the test extra; install .[test]")
    import os

    out = tmp_path / "site"
    env = os.environ | {"MLX_STEER_DOCS_EXECUTE": "true", "MLX_STEER_EXAMPLE_QUICK": "1",
                        "MLX_STEER_EXAMPLE_MODEL": str(smollm2_dir), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    log = proc.stdout + proc.stderr
    warnings = [line for line in log.splitlines() if line.lstrip().startswith(("WARNING", "ERROR"))]
    assert proc.returncode == 0 and not warnings, log[-5000:]
    for name in TUTORIALS:
        page = (out / "examples" / name / "index.html").read_text()
        assert "jp-OutputArea" in page and 'src="data:image/png;base64,' in page, name  # executed: text and plots
    shutil.rmtree(out)
