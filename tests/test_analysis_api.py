"""The analysis package's surface: every name importable where it was, one concept per module,
written against the models' public API only (mlx_steer.engine.model.Steerable), importable without a backend."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import mlx_steer.analysis as an

PACKAGE = Path(an.__file__).parent
MODULES = {
    "vocabulary_lens": {"TokenReport", "top_tokens"},
    "norms": {"NormRow", "norm_profile", "relative_scale"},
    "monitor": {"MonitoredGeneration", "Persistence", "projection_monitor", "persistence_run"},
    "sweeps": {"METRICS", "SweepRow", "SweepResult", "sweep"},
    "thresholds": {"ThresholdRow", "ThresholdSearch", "condition_values", "find_threshold"},
    "kl_calibration": {"NEUTRAL_PROMPTS", "calibrate", "kl_at"},
    "loops": {"Loop", "find_loops", "label_loops", "text_loops"},
    "phases": {"generation_loops", "span_masks", "span_means"},
}


def test_every_public_name_is_reexported_from_its_concept_module():
    import importlib

    assert set(an.__all__) == set().union(*MODULES.values())
    for module, names in MODULES.items():
        mod = importlib.import_module(f"mlx_steer.analysis.{module}")
        for name in names:
            assert getattr(an, name) is getattr(mod, name), (module, name)
    from mlx_steer.analysis import persistence_run, projection_monitor, sweep, top_tokens  # noqa: F401

    assert callable(sweep) and callable(projection_monitor)


def test_no_private_attribute_reads():
    """Features go through the model's public API: no ``x._name`` except on ``self``."""
    found = []
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and not (isinstance(node.value, ast.Name) and node.value.id == "self")):
                found.append(f"{path.name}:{node.lineno} .{node.attr}")
    assert not found, found


def test_imports_without_a_backend():
    code = ("import sys, mlx_steer.analysis; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'mlx', 'mlx_lm', 'torch', 'transformers', 'matplotlib'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
