"""Several processes on loopback: 2-rank ``mlx.launch --backend ring`` and ``torchrun`` (gloo) runs
equal single-process runs.

One launch does every happy path (data-parallel extraction, tensor- and pipeline-sharded steered
generation and recording, the CLI); the ranks write what they computed and each test compares one
part with the same computation in this process. Every launch is bounded and leaves nothing running.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

import dist_worker as w

HERE = Path(__file__).parent
LAUNCH_TIMEOUT = 240  # the launcher kills every rank after this; subprocess.run waits a little longer


def _launch(cmd: list[str], *, runner: list[str], marker: str, timeout: float = LAUNCH_TIMEOUT) -> subprocess.CompletedProcess:
    """Run ``cmd`` on 2 ranks; afterwards no process whose command line holds ``marker`` may remain."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GLOO_SOCKET_IFNAME": "lo", "PYTHONPATH": str(HERE)}
    try:
        return subprocess.run(runner + cmd, capture_output=True, text=True, env=env, timeout=timeout + 30)
    finally:
        strays = _processes_with(marker)
        for pid in strays:  # only the ranks of this run (their command lines hold the marker)
            os.kill(pid, 9)
        assert not strays, f"processes left running: {strays}"


def _mlx_launch(cmd: list[str], marker: str) -> subprocess.CompletedProcess:
    runner = [sys.executable, "-m", "mlx_steer.distributed.launch", "--timeout", str(LAUNCH_TIMEOUT),
              "--backend", "ring", "-n", "2", "--"]
    return _launch(cmd, runner=runner, marker=marker)


def _processes_with(marker: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if marker.encode() in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                pass
    return pids


@pytest.fixture(scope="module")
def two_ranks(tiny_dir, tmp_path_factory):
    """Run dist_worker.py ``all`` on 2 ranks; the folder holding each rank's results."""
    root = Path(tiny_dir("llama")).parent
    tiny_dir("qwen2")
    out = tmp_path_factory.mktemp(f"two_ranks_{uuid.uuid4().hex[:8]}")
    r = _mlx_launch([sys.executable, str(HERE / "dist_worker.py"), "all", str(root), str(out)], marker=str(out))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out, r


def _ranks(out: Path, part: str) -> list[dict]:
    return [dict(np.load(out / f"{part}.{rank}.npz")) for rank in (0, 1)]


@pytest.mark.parametrize("name", list(w.EXTRACTS))
def test_data_parallel_extraction_equals_single_process(two_ranks, shared_models, name):
    out, _ = two_ranks
    expected = {k: v for k, v in w.extract_all(shared_models("llama")).items() if k.startswith(name + "/")}
    for got in _ranks(out, "extract"):
        for key, want in expected.items():
            if key.endswith("world_size"):
                assert int(got[key]) == 2 and int(want) == 1
            else:
                np.testing.assert_allclose(got[key], want, rtol=0, atol=1e-6 * max(1.0, float(np.abs(want).max())))


def test_data_parallel_recording_equals_single_process(two_ranks, shared_models):
    out, _ = two_ranks
    expected = w.record_all(shared_models("llama"))
    assert len(expected) == 3 and expected["record/model.layers.1"].shape == (len(w.POS) + len(w.NEG), 64)
    for got in _ranks(out, "extract"):  # every rank holds the whole result
        for key, want in expected.items():
            np.testing.assert_allclose(got[key], want, rtol=0, atol=1e-6 * max(1.0, float(np.abs(want).max())),
                                       err_msg=key)


def test_data_parallel_sweep_equals_single_process(two_ranks, shared_models):
    out, _ = two_ranks
    expected = w.sweep_all(shared_models("llama"))
    for got in _ranks(out, "extract"):
        for key, want in expected.items():
            np.testing.assert_allclose(got[key], want, rtol=1e-6, atol=1e-6, err_msg=key)


@pytest.mark.parametrize("part, arch", [("tensor", "llama"), ("pipeline", "qwen2")])
def test_sharded_steering_equals_single_process(two_ranks, shared_models, part, arch):
    out, _ = two_ranks
    expected = w.steer_all(shared_models(arch))
    for got in _ranks(out, part):
        for key, want in expected.items():
            if key.startswith("gen/"):
                assert got[key].tolist() == want.tolist(), key  # greedy tokens, token for token
            elif key != "refused":
                np.testing.assert_allclose(got[key], want, rtol=1e-4, atol=1e-4, err_msg=key)


def test_tensor_parallel_refuses_a_sharded_site(two_ranks):
    out, _ = two_ranks
    for rank, got in enumerate(_ranks(out, "tensor")):
        assert "sharded by tensor parallelism" in str(got["refused"]) and "o_proj:input" in str(got["refused"])
    for got in _ranks(out, "pipeline"):  # whole layers: nothing is split
        assert str(got["refused"]) == ""


def test_cli_extract_under_the_launcher_writes_once(two_ranks, shared_models):
    import mlx_steer as ms

    out, r = two_ranks
    assert [(out / f"cli.{rank}.code").read_text() for rank in (0, 1)] == ["0", "0"]
    assert r.stdout.count(f"wrote {out / 'cli.safetensors'}") == 1
    assert "prompts on 2 ranks" in r.stdout
    vec = ms.load_vector(out / "cli.safetensors")
    assert vec.extra["world_size"] == "2"
    single = ms.extract(shared_models("llama"), w.POS, w.NEG, sites=["layers.1", "layers.2"], batch_size=2)
    for site in single:
        np.testing.assert_allclose(vec[site], single[site], rtol=0, atol=1e-6)


def test_cli_record_under_the_launcher_writes_once(two_ranks, shared_models):
    from safetensors import safe_open

    import mlx_steer as ms

    out, r = two_ranks
    assert [(out / f"cli_record.{rank}.code").read_text() for rank in (0, 1)] == ["0", "0"]
    assert r.stdout.count(f"wrote {out / 'acts.safetensors'}") == 1 and "from 14 prompts on 2 ranks" in r.stdout
    with safe_open(str(out / "acts.safetensors"), "numpy") as f:
        got, meta = f.get_tensor("model.layers.2:input"), f.metadata()
    assert meta["world_size"] == "2"
    want = ms.record_dataset(shared_models("llama"), w.POS + w.NEG, sites="layers.2:input", batch_size=3)
    np.testing.assert_allclose(got, want["model.layers.2:input"], rtol=0, atol=1e-6)


def test_cli_sweep_under_the_launcher_prints_once(two_ranks, shared_models):
    import mlx_steer as ms
    from mlx_steer.analysis import sweep

    out, r = two_ranks
    assert [(out / f"cli_sweep.{rank}.code").read_text() for rank in (0, 1)] == ["0", "0"]
    assert r.stdout.count("baseline logit_diff") == 1 and r.stdout.count(f"wrote {out / 'sweep.png'}") == 1
    assert "on 2 ranks" in r.stdout.split("baseline logit_diff")[0]
    m = shared_models("llama")
    want = sweep(m, vector=ms.load_vector(out / "cli.safetensors"), layers=[1, 2], strengths=[0.0, 2.0, -3.0],
                 prompts=w.POS + w.NEG, target_tokens=[5], contrast_tokens=[6], batch_size=16, progress=False)
    assert want.to_text() in r.stdout  # the table the ranks shared == the one-process table


def test_a_failing_rank_fails_the_launch_and_leaves_nothing_running(tmp_path):
    marker = str(tmp_path / f"fail_{uuid.uuid4().hex[:8]}")
    r = _mlx_launch([sys.executable, str(HERE / "dist_worker.py"), "fail", "-", marker], marker=marker)
    assert r.returncode != 0
    assert "rank 1 failed on purpose" in r.stderr


def test_mlx_launch_itself_runs_the_cli(tiny_dir, shared_models, tmp_path):
    """``mlx.launch`` unchanged (the other launches use mlx_steer's launcher, which starts local
    ring ranks itself): rank 0 alone writes the vector, equal to one process's."""
    import mlx_steer as ms
    from mlx_steer.distributed.launch import free_port_range

    out = tmp_path / f"bare_{uuid.uuid4().hex[:8]}"
    out.mkdir()
    pairs = out / "pairs.jsonl"
    pairs.write_text("".join(f'{{"positive": "{a}", "negative": "{b}"}}\n' for a, b in zip(w.POS, w.NEG)))
    launcher = str(Path(sys.executable).parent / "mlx.launch")
    runner = [launcher, "--backend", "ring", "-n", "2", "--starting-port", str(free_port_range(2)), "--"]
    cli = [str(Path(sys.executable).parent / "mlx-steer"), "extract", str(pairs), "--model", str(tiny_dir("llama")),
           "--layers", "1", "--batch-size", "2", "--no-progress", "-o", str(out / "v.safetensors")]
    r = _launch(cli, runner=runner, marker=str(out))
    assert r.returncode == 0 and r.stdout.count("wrote ") == 1, r.stdout[-3000:] + r.stderr[-3000:]
    single = ms.extract(shared_models("llama"), w.POS, w.NEG, sites=["layers.1"], batch_size=2)
    vec = ms.load_vector(out / "v.safetensors")
    assert vec.extra["world_size"] == "2"
    np.testing.assert_allclose(vec["model.layers.1"], single["model.layers.1"], rtol=0, atol=1e-6)


def test_the_launcher_stops_every_rank_after_its_timeout(tmp_path):
    marker = str(tmp_path / f"sleep_{uuid.uuid4().hex[:8]}")
    runner = [sys.executable, "-m", "mlx_steer.distributed.launch", "--timeout", "3", "--backend", "ring", "-n", "2",
              "--"]
    r = _launch([sys.executable, "-c", "import time; time.sleep(120)", marker], runner=runner, marker=marker, timeout=3)
    assert r.returncode == 124 and "timed out after 3s" in r.stderr


def test_torchrun_data_parallel_extraction_equals_single_process(tiny_dir, tmp_path):
    import mlx_steer.torch_backend as mt

    folder = tiny_dir("llama")
    marker = str(tmp_path / f"torch_{uuid.uuid4().hex[:8]}")
    os.makedirs(marker)
    runner = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    r = _launch([str(HERE / "dist_worker.py"), "torch", str(folder), marker], runner=runner, marker=marker)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    single = mt.load(str(folder))
    expected = {**w.extract_all(single), **w.record_all(single)}
    for rank in (0, 1):
        got = dict(np.load(Path(marker) / f"torch.{rank}.npz"))
        for key, want in expected.items():
            if key.endswith("world_size"):
                assert int(got[key]) == 2
            else:
                np.testing.assert_allclose(got[key], want, rtol=0, atol=1e-6 * max(1.0, float(np.abs(want).max())))


# -- in one process: the pieces the launches rely on ------------------------------------------------
class _HalfOfTwo:
    """Rank 0 of a pretend 2-rank group (for checks that fail before anything is reduced)."""

    rank, size, bytes_reduced = 0, 2, 0

    def all_sum(self, x):
        raise AssertionError("nothing should be reduced")


@pytest.mark.parametrize("method", ["probe", "custom"])
def test_methods_that_need_every_row_are_refused_over_ranks(shared_models, method):
    import mlx_steer as ms

    def custom(pos, neg):
        return pos.mean(0) - neg.mean(0)

    with pytest.raises(ValueError, match=f"method '{method}' needs every activation row in one process"):
        ms.extract(shared_models("llama"), w.POS, w.NEG, sites=["layers.1"], group=_HalfOfTwo(),
                   method=custom if method == "custom" else method)


class _PartnerFailed:
    """Rank 0 of a pretend 2-rank group whose rank 1 failed: it adds 1 to the failure count of
    the first reduction (and nothing else), and records what it was handed."""

    rank, size, bytes_reduced = 0, 2, 0

    def __init__(self) -> None:
        self.reduced: list[np.ndarray] = []

    def all_sum(self, x):
        self.reduced.append(np.array(x, copy=True))
        out = np.array(x, dtype=np.float64, copy=True)
        if len(self.reduced) == 1:
            out[0] += 1.0
        return out


def test_a_sweep_rank_raises_with_its_partner_and_reduces_no_scores(shared_models, monkeypatch):
    from mlx_steer.analysis import cell_scoring, sweep

    m = shared_models("llama")
    kw = dict(vector=np.ones(m.hidden_size, np.float32), layers=[1], strengths=[2.0], prompts=w.POS[:2],
              target_tokens=[5], contrast_tokens=[6], progress=False)
    group = _PartnerFailed()
    with pytest.raises(RuntimeError, match=r"1 other rank\(s\) failed during the sweep; see their errors"):
        sweep(m, **kw, group=group)
    assert len(group.reduced) == 1 and group.reduced[0].tolist() == [0.0]  # only "did I fail?": no scores sent
    real = cell_scoring.CellScorer.cells

    def fail_steered(self, specs, **k):
        if specs != [None]:
            raise ValueError("this rank's cells failed")
        return real(self, specs, **k)

    monkeypatch.setattr(cell_scoring.CellScorer, "cells", fail_steered)
    group = _PartnerFailed()
    with pytest.raises(ValueError, match="this rank's cells failed"):  # its own error, after telling the others
        sweep(m, **kw, group=group)
    assert len(group.reduced) == 1 and group.reduced[0].tolist() == [1.0]


def test_split_by_length_balances_counts_and_tokens():
    from mlx_steer.distributed import split_by_length

    lengths = [3, 50, 7, 7, 12, 40, 5, 9, 30, 2, 11]
    shards = split_by_length(lengths, 2)
    assert sorted(shards[0] + shards[1]) == list(range(len(lengths)))
    assert abs(len(shards[0]) - len(shards[1])) <= 1
    tokens = [sum(lengths[i] for i in s) for s in shards]
    assert abs(tokens[0] - tokens[1]) <= max(lengths) // 2
    with pytest.raises(ValueError, match="1 items cannot be split over 2 ranks"):
        split_by_length([4], 2)


def test_summed_moments_give_the_single_process_directions():
    from mlx_steer.extraction import methods
    from mlx_steer.distributed import ContrastMoments

    rng = np.random.default_rng(0)
    pos, neg = rng.standard_normal((9, 16)).astype(np.float32) + 1, rng.standard_normal((9, 16)).astype(np.float32)
    halves = [ContrastMoments.of(pos[s], neg[s], paired=True) for s in (slice(0, 4), slice(4, 9))]
    flat = halves[0].pack() + halves[1].pack()
    total = ContrastMoments.unpack(flat, 16, paired=True)
    np.testing.assert_allclose(total.direction("mean_diff"), methods.mean_difference(pos, neg), atol=1e-6)
    np.testing.assert_allclose(total.direction("pca"), methods.pca_direction(pos, neg), atol=1e-6)
    with pytest.raises(ValueError, match="every pos - neg difference is zero"):
        ContrastMoments.of(pos, pos, paired=True).direction("pca")
