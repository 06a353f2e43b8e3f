"""The package type-checks: mypy over mlx_steer/ with the pyproject.toml config reports no errors."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed (pip install -e '.[test]')")
def test_mypy_reports_no_errors() -> None:
    # from the repository root, so mypy reads [tool.mypy] and reuses .mypy_cache
    proc = subprocess.run([sys.executable, "-m", "mypy", "mlx_steer"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"mypy found errors:\n{report}"
    assert "Success: no issues found" in report
