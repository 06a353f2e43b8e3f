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


def _bash_blocks(path: Path) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", path.read_text(), re.S)


def test_the_readme_test_command_is_what_ci_runs_and_installs_no_index_url():
    readme = [line for block in _bash_blocks(ROOT / "README.md") for line in block.splitlines()]
    commands = [line for line in readme if line.startswith("python -m pip install torch==2.13.0 && ")]
    assert len(commands) == 1, commands  # the tests'; the demo's installs no torch (tests/test_mlx_only_setup.py)
    assert all("--index-url" not in c for c in commands), commands  # CI's machine reaches no other index
    test = next(c for c in commands if c.endswith("python -m pytest -q -n 2 --dist loadfile"))
    assert test in (ROOT / ".ci" / "run").read_text().splitlines()


def test_the_readme_says_how_to_get_torchs_cpu_build_on_linux():
    readme = (ROOT / "README.md").read_text()
    line = "python -m pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
    assert any(line in block.splitlines() for block in _bash_blocks(ROOT / "README.md"))
    assert "keeps pip\nfrom pulling a multi-GB CUDA build" not in readme  # the old, false claim
    assert "CUDA build" in readme and "without an NVIDIA GPU" in readme


@pytest.mark.parametrize("with_sudo", [True, False], ids=["user-with-sudo", "root-without-sudo"])
@pytest.mark.parametrize("path", [ROOT / "README.md", ROOT / "docs" / "blas.md"], ids=lambda p: p.name)
def test_the_apt_line_runs_with_and_without_sudo(path, with_sudo, tmp_path):
    lines = [line.split("#")[0].strip() for block in _bash_blocks(path) for line in block.splitlines()
             if "apt-get install" in line]
    assert len(lines) == 1, lines
    log = tmp_path / "log"
    (tmp_path / "apt-get").write_text(f'#!/bin/bash\necho "apt-get $*" >> {log}\n')
    (tmp_path / "apt-get").chmod(0o755)
    if with_sudo:
        (tmp_path / "sudo").write_text(f'#!/bin/bash\necho sudo >> {log}\nexec "$@"\n')
        (tmp_path / "sudo").chmod(0o755)
    # only the fakes on PATH: the line needs nothing else (command -v is a shell builtin)
    proc = subprocess.run(["/bin/bash", "-c", lines[0]], env={"PATH": str(tmp_path)}, capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    calls = ["apt-get update", "apt-get install -y libopenblas0-pthread"]
    expected = [x for c in calls for x in (["sudo", c] if with_sudo else [c])]
    assert log.read_text().splitlines() == expected


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_docs_never_run_a_bare_sudo(path):
    for n, line in enumerate(path.read_text().splitlines(), 1):
        assert not re.search(r"(^|[;&|]\s*)sudo ", line), f"{path.name} line {n}: {line.strip()}"


def test_the_readme_says_what_to_expect_from_the_tests_and_pip_check():
    readme = (ROOT / "README.md").read_text()
    assert 'python -m pytest -q -m "not slow"' in readme and "15 minutes" in readme
    assert '"slow: ' in (ROOT / "pyproject.toml").read_text()  # the marker the fast subset deselects
    assert "`pip check` reports" in readme and "never imported" in readme


def test_the_extras_that_run_notebooks_have_ipywidgets():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extra in ("test", "docs"):
        assert any(re.match(r"ipywidgets\b", req) for req in extras[extra]), extra
