"""The Inspect AI provider (``--model mlx_steer/PATH``), run through the ``inspect eval`` CLI on a local
task (a memory dataset and a scorer), offline: the outputs equal mlx_steer's ``generate`` with the
same steering (greedy, same tokens), the metadata carries the monitors' projections (equal to the
recorded activations projected by hand), per-sample steering follows the sample's metadata or the
solver's ``extra_body``, concurrent samples share the continuous batch, bad ``-M`` args exit with one
clean message."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("inspect_ai")

from torch_fixtures import *  # noqa: F401,F403,E402

from mlx_steer.engine import interventions as iv  # noqa: E402

TASK = '''
import json
from inspect_ai import Task, task
from inspect_ai.dataset import MemoryDataset, Sample
from inspect_ai.scorer import includes
from inspect_ai.solver import generate, solver

ROWS = json.loads({rows!r})


@solver
def generate_with_body():
    async def solve(state, generate_):
        body = state.metadata.get("extra_body")
        return await (generate_(state, extra_body=body) if body else generate_(state))
    return solve


@task
def local():
    samples = [Sample(input=r["prompt"], target="the", id=i, metadata=r["metadata"]) for i, r in enumerate(ROWS)]
    return Task(dataset=MemoryDataset(samples), solver=generate_with_body(), scorer=includes())
'''

MAX_TOKENS = 8


def run_inspect(tmp: Path, model_dir: Path, rows: list[dict], *args: str) -> subprocess.CompletedProcess:
    """``inspect eval`` of a local task holding ``rows`` against ``mlx_steer/model_dir``."""
    (tmp / "task.py").write_text(TASK.format(rows=json.dumps(rows)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "INSPECT_LOG_LEVEL": "warning", "NO_COLOR": "1", "COLUMNS": "400"}
    cmd = [sys.executable, "-m", "inspect_ai", "eval", "task.py", "--model", f"mlx_steer/{model_dir}",
           "--log-dir", str(tmp / "logs"), "--display", "plain", "--max-tokens", str(MAX_TOKENS), *args]
    return subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=600)


def outputs(tmp: Path) -> dict[int, object]:
    """Each sample's ModelOutput, by sample id, from the one log the run wrote."""
    from inspect_ai.log import read_eval_log

    (log_file,) = (tmp / "logs").glob("*.eval")
    log = read_eval_log(str(log_file))
    assert log.status == "success", log.error
    return {int(s.id): s.output for s in log.samples}


def chat_ids(m, prompt: str) -> list[int]:
    """The prompt as the model's chat template makes it (one user message)."""
    tok = m.tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    return list(tok.encode(text, add_special_tokens=False))


def projections(m, ids: list[int], steering, site: str, direction: np.ndarray, n: int) -> np.ndarray:
    """Each generated token's activation at ``site`` (last position) on the unit direction, recorded
    by a solo ``stream_generate`` and projected here."""
    hooks: list = []
    list(m.stream_generate(ids, max_tokens=MAX_TOKENS, interventions=steering, record=[site], hooks_out=hooks))
    acts = m.to_numpy(hooks[0].activations[site])[0][:n]
    return acts @ (direction / np.linalg.norm(direction))


@pytest.fixture(scope="module")
def steer_files(tmp_path_factory, tiny_dir):
    """The tiny llama folder and two vector files for it (layers 1 and 2): ``love`` and ``calm``."""
    import mlx_steer as ms

    folder = tmp_path_factory.mktemp("inspect_vectors")
    rng = np.random.default_rng(31)
    dirs = {name: rng.normal(size=64).astype(np.float32) for name in ("love", "calm")}
    for name, v in dirs.items():
        ms.save_vector(ms.SteeringVector({"model.layers.1": v, "model.layers.2": v}), folder / f"{name}.safetensors")
    return tiny_dir("llama"), folder, dirs


PROMPTS = ["I love", "Tell me a story", "The weather is great", "Paris is"]


@pytest.mark.parametrize("backend", BACKENDS)  # noqa: F405
def test_steered_run_equals_generate_with_projections_per_sample_steering_and_batching(tmp_path, steer_files,
                                                                                      backend):
    import mlx_steer as ms

    model_dir, vectors, dirs = steer_files
    love, calm = dirs["love"], dirs["calm"]
    rows = [{"prompt": p, "metadata": {}} for p in PROMPTS]  # the -M steering: love x0.5 at layer 1
    rows.append({"prompt": PROMPTS[0], "metadata": {"mlx_steer": {"steering": []}}})  # unsteered, still monitored
    rows.append({"prompt": PROMPTS[1], "metadata": {"mlx_steer": {  # its own steering and monitor
        "steering": [{"vector": "calm", "scale": -0.7, "layers": [2], "positions": "generated"}],
        "monitor": [{"vector": "calm", "layer": 2}]}}})
    rows.append({"prompt": PROMPTS[2], "metadata": {"extra_body": {  # the solver's generate config
        "steering": [{"vector": "love", "scale": 0.3, "layers": [1, 2]}]}}})
    done = run_inspect(tmp_path, model_dir, rows, "-M", f"vector=love={vectors / 'love.safetensors'}",
                       "-M", f"vectors=calm={vectors / 'calm.safetensors'}", "-M", "scale=0.5", "-M", "layers=1",
                       "-M", f"backend={backend}", "--max-connections", "4")
    assert done.returncode == 0, done.stderr[-3000:]
    out = outputs(tmp_path)

    m = ms.load(str(model_dir), backend=backend)
    steer = {"model.layers.1": iv.add_vector(love, scale=0.5)}
    expected = {i: (steer, "model.layers.1", love) for i in range(4)}
    expected[4] = (None, "model.layers.1", love)
    expected[5] = ({"model.layers.2": iv.add_vector(calm, scale=-0.7, positions="generated")}, "model.layers.2", calm)
    expected[6] = ({"model.layers.1": iv.add_vector(love, scale=0.3), "model.layers.2": iv.add_vector(love, scale=0.3)},
                   "model.layers.1", love)
    for i, (steering, site, direction) in expected.items():
        ids = chat_ids(m, rows[i]["prompt"])
        want = m.generate_tokens(ids, max_tokens=MAX_TOKENS, interventions=steering)
        meta = out[i].metadata
        assert meta["tokens"] == want, f"sample {i}"
        assert out[i].completion == m.prompts.decode(want), f"sample {i}"
        assert out[i].usage.input_tokens == len(ids) and out[i].usage.output_tokens == len(want)
        (name, values), = meta["projections"].items()
        assert name == ("calm" if i == 5 else "love")
        np.testing.assert_allclose(values, projections(m, ids, steering, site, direction, len(want)),
                                   rtol=1e-4, atol=1e-4, err_msg=f"sample {i}")
    assert out[0].metadata["steering"] == [{"vector": "love", "scale": 0.5, "layers": [1], "positions": "all"}]
    assert out[4].metadata["steering"] is None
    assert out[6].metadata["steering"][0]["layers"] == [1, 2]
    assert out[0].metadata["tokens"] != out[4].metadata["tokens"]  # the steering changes this sample's tokens
    peaks = [o.metadata["batch_peak"] for o in out.values()]
    assert 2 <= max(peaks) <= 4, peaks  # samples ran together, never more than max_connections


@pytest.mark.parametrize("args, message", [
    (["-M", "bogus=1"], "unknown model arg 'bogus' (-M bogus=...); valid: backend, device, vector"),
    (["-M", "vector=VEC", "-M", "layers=9"], "steering[0].layers: layer 9 out of range for a 4-layer model; valid: -4..3"),
])
def test_bad_model_args_exit_with_one_message(tmp_path, steer_files, args, message):
    model_dir, vectors, _ = steer_files
    args = [a.replace("VEC", str(vectors / "love.safetensors")) for a in args]
    done = run_inspect(tmp_path, model_dir, [{"prompt": "I love", "metadata": {}}], *args)
    shown = done.stdout + done.stderr
    assert done.returncode == 1, shown[-3000:]
    assert message in " ".join(shown.split()), shown[-3000:]
    assert "Traceback" not in shown and not list((tmp_path / "logs").glob("*.eval"))


@pytest.mark.slow
def test_smollm2_steered_and_unsteered_from_the_cli(tmp_path, smollm2_dir, smollm2):
    """The real SmolLM2 from the CLI: the steered samples equal ``generate`` with the same steering and
    differ from the unsteered ones, which equal plain ``generate``."""
    import mlx_steer as ms

    m = smollm2
    v = np.random.default_rng(7).normal(size=m.hidden_size).astype(np.float32)
    v *= 8.0 / np.linalg.norm(v)
    ms.save_vector(ms.SteeringVector({"model.layers.10": v}), tmp_path / "v.safetensors")
    prompts = ["What is the capital of France?", "Write a short poem about the sea."]
    rows = [{"prompt": p, "metadata": {}} for p in prompts]
    rows += [{"prompt": p, "metadata": {"mlx_steer": {"steering": []}}} for p in prompts]
    done = run_inspect(tmp_path, smollm2_dir, rows, "-M", f"vector={tmp_path / 'v.safetensors'}", "-M", "scale=2",
                       "--max-connections", "4")
    assert done.returncode == 0, done.stderr[-3000:]
    out = outputs(tmp_path)
    for i, prompt in enumerate(prompts):
        ids = chat_ids(m, prompt)
        steered = m.generate_tokens(ids, max_tokens=MAX_TOKENS, interventions={"model.layers.10": iv.add_vector(v, scale=2.0)})
        plain = m.generate_tokens(ids, max_tokens=MAX_TOKENS)
        assert out[i].metadata["tokens"] == steered and out[i + 2].metadata["tokens"] == plain
        assert steered != plain
        assert len(out[i].metadata["projections"]["v"]) == len(steered)


@pytest.mark.slow
def test_docs_page_runs_as_written(tmp_path, smollm2_dir, smollm2):
    """docs/inspect.md's ``bash`` blocks, then its ``python`` blocks, run in one folder on SmolLM2 with
    ``PATH`` filled in (``sh`` blocks, the pip install, are not run); the steered log's first sample
    equals ``generate`` with the page's steering, and the sample the page leaves unsteered equals plain ``generate``."""
    import mlx_steer as ms

    page = (Path(__file__).resolve().parents[1] / "docs" / "inspect.md").read_text()
    fences = re.findall(r"^```(\w+)\n(.*?)^```", page, re.S | re.M)
    bin_dir = str(Path(sys.executable).parent)  # mlx-steer, inspect and python from this environment
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "HF_HUB_OFFLINE": "1",
           "INSPECT_LOG_LEVEL": "warning"}
    for kind in ("bash", "python"):
        for code in (c for k, c in fences if k == kind):
            code = re.sub(r"\bPATH\b", str(smollm2_dir), code)
            args = ["bash", "-e", "-c", code] if kind == "bash" else [sys.executable, "-c", code]
            proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
            assert proc.returncode == 0, f"{code[:300]}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert "batch_peak" in proc.stdout
    from inspect_ai.log import read_eval_log

    m = smollm2
    vec = ms.load_vector(tmp_path / "love.safetensors", model=m)
    log = read_eval_log(str(next((tmp_path / "logs-love").glob("*.eval"))))
    ids = chat_ids(m, "Describe your neighbours in one sentence.")
    steered = m.generate_tokens(ids, max_tokens=24, interventions=vec.to_interventions(scale=4.0))
    out = {int(s.id): s.output for s in log.samples}  # ids 1, 2, 3 in the dataset's order
    assert out[1].metadata["tokens"] == steered
    assert out[3].metadata["tokens"] == m.generate_tokens(ids, max_tokens=24) != steered


def test_generate_config_and_steering_sources_in_process(steer_files):
    """What the CLI tests do not reach: each config field that cannot be honoured is refused by name,
    and a call's steering comes from extra_body, else the sample's metadata, else the model args."""
    from inspect_ai.model import ChatMessageTool, ChatMessageUser, GenerateConfig

    from mlx_steer.integrations.inspect.options import OptionError, parse_options
    from mlx_steer.integrations.inspect.requests import RequestError, chat_request

    _, vectors, _ = steer_files
    options = parse_options({"vector": str(vectors / "love.safetensors"), "scale": 2, "layers": "1,2"})
    assert options.steering == ({"vector": "love", "scale": 2.0, "layers": [1, 2]},) and options.monitor == ("love",)
    assert parse_options({"vector": str(vectors / "love.safetensors"), "layers": 1}).steering[0]["layers"] == [1]
    user = [ChatMessageUser(content="hi")]

    def request(config=GenerateConfig(), metadata=None, messages=user, tools=False):
        return chat_request(messages, config, options=options, model_id="m", metadata=metadata, has_tools=tools)

    sample = {"mlx_steer": {"steering": [{"vector": "love", "scale": -1.0}]}}
    assert request()["steering"] == [{"vector": "love", "scale": 2.0, "layers": [1, 2]}]
    assert request(metadata=sample)["steering"] == [{"vector": "love", "scale": -1.0}]
    got = request(GenerateConfig(extra_body={"steering": []}), metadata=sample)
    assert "steering" not in got and got["monitor"] == ["love"]  # unsteered, still monitored
    got = request(GenerateConfig(max_tokens=5, temperature=0.7, top_p=0.9, top_k=3, stop_seqs=["."], seed=4))
    assert {k: got[k] for k in ("max_tokens", "temperature", "top_p", "top_k", "stop", "seed")} == \
        {"max_tokens": 5, "temperature": 0.7, "top_p": 0.9, "top_k": 3, "stop": ["."], "seed": 4}
    for config, message in [(GenerateConfig(num_choices=2), "num_choices=2 is not supported"),
                            (GenerateConfig(logprobs=True), "logprobs=True is not supported"),
                            (GenerateConfig(logit_bias={3: 1.0}), "logit_bias={3: 1.0} is not supported"),
                            (GenerateConfig(extra_body={"steer": []}), "unknown key 'steer'; valid: steering, monitor")]:
        with pytest.raises(RequestError, match=re.escape(message)):
            request(config)
    with pytest.raises(RequestError, match="do not call tools"):
        request(tools=True)
    with pytest.raises(RequestError, match="message 1 is a tool result"):
        request(messages=[*user, ChatMessageTool(content="4", tool_call_id="x")])
    for args, message in [({"vector": "nope.safetensors"}, "no such file: nope.safetensors"),
                          ({"scale": 4}, "-M scale needs something to steer with"),
                          ({"feature": 3}, "-M feature needs -M sae=DIR"),
                          ({"vectors": f"calm={vectors / 'calm.safetensors'}", "monitor": "love"},
                           "-M monitor='love': not a registered vector; registered: calm"),
                          ({"backend": "jax"}, "-M backend='jax': valid: mlx, torch"),
                          ({"max_batch": 0}, "-M max_batch=0: expected an integer >= 1")]:
        with pytest.raises(OptionError, match=re.escape(message)):
            parse_options(args)
