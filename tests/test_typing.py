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


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed (pip install -e '.[test]')")
def test_mypy_holds_a_backend_to_the_whole_protocol(tmp_path: Path) -> None:
    """Each backend is checked against ``Backend`` (see ``_implements`` in their backend.py): a backend
    missing one member, or with a member of the wrong signature, is a mypy error naming it."""
    code = (
        "from mlx_steer.backends.torch.backend import TorchBackend\n"
        "from mlx_steer.engine.protocols import Backend\n"
        "class NoForward(TorchBackend):\n"
        "    forward = None  # type: ignore[assignment]\n"
        "class WrongSampling(TorchBackend):\n"
        "    def sampling(self, temp: float) -> int:  # type: ignore[override]\n"
        "        return 0\n"
        "def no_forward(b: NoForward) -> Backend:\n"
        "    return b\n"
        "def wrong_sampling(b: WrongSampling) -> Backend:\n"
        "    return b\n"
    )
    (tmp_path / "broken_backends.py").write_text(code)
    proc = subprocess.run([sys.executable, "-m", "mypy", str(tmp_path / "broken_backends.py")], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    report = proc.stdout + proc.stderr
    assert proc.returncode == 1, report
    assert report.count("Incompatible return value type") == 2, report
    assert '"NoForward"' in report and "def forward(" in report, report
    assert '"WrongSampling"' in report and "def sampling(" in report, report
