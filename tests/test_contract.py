"""Contracts every backend keeps, tested once, parametrized over backends, against oracles that
can fail; and the package's shape (backends side by side, no import between them, no cycles)."""

import ast
import sys
from pathlib import Path

import numpy as np
import pytest

from mlx_steer.engine import interventions as iv
from torch_fixtures import *  # noqa: F403  (fixtures)
from torch_fixtures import BACKENDS

PACKAGE = Path(__file__).parent.parent / "mlx_steer"
PROMPT = "The weather is great, happy people walk"


def eos_bias(m):
    """A large residual vector along EOS's unembedding row: at the last layer it makes EOS the
    most likely next token at every step."""
    eos = min(m.eos_token_ids)
    w = m.unembed(np.eye(m.hidden_size, dtype=np.float32))[:, eos]  # W[eos] through the head
    return eos, {f"layers.{m.num_layers - 1}": iv.add_vector(w / np.linalg.norm(w) * 100.0)}


@pytest.mark.parametrize("backend", BACKENDS)
def test_eos_suppressing_processor_runs_to_max_tokens(backend_models, backend):
    m = backend_models(backend, "llama")
    prompt = m.encode(PROMPT)
    eos, push = eos_bias(m)
    first = list(m.stream_generate(prompt, max_tokens=25, interventions=push))
    assert [(r.token, r.finish_reason) for r in first] == [(eos, "stop")]  # EOS wins without the processor
    seen = []

    def no_eos(tokens, logits):
        seen.append(len(tokens))
        mask = np.zeros(logits.shape[-1], np.float32)
        mask[sorted(m.eos_token_ids)] = -np.inf
        return logits + (type(logits)(mask) if backend == "mlx" else logits.new_tensor(mask))

    out = m.generate_tokens(prompt, max_tokens=25, logits_processors=[no_eos], interventions=push)
    assert len(out) == 25 and not set(out) & m.eos_token_ids
    assert seen[:2] == [len(prompt), len(prompt) + 1]  # the processor sees the prompt, then each new token
    banned = m.generate_tokens(prompt, max_tokens=25, logits_processors=[m.ban_tokens_processor(m.eos_token_ids)],
                               interventions=push)
    assert banned == out


def _top_level(stmts: list[ast.stmt]):
    """Statements run at import: the module body, into if/try blocks but not TYPE_CHECKING ones,
    functions or classes."""
    for node in stmts:
        if isinstance(node, ast.If):
            if "TYPE_CHECKING" not in ast.unparse(node.test):
                yield from _top_level(node.body)
            yield from _top_level(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, *(h.body for h in node.handlers), node.orelse, node.finalbody):
                yield from _top_level(block)
        else:
            yield node


def _imports(path: Path, module: str, *, everywhere: bool = False) -> set[str]:
    """Modules of mlx_steer that ``path`` imports when it is imported (``everywhere``: anywhere in
    it, under TYPE_CHECKING and inside functions too)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree) if everywhere else _top_level(tree.body):
        if isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            name = f"{base}.{node.module}" if node.level and node.module else base if node.level else node.module
            out.add(name)
            out.update(f"{name}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {n for n in out if n.startswith("mlx_steer")}


def _graph(*, everywhere: bool = False) -> dict[str, set[str]]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return {m: {i for i in _imports(p, m, everywhere=everywhere) if i in modules and i != m}
            for m, p in modules.items()}


def test_backends_are_siblings_with_no_import_between_them():
    graph = _graph(everywhere=True)
    for a, b in (("mlx", "torch"), ("torch", "mlx")):
        crossing = [(m, i) for m, deps in graph.items() if m.startswith(f"mlx_steer.backends.{a}")
                    for i in deps if i.startswith(f"mlx_steer.backends.{b}")]
        assert not crossing, crossing
    core = [m for m in graph if m.startswith("mlx_steer.engine")]
    assert "mlx_steer.engine.model" in core and "mlx_steer.engine.protocols" in core
    for m in core:  # the shared engine imports no backend
        assert not [i for i in graph[m] if i.startswith("mlx_steer.backends")], m


def _no_cycle(edges: dict[str, set[str]]) -> None:
    """Fail naming the first circle found in ``edges`` (module -> modules it leads to)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(edges[m]):
            if state.get(n) == 1:
                raise AssertionError(" -> ".join(stack[stack.index(n):] + [n]))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)


def test_no_import_cycles():
    """No circle among the package's modules, counting every import: under TYPE_CHECKING and inside
    functions too (a deferred import standing in for a design loop is still a loop)."""
    graph = _graph(everywhere=True)
    # a package importing its own submodules (re-exports) is not a cycle between concepts
    edges = {m: {i for i in deps if not m.startswith(i + ".")} for m, deps in graph.items()}
    _no_cycle(edges)


def test_no_module_imports_one_still_being_initialized():
    """At import time (top-level imports), importing ``mlx_steer.a.b.c`` first runs the package
    ``mlx_steer.a.b``'s ``__init__``: counting those runs, no import chain comes back to a module that
    is still being initialized (``patching/sites.py`` once imported ``heads.attention_sites``, which ran
    ``heads/__init__``, which imports ``heads.logit_attribution``, which imports ``patching.sites``)."""
    graph = _graph()
    edges: dict[str, set[str]] = {}
    for m, deps in graph.items():
        runs = set()
        for i in deps:
            parts = i.split(".")
            for k in range(2, len(parts) + 1):  # each package on the way, then the module itself
                step = ".".join(parts[:k])
                if step in graph and step != m and not m.startswith(step + "."):
                    runs.add(step)
        edges[m] = runs
    _no_cycle(edges)


def test_the_layout_shows_the_architecture():
    """Few modules at the top (the rest sit in folders named for what they hold), none too long."""
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 12, top
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


def _private_reads(path: Path) -> list[str]:
    """``x._name`` on anything but ``self``/``cls``, and ``from m import _name``, in one file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.ImportFrom):
            found += [f"{path.relative_to(PACKAGE)}:{node.lineno}: import {a.name}" for a in node.names
                      if a.name.startswith("_") and not a.name.startswith("__")]
    return found


def test_engine_serve_and_distributed_read_no_private_state_of_other_objects():
    """The engine, the server and the distributed runs use what objects offer publicly (a backend's
    protocol, the model's API), never another object's or module's private names."""
    found = [hit for folder in ("engine", "serve", "distributed") for path in sorted((PACKAGE / folder).rglob("*.py"))
             for hit in _private_reads(path)]
    assert not found, "\n".join(found)


def test_the_private_reads_check_finds_one(tmp_path, monkeypatch):
    """The check above can fail: it finds a private read of another object and a private import."""
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path)
    bad = tmp_path / "bad.py"
    bad.write_text("from .x import _hidden\n\ndef f(model):\n    return model._plan, self_ok()\n")
    assert [h.split(": ", 1)[1] for h in _private_reads(bad)] == ["import _hidden", "model._plan"]


def test_one_load_for_both_backends(tiny_dir):
    """mlx_steer.load(path, backend=...) gives each backend's own model: the same logits as that
    backend's loader, and bad choices named before anything loads."""
    import mlx_steer as ms
    from mlx_steer.backends.mlx import SteerableModel, load as mlx_load
    from mlx_steer.torch_backend import TorchSteerableModel, load as torch_load

    folder = tiny_dir("llama")
    mine = {"mlx": ms.load(folder), "torch": ms.load(str(folder), backend="torch", device="cpu")}
    assert type(mine["mlx"]) is SteerableModel and type(mine["torch"]) is TorchSteerableModel
    for backend, theirs in (("mlx", mlx_load(str(folder))), ("torch", torch_load(str(folder)))):
        m = mine[backend]
        assert np.array_equal(m.to_numpy(m.run(PROMPT).logits), theirs.to_numpy(theirs.run(PROMPT).logits))
    with pytest.raises(ValueError, match=r"unknown backend 'jax'; valid: mlx, torch"):
        ms.load(folder, backend="jax")
    with pytest.raises(ValueError, match=r"device cpu applies to the torch backend; MLX picks its device itself"):
        ms.load(folder, device="cpu")
    with pytest.raises(ValueError, match=r"device 'bogus' is not a torch device"):
        ms.load(folder, backend="torch", device="bogus")
    with pytest.raises(FileNotFoundError, match=r"no such file: \./no/such/model"):
        ms.load("./no/such/model", backend="torch")


def test_backend_neutral_names_import_without_mlx():
    """Hooks and Trace belong to the shared engine: mlx_steer gives them where MLX cannot be imported,
    while the MLX backend's class, which needs MLX, says so."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['mlx'] = None  # import mlx now raises ImportError\n"
            "import mlx_steer as ms\n"
            "print(ms.Hooks.__module__, ms.Trace.__module__)\n"
            "try:\n    ms.SteerableModel\nexcept ImportError:\n    print('SteerableModel needs mlx')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["mlx_steer.engine.hooks mlx_steer.engine.results", "SteerableModel needs mlx"]


def test_tests_import_no_private_name_of_the_package():
    """Tests use the package as users do: no ``from mlx_steer... import _name``, and not the
    deprecated ``mlx_steer.real_model`` path (the module is mlx_steer.demo.real_model)."""
    found = []
    for path in sorted(Path(__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mlx_steer"):
                found += [f"{path.name}: {node.module}.{a.name}" for a in node.names
                          if a.name.startswith("_") or node.module == "mlx_steer.real_model"]
            elif isinstance(node, ast.Import):
                found += [f"{path.name}: {a.name}" for a in node.names if a.name == "mlx_steer.real_model"]
    assert found == []


def test_one_meaning_per_name(load_tiny):
    """The MLX backend's class is named for its backend (its earlier name kept as an alias); the result
    of a projection monitor is not called Monitor (that is the continuous batch's monitor spec); one
    norm_profile (the model-level one in analysis; the dict arithmetic under it is norm_ratios)."""
    import mlx_steer as ms
    from mlx_steer import analysis
    from mlx_steer.engine import continuous
    from mlx_steer.vectors import similarity

    assert ms.SteerableModel is ms.MLXSteerableModel and type(load_tiny("llama")).__name__ == "MLXSteerableModel"
    assert not hasattr(analysis, "Monitor") and analysis.MonitoredGeneration is not continuous.Monitor
    assert not hasattr(similarity, "norm_profile") and similarity.norm_ratios({"a": 2.0}, {"a": 4.0}) == {"a": 0.5}
