"""The lm-eval adapter (mlx_steer.integrations.lm_eval) on the tiny seeded models, both backends:
loglikelihoods, rolling loglikelihoods and is_greedy against a hand computation from ``run``'s full
logits (log-softmax in float64, summed over the continuation), generations against ``generate`` with
the same steering, per-request overrides against solo runs, and local tasks end to end through
``simple_evaluate`` and the CLI wrapper, offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("lm_eval", reason="the lm-eval adapter needs the lmeval extra: pip install -e '.[lmeval]'")

import mlx_steer as ms  # noqa: E402
from mlx_steer.engine import interventions as iv  # noqa: E402
from torch_fixtures import *  # noqa: E402,F403  (fixtures)
from torch_fixtures import BACKENDS  # noqa: E402

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SCALE = 4.0
PAIRS = [("I love", " this wonderful day"), ("The weather is great,", " happy people"), ("", "Paris is the"),
         ("Tell me a story about a ", "cat"), ("Q: What is two plus two? A:", " Four.")]


@pytest.fixture(scope="module")
def vector_file(tmp_path_factory, shared_models) -> Path:
    m = shared_models("llama")
    rng = np.random.default_rng(7)
    vec = ms.SteeringVector({p: rng.normal(size=m.hidden_size).astype(np.float32) for p in
                             ("model.layers.1", "model.layers.2")}, method="random")
    path = tmp_path_factory.mktemp("lm_eval_vec") / "v.safetensors"
    ms.save_vector(vec, path)
    return path


def _req(kind: str, args: tuple, doc: dict | None = None, i: int = 0):
    from lm_eval.api.instance import Instance

    return Instance(kind, doc or {}, args, i, metadata=("t", i, 1))


def _spec(m, path: Path, scale: float, layer: str = "layers.1") -> dict:
    """The steering built by hand from the file's array (independent of the adapter's parsing)."""
    from safetensors.numpy import load_file

    arrays = load_file(str(path))
    return {layer: iv.add_vector(arrays["model." + layer], scale=scale)}


def _hand_pair(m, ctx: str, cont: str) -> tuple[list[int], list[int]]:
    """lm-eval's split: trailing context spaces move to the continuation; an empty context is BOS."""
    stripped = ctx.rstrip()
    cont, ctx = ctx[len(stripped):] + cont, stripped
    if not ctx:
        return [m.tokenizer.bos_token_id], list(m.tokenizer.encode(cont, add_special_tokens=False))
    c, whole = m.encode(ctx), m.encode(ctx + cont)
    return c, whole[len(c):]


def _hand_score(m, ctx: list[int], cont: list[int], spec) -> tuple[float, bool]:
    """log p(cont | ctx) from the full (1, L, V) logits of one solo run."""
    logits = m.to_numpy(m.run([ctx + cont], interventions=spec).logits)[0].astype(np.float64)
    rows = logits[len(ctx) - 1: len(ctx) + len(cont) - 1]
    logp = rows - np.log(np.exp(rows - rows.max(-1, keepdims=True)).sum(-1, keepdims=True)) - rows.max(-1, keepdims=True)
    return float(sum(logp[j, t] for j, t in enumerate(cont))), bool(all(rows[j].argmax() == t for j, t in enumerate(cont)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_loglikelihood_equals_hand_computation_with_per_request_steering(backend_models, backend, vector_file):
    from mlx_steer.integrations.lm_eval import SteeredLM

    m = backend_models(backend, "llama")
    lm = SteeredLM(m, vector=str(vector_file), scale=SCALE, layers=1, batch_size=3)
    greedy = ("I love", m.generate("I love", max_tokens=2, interventions=_spec(m, vector_file, SCALE)))
    pairs = [*PAIRS, greedy]
    overrides = [None, {"scale": 8}, {"vector": None}, {"layers": "2"}, None, None]  # one batch mixes them
    reqs = [_req("loglikelihood", p, {} if o is None else {"mlx_steer": o}, i) for i, (p, o) in enumerate(zip(pairs, overrides))]
    got = lm.loglikelihood(reqs)
    specs = [_spec(m, vector_file, SCALE), _spec(m, vector_file, 8.0), None, _spec(m, vector_file, SCALE, "layers.2"),
             _spec(m, vector_file, SCALE), _spec(m, vector_file, SCALE)]
    wanted = [_hand_score(m, *_hand_pair(m, ctx, cont), spec) for (ctx, cont), spec in zip(pairs, specs)]
    for (ctx, cont), (logprob, is_greedy), (want, want_greedy) in zip(pairs, got, wanted):
        assert abs(logprob - want) < 1e-5, (ctx, cont, logprob, want)
        assert is_greedy == want_greedy
    assert wanted[-1][1] and not wanted[0][1]  # both outcomes of is_greedy are checked


@pytest.mark.parametrize("backend", BACKENDS)
def test_steered_minus_unsteered_equals_the_librarys_steered_logits(backend_models, backend, vector_file):
    from mlx_steer.integrations.lm_eval import SteeredLM

    m = backend_models(backend, "llama")
    reqs = [_req("loglikelihood", p, None, i) for i, p in enumerate(PAIRS)]
    steered = SteeredLM(m, vector=str(vector_file), scale=SCALE, layers=[1]).loglikelihood(reqs)
    plain = SteeredLM(m).loglikelihood(reqs)
    spec = _spec(m, vector_file, SCALE)
    for (ctx, cont), (s, _), (u, _) in zip(PAIRS, steered, plain):
        toks = _hand_pair(m, ctx, cont)
        want = _hand_score(m, *toks, spec)[0] - _hand_score(m, *toks, None)[0]
        assert abs(want) > 1e-3  # the steering changes the score ...
        assert abs((s - u) - want) < 1e-5  # ... exactly as the library's steered logits do


@pytest.mark.parametrize("backend", BACKENDS)
def test_rolling_loglikelihood_equals_hand_computation(backend_models, backend, vector_file):
    from lm_eval import utils as lm_utils

    from mlx_steer.integrations.lm_eval import SteeredLM

    m = backend_models(backend, "llama")
    texts = ["Tell me a story about a cat who lives on a boat.", "I love this wonderful day"]
    spec = _spec(m, vector_file, SCALE)
    for max_length in (512, 6):  # one window; several disjoint windows
        lm = SteeredLM(m, vector=str(vector_file), scale=SCALE, layers="1", max_length=max_length, batch_size=4)
        got = lm.loglikelihood_rolling([_req("loglikelihood_rolling", (t,), None, i) for i, t in enumerate(texts)])
        for text, total in zip(texts, got):
            toks = list(m.tokenizer.encode(text, add_special_tokens=False))
            windows = [lm_utils.make_disjoint_window(w) for w in
                       lm_utils.get_rolling_token_windows(toks, m.tokenizer.bos_token_id, max_length, 1)]
            assert sum(len(c) for _, c in windows) == len(toks) and (len(windows) > 1) == (max_length == 6)
            want = sum(_hand_score(m, list(c), list(x), spec)[0] for c, x in windows)
            assert abs(total - want) < 1e-5, (max_length, total, want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_generate_until_equals_generate_and_stops_at_until(backend_models, backend, vector_file):
    from mlx_steer.integrations.lm_eval import SteeredLM

    m = backend_models(backend, "llama")
    lm = SteeredLM(m, vector=str(vector_file), scale=SCALE, layers=1, batch_size=2)
    prompts = ["I love", "The weather is great, happy", "Tell me a story"]
    steered = [m.generate(p, max_tokens=12, interventions=_spec(m, vector_file, SCALE)) for p in prompts]
    plain = m.generate(prompts[2], max_tokens=12)
    stops = [steered[0][len(steered[0]) // 2], "\n\n\n", plain[len(plain) // 2]]  # the first and last occur
    docs = [None, None, {"mlx_steer": {"vector": None}}]
    reqs = [_req("generate_until", (p, {"until": [u], "max_gen_toks": 12}), d, i)
            for i, (p, u, d) in enumerate(zip(prompts, stops, docs))]
    got = lm.generate_until(reqs)
    assert got[0] == steered[0][:steered[0].index(stops[0])] and len(got[0]) < len(steered[0])
    assert got[1] == steered[1]  # its stop string never appears: the whole continuation
    assert got[2] == plain[:plain.index(stops[2])] and len(got[2]) < len(plain)


def _write_tasks(folder: Path) -> Path:
    """A multiple-choice and a generation task over JSONL files written here."""
    mc = [{"question": "I love this wonderful", "choices": [" day", " rain", " cat"], "answer": 0},
          {"question": "Paris is the capital of", "choices": [" France", " Germany"], "answer": 0},
          {"question": "The weather is great, happy people walk in the", "choices": [" sun", " boat"], "answer": 1}]
    gen = [{"prompt": "I love this", "target": "x"}, {"prompt": "Tell me a story", "target": "y"}]
    (folder / "mc.jsonl").write_text("".join(json.dumps(d) + "\n" for d in mc))
    (folder / "gen.jsonl").write_text("".join(json.dumps(d) + "\n" for d in gen))
    (folder / "tiny_mc.yaml").write_text(textwrap.dedent(f"""\
        task: tiny_mc
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {folder / 'mc.jsonl'}
        test_split: test
        output_type: multiple_choice
        doc_to_text: "{{{{question}}}}"
        doc_to_choice: "{{{{choices}}}}"
        doc_to_target: "{{{{answer}}}}"
        target_delimiter: ""
        metric_list:
          - metric: acc
        """))
    (folder / "tiny_gen.yaml").write_text(textwrap.dedent(f"""\
        task: tiny_gen
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {folder / 'gen.jsonl'}
        test_split: test
        output_type: generate_until
        doc_to_text: "{{{{prompt}}}}"
        doc_to_target: "{{{{target}}}}"
        target_delimiter: ""
        generation_kwargs:
          until: ["."]
          max_gen_toks: 8
        metric_list:
          - metric: exact_match
        """))
    return folder


@pytest.mark.parametrize("backend", BACKENDS)
def test_simple_evaluate_runs_local_tasks_as_the_library_scores_them(backend_models, tiny_dir, backend, vector_file,
                                                                      tmp_path):
    import lm_eval
    from lm_eval.tasks import TaskManager

    import mlx_steer.integrations.lm_eval  # noqa: F401  (registers "mlx_steer")

    m = backend_models(backend, "llama")
    tasks = _write_tasks(tmp_path)
    args = f"pretrained={tiny_dir('llama')},backend={backend},vector={vector_file},scale=4,layers=1,batch_size=4"
    out = lm_eval.simple_evaluate(model="mlx_steer", model_args=args, tasks=["tiny_mc", "tiny_gen"], device="cpu",
                                  task_manager=TaskManager(include_path=str(tasks), include_defaults=False),
                                  log_samples=True)
    spec = _spec(m, vector_file, SCALE)
    hits = []
    for sample in out["samples"]["tiny_mc"]:
        doc = sample["doc"]
        scores = [_hand_score(m, *_hand_pair(m, doc["question"], c), spec)[0] for c in doc["choices"]]
        got = [r[0][0] for r in sample["resps"]]
        np.testing.assert_allclose(got, scores, atol=1e-5)
        hits.append(int(np.argmax(scores)) == doc["answer"])
    assert out["results"]["tiny_mc"]["acc,none"] == pytest.approx(np.mean(hits))
    for sample in out["samples"]["tiny_gen"]:
        text = m.generate(sample["doc"]["prompt"], max_tokens=8, interventions=spec)
        assert sample["resps"][0][0] == text.split(".")[0]


@pytest.mark.slow  # lm-eval's CLI indexes its ~10k built-in task files first (about 45 s here)
def test_cli_wrapper_refuses_bad_model_args_in_one_line(tiny_dir, vector_file, tmp_path, capsys):
    from mlx_steer.integrations.lm_eval.__main__ import main

    tasks = _write_tasks(tmp_path)
    args = ["run", "--model", "mlx_steer", "--tasks", "tiny_mc", "--include_path", str(tasks), "--device", "cpu",
            "--model_args", f"pretrained={tiny_dir('llama')},vector={vector_file},colour=red"]
    argv = list(sys.argv)
    assert main(args) == 2
    assert sys.argv == argv  # restored
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert errors == [errors[0]] and errors[0].startswith("error: unknown mlx_steer model_args colour; valid: ")
    assert "Traceback" not in err


def _page_blocks(lang: str) -> list[str]:
    import re

    page = (Path(__file__).resolve().parents[1] / "docs" / "lm_eval.md").read_text()
    return [code for kind, code in re.findall(r"^```(\w+)\n(.*?)^```", page, re.S | re.M) if kind == lang]


@pytest.mark.slow
def test_docs_page_commands_run_as_written(smollm2_dir, tmp_path):
    """docs/lm_eval.md: its command block (a local task, ``extract``, the CLI wrapper) and then both
    Python snippets, in one folder, on SmolLM2; only ``PATH`` becomes the model folder."""
    import re

    install, block = _page_blocks("bash")
    assert install.startswith('pip install -e ".[lmeval]"')  # not run here
    env = {**os.environ, "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    fill = lambda text: re.sub(r"\bPATH\b", str(smollm2_dir), text)  # noqa: E731
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", fill(block)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = re.search(r"\|capitals\|.*?\|acc\s*\|[^|]*\|\s*([\d.]+)\|", proc.stdout)
    assert row, proc.stdout[-2000:]
    for snippet in _page_blocks("python"):
        out = subprocess.run([sys.executable, "-c", fill(snippet) + "\nprint(out['results']['capitals']['acc,none'])"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        assert float(out.stdout.splitlines()[-1]) == float(row.group(1))  # the same steered model and task


@pytest.mark.parametrize("args, error, named", [
    ("pretrained=P,vector=V,colour=red", ValueError, "colour"),
    ("pretrained=P,vector=V,scale=lots", ValueError, "scale='lots'"),
    ("pretrained=P,vector=V,scale=inf", ValueError, "scale=inf is not finite"),
    ("pretrained=P,vector=/nope/v.safetensors", FileNotFoundError, "/nope/v.safetensors"),
    ("pretrained=P,scale=4", ValueError, "vector=FILE"),
    ("pretrained=P,vector=V,layers=3", ValueError, "model.layers.3"),
    ("pretrained=P,vector=V,batch_size=auto", ValueError, "batch_size='auto'"),
    ("pretrained=P,backend=jax", ValueError, "backend='jax'"),
])
def test_bad_model_args_name_the_value(tiny_dir, vector_file, args, error, named):
    from mlx_steer.integrations.lm_eval import SteeredLM

    spec = args.replace("pretrained=P", f"pretrained={tiny_dir('llama')}").replace("vector=V", f"vector={vector_file}")
    with pytest.raises(error) as info:
        SteeredLM.create_from_arg_string(spec, {"device": "cuda:0", "batch_size": 1})
    assert named in str(info.value)


def test_bad_request_overrides_and_gen_kwargs_name_the_request(shared_models, vector_file):
    from mlx_steer.integrations.lm_eval import SteeredLM

    lm = SteeredLM(shared_models("llama"), vector=str(vector_file), scale=SCALE)
    with pytest.raises(ValueError, match=r"doc\['mlx_steer'\] of task t doc 3 has unknown key\(s\) strength"):
        lm.loglikelihood([_req("loglikelihood", PAIRS[0], {"mlx_steer": {"strength": 2}}, 3)])
    with pytest.raises(ValueError, match="unsupported generation kwarg.*num_beams"):
        lm.generate_until([_req("generate_until", ("I love", {"until": ["."], "num_beams": 4}), None, 0)])


def test_mlx_steer_imports_without_lm_eval():
    code = ("import sys; sys.modules['lm_eval'] = None\n"
            "import mlx_steer, mlx_steer.cli.main, mlx_steer.integrations\n"
            "try:\n    import mlx_steer.integrations.lm_eval\nexcept ImportError:\n    print('refused')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "refused", proc.stderr[-2000:]


@pytest.mark.parametrize("backend", BACKENDS)
def test_chat_template_for_lm_evals_apply_chat_template(backend_models, backend):
    from mlx_steer.integrations.lm_eval import SteeredLM

    lm = SteeredLM(backend_models(backend, "llama"))
    chat = [{"role": "user", "content": "Paris is"}, {"role": "assistant", "content": " the"}]
    assert lm.apply_chat_template(chat[:1]) == "<|user|>Paris is<|end|><|assistant|>"  # tiny_models.CHAT_TEMPLATE
    assert lm.apply_chat_template(chat, add_generation_prompt=False).endswith("<|assistant|> the")
