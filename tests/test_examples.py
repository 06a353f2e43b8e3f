"""The runnable examples in quick mode on the real SmolLM2-135M-Instruct, checked against independent
oracles: plain SteerableModel calls, numpy, the model's weights edited by hand, and recomputation of a
generation without a cache.

The tutorials (``tutorial_checks.TUTORIALS``) are notebooks too. Each is executed once, as a notebook
(jupytext, then nbclient in a ``python3`` kernel, quick mode and the model set through the environment as
a user would), and its oracle checks (``tutorial_checks.py``) run in that same kernel afterwards, on the
notebook's globals: one execution serves both. The other examples run once in-process through their
``main(argv)``, checked here.
"""

import importlib.util
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import jupytext
import nbformat
import numpy as np
import pytest
from matplotlib.figure import Figure
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from traitlets.config import Config

import mlx_steer as ms
from mlx_steer import analysis as an
from mlx_steer.demo.examples import MODEL_ENV, QUICK_ENV, NotebookSettings, notebook_settings, show
from mlx_steer.engine import interventions as niv

from tutorial_checks import CHECKS, TUTORIALS

pytestmark = pytest.mark.slow

TESTS = Path(__file__).resolve().parent
EXAMPLES = TESTS.parent / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quick(smollm2_dir):
    """quick(name) -> (module, what its main returned), run once per test module."""
    runs: dict = {}

    def get(name: str):
        if name not in runs:
            module = _load(name)
            runs[name] = module, module.main(["--quick", "--model", str(smollm2_dir)])
        return runs[name]

    return get


# -- the tutorials, executed as notebooks ----------------------------------------------------------
@dataclass(frozen=True)
class Executed:
    """A tutorial executed as a notebook: its cells with their outputs, the error that stopped it (None:
    every cell ran) and each check's traceback (None: it passed)."""

    cells: list
    error: str | None
    failures: dict[str, str | None]


def _plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)  # IPython colours its tracebacks


def _cell_error(cell) -> str | None:
    errors = [o for o in cell.get("outputs", []) if o.output_type == "error"]
    return _plain("\n".join(errors[0].traceback)) if errors else None


def _execute(name: str, model_dir: Path, tmp: Path) -> Executed:
    """Run the tutorial as a notebook in a python3 kernel, then each of its checks in a cell of its own
    (tagged ``raises-exception``: a failing check is recorded and the next one still runs)."""
    nb = jupytext.read(EXAMPLES / f"{name}.py")
    n = len(nb.cells)
    nb.cells.append(nbformat.v4.new_code_cell(f"import sys\nsys.path.insert(0, {str(TESTS)!r})\nimport tutorial_checks"))
    for check in CHECKS[name]:
        nb.cells.append(nbformat.v4.new_code_cell(f"tutorial_checks.CHECKS[{name!r}][{check!r}](globals())",
                                                  metadata={"tags": ["raises-exception"]}))
    config = Config()
    config.KernelManager.transport = "ipc"  # no TCP ports; the socket files live in tmp
    config.KernelManager.ip = str(tmp / "kernel")
    client = NotebookClient(nb, kernel_name="python3", timeout=300, config=config,
                            resources={"metadata": {"path": str(EXAMPLES)}})
    try:
        client.execute(env={**os.environ, QUICK_ENV: "1", MODEL_ENV: str(model_dir)})
        error = None
    except CellExecutionError as exc:
        error = _plain(str(exc))
    failures = {check: _cell_error(cell) for check, cell in zip(CHECKS[name], nb.cells[n + 1 :])}
    return Executed(nb.cells[:n], error, failures)


@pytest.fixture(scope="module")
def tutorial(smollm2_dir, tmp_path_factory):
    """tutorial(name) -> the :class:`Executed` tutorial, executed once per test module."""
    runs: dict[str, Executed] = {}

    def get(name: str) -> Executed:
        if name not in runs:
            runs[name] = _execute(name, smollm2_dir, tmp_path_factory.mktemp(name))
        return runs[name]

    return get


@pytest.mark.parametrize("name", TUTORIALS)
def test_tutorial_runs_as_a_notebook(tutorial, name):
    """Every cell runs in a kernel without an error, and the notebook shows at least one figure."""
    run = tutorial(name)
    if run.error is not None:
        pytest.fail(f"{name} failed as a notebook:\n{run.error}", pytrace=False)
    pngs = [o for cell in run.cells for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
    assert pngs, f"{name} showed no figure (no image/png output)"


@pytest.mark.parametrize("name, check", [(name, check) for name in TUTORIALS for check in CHECKS[name]])
def test_tutorial_oracle(tutorial, name, check):
    """One oracle check (tutorial_checks.py), run in the kernel that executed the notebook."""
    run = tutorial(name)
    if run.error is not None:
        pytest.fail(f"{name} failed as a notebook before its checks ran:\n{run.error}", pytrace=False)
    if run.failures[check] is not None:
        pytest.fail(run.failures[check], pytrace=False)


def test_notebook_settings_read_the_environment_and_the_command_line(monkeypatch):
    """Outside a kernel the command line wins over the environment; a bad yes/no value is named."""
    monkeypatch.delenv(QUICK_ENV, raising=False)
    monkeypatch.delenv(MODEL_ENV, raising=False)
    assert notebook_settings(argv=[]) == NotebookSettings(quick=False, model=None)
    monkeypatch.setenv(QUICK_ENV, "1")
    monkeypatch.setenv(MODEL_ENV, "/env/model")
    assert notebook_settings(argv=[]) == NotebookSettings(quick=True, model="/env/model")
    assert notebook_settings(argv=["--model", "/cli/model"]).model == "/cli/model"
    monkeypatch.setenv(QUICK_ENV, "no")
    assert notebook_settings(argv=["--quick"]).quick
    assert not notebook_settings(argv=[]).quick
    monkeypatch.setenv(QUICK_ENV, "maybe")
    with pytest.raises(ValueError, match="MLX_STEER_EXAMPLE_QUICK='maybe'.*valid: 1, true"):
        notebook_settings(argv=[])
    show(Figure())  # outside a kernel: nothing shown, no backend chosen


def test_refusal_direction_walkthrough(quick):
    """The exported folder, loaded on its own, answers exactly as the model ablated in-process (same
    refusals, same first-token KL); the direction is the hand-computed mean difference; the layer is the
    sweep's best."""
    module, r = quick("refusal_direction")
    cfg = module.QUICK
    data = json.loads(module.DATA.read_text())
    rows = r["rows"]
    assert list(rows)[:3] == ["base", "ablated in-process", "exported (ablated weights)"]
    ablated, exported = rows["ablated in-process"], rows["exported (ablated weights)"]
    assert exported["harmful_refused"] == ablated["harmful_refused"]
    assert exported["harmless_refused"] == ablated["harmless_refused"]
    assert exported["first_token_kl"] == pytest.approx(ablated["first_token_kl"], rel=1e-3, abs=1e-5)
    assert rows["base"]["first_token_kl"] == pytest.approx(0.0, abs=1e-9)
    m = ms.load(str(r["vector"].model_id))
    key = m.resolve(f"layers.{r['layer']}").key
    reads = {}
    for kind in ("harmful_train", "harmless_train"):
        prompts = data[kind][: cfg.n_train]
        reads[kind] = np.stack([m.to_numpy(m.run(p, chat=True, record=[key], logits=False).activations[key])[0, -1]
                                for p in prompts]).mean(0)
    np.testing.assert_allclose(r["vector"].directions[key], reads["harmful_train"] - reads["harmless_train"],
                               rtol=1e-3, atol=1e-3)
    assert r["layer"] == max(r["sweep"])[2] and r["layer"] in cfg.layers


def test_conditional_steering_walkthrough(quick):
    """Held-out requests that pass the condition get exactly the unconditionally steered run's tokens,
    the others exactly the plain run's; each decision's cosine is the recorded prompt mean's."""
    module, r = quick("conditional_steering")
    m, cfg, cond = r["model"], module.QUICK, r["condition"]
    ungated = {k: niv.add_vector(s.vector, scale=s.scale, positions="generated") for k, s in r["steer"].items()}
    values = an.condition_values(m, r["test"], site=str(cond.site), direction=cond.direction, chat=True)
    for i, prompt in enumerate(r["test"]):
        met = r["met"][i]
        assert met == bool(values[i] > cond.threshold)
        assert r["gated"].conditions[i][0]["values"]["cooking"] == pytest.approx(values[i], rel=1e-4, abs=1e-5)
        want = m.batch_generate([prompt], max_tokens=cfg.max_tokens, chat=True, interventions=ungated if met else None)
        assert r["gated"].token_ids[i] == want.token_ids[0], i
    assert r["accuracy"] == pytest.approx(np.mean([a == b for a, b in zip(r["met"], r["truth"])]))
    assert any(r["met"]) and not all(r["met"])


def test_sae_features_walkthrough(quick):
    """The top features are the SAE's encoding of the recorded prompt, ranked; the steered text is the
    generation with the feature's decoder row added by hand; the feature is one that fired on the word."""
    module, r = quick("sae_features")
    m, sae, f = r["model"], r["sae"], r["feature"]
    enc = sae.encode(r["acts"])
    for row, feats in zip(enc, r["top"]):
        assert [i for i, _ in feats] == [int(i) for i in np.argsort(-row)[: len(feats)]]
    assert enc[r["where"], f] > 0
    by_hand = m.generate(module.STEER_PROMPT, chat=True, max_tokens=8,
                         interventions={sae.site: niv.add_vector(sae.W_dec[f], scale=r["scale"], positions="generated")})
    assert r["steered"] == by_hand
