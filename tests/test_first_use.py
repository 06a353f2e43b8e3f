"""What a newcomer meets first: an install command that
installs this package, a version, tab completion, doc snippets that run on a CPU-only machine,
and how to list a model's sites."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import mlx_steer as ms

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _pyproject(key: str) -> str:
    text = (ROOT / "pyproject.toml").read_text()
    project = text.split("[project]", 1)[1].split("\n[", 1)[0]
    return re.search(rf'^{key} = "([^"]+)"', project, re.M).group(1)


def _python_block(path: Path, heading: str) -> str:
    """The first ```python block after ``heading`` in a markdown file."""
    text = path.read_text()
    after = text[text.index(heading):]
    return re.search(r"```python\n(.*?)```", after, re.S).group(1)


def test_the_distribution_is_not_the_taken_name():
    # "mlx-steer" on PyPI is an unrelated placeholder; "mlx-steer-lab" was free when chosen
    assert _pyproject("name") == "mlx-steer-lab"
    assert 'mlx-steer = "mlx_steer.cli:main"' in (ROOT / "pyproject.toml").read_text()


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_docs_never_pip_install_an_unpublished_name(path):
    for n, line in enumerate(path.read_text().splitlines(), 1):
        for command in re.findall(r"pip install ([^`\n&|;]*)", line):
            names = [a.strip("\"'") for a in command.split() if not a.startswith("-")]
            bad = [a for a in names if re.match(r"mlx[-_]steer", a, re.I)]
            assert not bad, f"{path.name} line {n} installs {bad} from the index: {line.strip()}"


def test_version():
    assert ms.__version__ == _pyproject("version")
    proc = subprocess.run([sys.executable, "-m", "mlx_steer.cli", "--version"], capture_output=True, text=True,
                          timeout=120)
    assert proc.stdout.strip() == f"mlx-steer {ms.__version__}"


def test_dir_lists_lazy_names_without_importing_them():
    code = ("import sys, mlx_steer as m; names = dir(m); "
            "print(sorted(set(m.__all__) - set(names)), 'mlx_steer.backends.mlx' in sys.modules, "
            "'__version__' in names)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    assert out.split() == ["[]", "False", "True"]
    assert {"load", "extract", "SteeringVector", "save_vector", "load_vector"} <= set(dir(ms))


def test_torch_snippet_runs_on_this_machine(tiny_dir, shared_models):
    """The quickstart's "CPU or CUDA" snippet, with the demo model swapped for a tiny one."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    code = _python_block(ROOT / "docs" / "quickstart.md", "## The same on torch (CPU or CUDA)")
    assert 'device="cuda"' not in code
    vec = ms.extract(shared_models("llama"), ["I love it"], ["I hate it"], sites=["layers.1"])
    scope = {"prepare_smollm2": lambda: tiny_dir("llama"), "vec": vec}
    exec(compile(code, "quickstart.md", "exec"), scope)
    assert scope["tmodel"].device.type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_listing_sites_is_documented_and_runs(shared_models):
    model = shared_models("llama")
    readme, concepts = (ROOT / "README.md").read_text(), (ROOT / "docs" / "concepts.md").read_text()
    assert "model.layer_paths" in readme and "model.layer_paths" in concepts
    code = _python_block(ROOT / "README.md", "Which sites a model has")
    scope = {"model": model}
    exec(compile(code, "README.md", "exec"), scope)
    assert model.layer_paths == [f"model.layers.{i}" for i in range(4)]
    inside = [p for p in model.modules if p.startswith(model.layer_paths[1] + ".")]
    assert "model.layers.1.mlp" in inside and "model.layers.1.self_attn.o_proj" in inside
    for site in inside:
        assert model.resolve(site).path == site


def test_cache_variable_is_documented():
    assert "MLX_STEER_CACHE" in (ROOT / "README.md").read_text()
