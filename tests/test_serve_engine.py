"""The server's parts without HTTP: the engine thread (continuous, and the one-at-a-time fallback
for a backend without ``batch_generator``), the incremental text with stop strings, and the
``serve`` command's user errors (``error: ...``, exit 2, no traceback)."""

from __future__ import annotations

import queue
import socket

import numpy as np
import pytest

from mlx_steer.engine import interventions as iv
from mlx_steer.engine.continuous import Monitor
from mlx_steer.serve.engine import Accepted, Busy, Engine, Finished, Job, Rejected, Token
from mlx_steer.engine.text_stream import TextStream

PROMPTS = ["I love", "The weather is great, happy people walk", "Tell me a story"]


class NoBatching:
    """A model whose backend has no continuous batching."""

    def __init__(self, model):
        self._model = model

    def __getattr__(self, name):
        return getattr(self._model, name)

    def batch_generator(self, **options):
        raise NotImplementedError


def run_jobs(model, jobs, **engine_options):
    """Submit every job at once; each job's events, in order."""
    engine = Engine(model, **engine_options)
    engine.start()
    inbox: queue.Queue = queue.Queue()
    try:
        for i, job in enumerate(jobs):
            engine.submit(job, lambda e, i=i: inbox.put((i, e)))
        events: dict[int, list] = {i: [] for i in range(len(jobs))}
        finished = 0
        while finished < len(jobs):
            i, e = inbox.get(timeout=60)
            events[i].append(e)
            finished += isinstance(e, (Finished, Rejected))
        return events, engine.stats()
    finally:
        engine.stop()


@pytest.mark.parametrize("batching", ["continuous", "serial"])
def test_engine_jobs_equal_their_solo_runs(load_tiny, batching):
    m = load_tiny("llama")
    rng = np.random.default_rng(2)
    v, u = (rng.normal(size=m.hidden_size).astype(np.float32) for _ in range(2))
    specs = [None, {"layers.1": iv.add_vector(v, scale=8.0)}, {"layers.2": iv.add_vector(v, scale=-5.0, positions="generated")}]
    jobs = [Job(m.encode(p), 6 + i, specs[i], {"u": Monitor("layers.2", u)}, top_logprobs=2) for i, p in enumerate(PROMPTS)]
    served = m if batching == "continuous" else NoBatching(m)
    events, stats = run_jobs(served, jobs)
    assert stats["batching"] == batching and stats["held"] == 0
    for i, job in enumerate(jobs):
        assert isinstance(events[i][0], Accepted)
        tokens = [e for e in events[i] if isinstance(e, Token)]
        want = m.generate_tokens(job.prompt, max_tokens=job.max_tokens, interventions=job.interventions)
        assert [t.token for t in tokens] == want, f"job {i}"
        done = events[i][-1]
        assert isinstance(done, Finished) and done.full_text == m.prompts.decode(want)
        assert "".join(t.text for t in tokens) + done.text == done.full_text
        hooks = []
        list(m.stream_generate(job.prompt, max_tokens=job.max_tokens, interventions=job.interventions,
                               record=["layers.2"], hooks_out=hooks))
        recorded = m.to_numpy(hooks[0].activations["layers.2"])[0][: len(want)] @ (u / np.linalg.norm(u))
        np.testing.assert_allclose([t.projections["u"] for t in tokens], recorded, rtol=1e-4, atol=1e-4)
        assert all(t.logprob == pytest.approx(t.top_logprobs[0][1]) for t in tokens)  # greedy


def test_engine_rejects_bad_jobs_and_bounds_its_queue(load_tiny):
    m = load_tiny("llama")
    bad = Job(m.encode("I love"), 4, {"layers.1": iv.add_vector(np.ones(3, np.float32))})
    good = Job(m.encode("I love"), 4)
    events, stats = run_jobs(m, [bad, good])
    assert isinstance(events[0][0], Rejected) and "size 3" in events[0][0].message
    assert [e.token for e in events[1] if isinstance(e, Token)] == m.generate_tokens(good.prompt, max_tokens=4)
    assert stats["rejected"] == 1 and stats["held"] == 0
    engine = Engine(m, max_queue=1)
    engine.start()
    try:
        engine.submit(Job(m.encode("I love"), 200), lambda e: None)
        with pytest.raises(Busy, match=r"--max-queue 1"):
            engine.submit(good, lambda e: None)
    finally:
        engine.stop()
    with pytest.raises(ValueError, match="max_queue must be a positive int"):
        Engine(m, max_queue=0)


def test_a_served_requests_steering_is_planned_once_and_runs_as_planned(load_tiny, monkeypatch):
    """The planner resolves, checks and compiles a request's steering; the batch takes it as it is
    (nothing is planned again on the worker thread) and the tokens are those of a solo steered run."""
    from mlx_steer.engine import compiling
    from mlx_steer.serve.planning import FieldError, Planner
    from mlx_steer.serve.registry import VectorRegistry
    from mlx_steer.serve.schemas import CompletionRequest

    m = load_tiny("llama")
    v = np.random.default_rng(4).normal(size=m.hidden_size).astype(np.float32)
    planner = Planner(m, VectorRegistry(m))
    planned = []
    real = compiling.plan_sites
    monkeypatch.setattr(compiling, "plan_sites", lambda resolver, **kw: planned.append(kw) or real(resolver, **kw))
    body = {"model": "m", "prompt": "I love", "max_tokens": 6, "temperature": 0.0,
            "steering": [{"vector": v.tolist(), "layers": [1], "scale": 6.0, "positions": "generated"}]}
    plan = planner.completion(CompletionRequest(**body))
    assert len(planned) == 1 and plan.job.steering is not None
    events, _ = run_jobs(m, [plan.job])
    assert len(planned) == 1  # the worker's insert planned nothing
    want = m.generate_tokens(plan.job.prompt, max_tokens=6,
                             interventions={"layers.1": iv.add_vector(v, scale=6.0, positions="generated")})
    assert [e.token for e in events[0] if isinstance(e, Token)] == want
    with pytest.raises(FieldError, match=r"never reached"):  # checked by the planner, before any queue
        planner.completion(CompletionRequest(**{**body, "steering": [{**body["steering"][0], "positions": [40]}]}))


@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_served_conditional_steering_decides_per_request(tiny_dir, backend):
    """``steering[i].when``: requests whose prompt passes the condition get the steering on their
    generated tokens, the others are not steered; each reports its decision and value."""
    import mlx_steer as ms
    from mlx_steer.serve.formats import conditions_of
    from mlx_steer.serve.planning import Planner
    from mlx_steer.serve.registry import VectorRegistry
    from mlx_steer.serve.schemas import CompletionRequest
    from torch_fixtures import prompt_cosines, threshold_between

    if backend == "torch":
        pytest.importorskip("torch")
    m = ms.load(str(tiny_dir("llama")), backend=backend)
    rng = np.random.default_rng(0)
    d, v = (rng.normal(size=m.hidden_size).astype(np.float32) for _ in range(2))
    values = prompt_cosines(m, PROMPTS, "layers.1", d)
    threshold = threshold_between(values)
    assert min(values) < threshold < max(values)  # some requests pass, some do not
    planner = Planner(m, VectorRegistry(m, {"topic": ms.SteeringVector({"model.layers.1": d})}))
    when = {"vector": "topic", "layer": 1, "threshold": threshold}
    plans = [planner.completion(CompletionRequest(model="m", prompt=p, max_tokens=6, temperature=0.0, steering=[
        {"vector": (3 * v).tolist(), "layers": [2], "scale": 1.0, "when": when}])) for p in PROMPTS]
    events, _ = run_jobs(m, [plan.job for plan in plans])
    for i, plan in enumerate(plans):
        on = values[i] > threshold
        want = m.generate_tokens(plan.job.prompt, max_tokens=6,
                                 interventions={"layers.2": iv.add_vector(3 * v, positions="generated")} if on else None)
        assert [e.token for e in events[i] if isinstance(e, Token)] == want, i
        (report,) = conditions_of(events[i][-1].conditions)
        assert report["steering"] == 0 and report["condition_met"] is on
        assert report["value"] == pytest.approx(values[i], rel=1e-4, abs=1e-5)
        assert plan.steering[0]["when"]["threshold"] == threshold


def test_served_sae_features_are_added_and_clamped(load_tiny):
    """``steering: [{"sae": NAME, "feature": f, "scale": s}]`` adds the feature's decoder row,
    ``"clamp": v`` sets the feature: the tokens are the library's with the same SAE interventions."""
    from mlx_steer import sae as S
    from mlx_steer.serve.planning import FieldError, Planner
    from mlx_steer.serve.registry import VectorRegistry
    from mlx_steer.serve.schemas import CompletionRequest

    m = load_tiny("llama")
    rng = np.random.default_rng(6)
    F = 32
    sae = S.SparseAutoencoder(rng.normal(size=(m.hidden_size, F)).astype(np.float32) / 4, np.zeros(F, np.float32),
                              rng.normal(size=(F, m.hidden_size)).astype(np.float32), np.zeros(m.hidden_size, np.float32),
                              site="layers.1")
    planner = Planner(m, VectorRegistry(m), saes={"toy": sae})
    cases = [({"sae": "toy", "feature": 3, "scale": 5.0}, sae.add(3, 5.0)),
             ({"sae": "toy", "feature": 3, "clamp": 6.0, "positions": "generated"},
              sae.clamp(3, 6.0, positions="generated"))]
    plans = [planner.completion(CompletionRequest(model="m", prompt="I love", max_tokens=6, temperature=0.0,
                                                  steering=[entry])) for entry, _ in cases]
    events, _ = run_jobs(m, [p.job for p in plans])
    for i, (_, spec) in enumerate(cases):
        want = m.generate_tokens(plans[i].job.prompt, max_tokens=6, interventions=spec)
        assert [e.token for e in events[i] if isinstance(e, Token)] == want, i
        assert want != m.generate_tokens(plans[i].job.prompt, max_tokens=6)  # the feature steers
    assert plans[1].steering[0]["sae"] == "toy" and plans[1].steering[0]["clamp"] == 6.0
    for entry, message in (({"sae": "nope", "feature": 1}, r"unknown SAE 'nope'; registered: toy"),
                           ({"sae": "toy", "feature": 99}, r"feature 99 out of range for 32 features"),
                           ({"sae": "toy"}, r"needs both sae"), ({"sae": "toy", "feature": 1, "vector": "x"}, r"not both")):
        with pytest.raises(FieldError, match=message):
            planner.completion(CompletionRequest(model="m", prompt="I love", max_tokens=4, steering=[entry]))


def test_text_stream_holds_back_partial_characters_and_stop_strings():
    pieces = {1: "Hel", 2: "lo", 3: " wo", 4: "rld", 5: "\ufffd", 6: "é!"}

    def decode(ids):  # token 5 alone is half a character; with 6 it completes it
        text = "".join(pieces[i] for i in ids)
        return text.replace("\ufffdé", "é")

    s = TextStream(decode)
    assert [s.add(t) for t in (1, 2, 3, 4, 5, 6)] == ["Hel", "lo", " wo", "rld", "", "é!"]
    assert s.flush() == "" and s.text == "Hello worldé!"
    s = TextStream(decode, stop=["o w", "xyz"])
    assert s.add(1) == "Hel" and s.add(2) == "l"  # "o" could start "o w": held back
    assert s.add(3) == "" and s.stopped and s.text == "Hell" and s.flush() == ""
    s = TextStream(decode, stop=["lo!"])
    assert s.add(1) == "He" and s.add(2) == "l" and s.add(3) == "lo wo" and s.flush() == ""
    assert not s.stopped and s.text == "Hello wo"


# -- the command -------------------------------------------------------------------------------
def _main(capsys, *argv):
    from mlx_steer.cli import main

    code = main(["serve", *argv])
    err = capsys.readouterr().err
    return code, err


def test_serve_command_user_errors(tiny_dir, tmp_path, capsys):
    import mlx_steer as ms

    model = str(tiny_dir("llama"))
    code, err = _main(capsys, "--model", model, "--vector", "love")
    assert code == 2 and "error: --vector 'love': expected NAME=FILE" in err
    code, err = _main(capsys, "--model", model, "--vector", "love=/no/such.safetensors")
    assert code == 2 and "no such file" in err
    code, err = _main(capsys, "--model", model, "--vector", "bad name=x.safetensors")
    assert code == 2 and "the name must be" in err
    code, err = _main(capsys, "--model", model, "--vectors-dir", str(tmp_path / "none"))
    assert code == 2 and "no such folder" in err
    narrow = tmp_path / "narrow.safetensors"
    ms.save_vector(ms.SteeringVector({"model.layers.1": np.ones(8, np.float32)}), narrow)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = str(s.getsockname()[1])
        code, err = _main(capsys, "--model", model, "--port", busy)
        assert code == 2 and f"cannot listen on 127.0.0.1:{busy}" in err
    code, err = _main(capsys, "--model", str(tmp_path / "nomodel"), "--vector", f"narrow={narrow}")
    assert code == 2 and "no such file" in err
    assert "Traceback" not in err
    with pytest.raises(SystemExit) as exit_:
        _main(capsys, "--model", model, "--port", "70000")
    assert exit_.value.code == 2


def test_vector_that_does_not_fit_fails_at_startup(tiny_dir, tmp_path, capsys):
    import mlx_steer as ms

    narrow = tmp_path / "narrow.safetensors"
    ms.save_vector(ms.SteeringVector({"model.layers.1": np.ones(8, np.float32)}), narrow)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    code, err = _main(capsys, "--model", str(tiny_dir("llama")), "--vector", f"narrow={narrow}", "--port", port)
    assert code == 2 and "does not fit this model" in err and "Traceback" not in err
