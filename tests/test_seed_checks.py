"""Seeds are checked where they enter, on both backends: every call that takes one refuses a seed
outside 0..2**64-1 (the range MLX's, torch's and numpy's generators all take), a bool or a non-int,
naming the value and the range, before anything runs; the command line refuses it as a usage
error (exit 2, no traceback) before the model loads. The largest valid seed works everywhere."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
import torch

import mlx_steer as ms
from mlx_steer import evaluate as ev
from mlx_steer.cli import main
from mlx_steer.sae import train_topk_sae
from torch_fixtures import *  # noqa: F403  (fixtures)
from torch_fixtures import BACKENDS, assert_untouched, snapshot

ITEMS = [{"question": "Is it good?\n\nChoices:\n (A) Yes\n (B) No", "answer_matching": "(A)",
          "answer_not_matching": "(B)"}]
OUT_OF_RANGE = [(-1, "seed -1 out of range; valid: 0..2**64-1"),
                (2**64, "seed 18446744073709551616 out of range; valid: 0..2**64-1"),
                (-(2**63) - 1, "seed -9223372036854775809 out of range; valid: 0..2**64-1")]
SEED_MAX = 2**64 - 1
NOT_INTS = [(True, "seed must be an int in 0..2**64-1, got True"), (1.0, "seed must be an int in 0..2**64-1, got 1.0"),
            ("3", "seed must be an int in 0..2**64-1, got '3'")]


def test_the_range_is_what_every_generator_takes():
    """The oracle for the range: MLX, torch and numpy each take both ends and refuse just past them."""
    from mlx_steer.engine import limits

    assert limits.SEED_MAX == SEED_MAX
    for s in (0, SEED_MAX):
        mx.random.seed(s)
        mx.random.key(s)
        torch.Generator().manual_seed(s)
        np.random.default_rng(s)
    refused = (TypeError, ValueError, OverflowError, RuntimeError)
    for s in (-1, SEED_MAX + 1):
        with pytest.raises(refused):
            mx.random.seed(s)
    with pytest.raises(refused):
        np.random.default_rng(-1)  # torch would take -1 ...
    with pytest.raises(refused):
        torch.Generator().manual_seed(SEED_MAX + 1)  # ... and numpy 2**64


def _calls(m):
    vec = np.ones(m.hidden_size, np.float32)
    return {
        "generate": lambda s: m.generate("I think", max_tokens=2, temp=1.0, seed=s),
        "stream_generate": lambda s: m.stream_generate("I think", max_tokens=2, temp=1.0, seed=s),
        "batch_generate": lambda s: m.batch_generate(["I think", "you"], max_tokens=2, temp=1.0, seed=s),
        "evaluate": lambda s: ev.evaluate(m, vector=vec, layers=[1], strengths=[0.0, 2.0], items=ITEMS, seed=s,
                                          progress=False),
    }


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("call", ["generate", "stream_generate", "batch_generate", "evaluate"])
@pytest.mark.parametrize("seed, message", OUT_OF_RANGE + NOT_INTS)
def test_library_calls_refuse_bad_seeds_by_name(fresh_models, backend, call, seed, message):
    m = fresh_models(backend, "llama")
    before = snapshot(m)
    with pytest.raises(ValueError) as exc:
        _calls(m)[call](seed)
    assert str(exc.value) == message
    assert_untouched(m, before)


@pytest.mark.parametrize("seed, message", OUT_OF_RANGE + NOT_INTS)
def test_split_and_sae_training_refuse_bad_seeds(seed, message):
    items = ev.as_items(ITEMS * 4)
    with pytest.raises(ValueError) as exc:
        ev.split_items(items, held_out=1, seed=seed)
    assert str(exc.value) == message
    acts = np.random.default_rng(0).standard_normal((40, 8)).astype(np.float32)
    with pytest.raises(ValueError) as exc:
        train_topk_sae(acts, features=8, k=2, site="layers.1", epochs=1, seed=seed)
    assert str(exc.value) == message


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_largest_seed_samples_reproducibly(backend_models, backend):
    m = backend_models(backend, "llama")
    first = m.generate_tokens("I think", max_tokens=4, temp=1.0, seed=SEED_MAX)
    assert first == m.generate_tokens("I think", max_tokens=4, temp=1.0, seed=SEED_MAX)
    assert m.batch_generate(["I think"], max_tokens=4, temp=1.0, seed=SEED_MAX).token_ids[0] == first
    # a numpy integer seed (what a seed drawn with numpy is) samples as the same int does
    assert m.generate_tokens("I think", max_tokens=4, temp=1.0, seed=np.uint64(SEED_MAX)) == first


# -- the command line ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_dir, shared_models) -> dict:
    d = tmp_path_factory.mktemp("seeds")
    m = shared_models("llama")
    ms.save_vector(ms.extract(m, ["I love it", "great"], ["I hate it", "awful"], sites=["layers.1"]),
                   d / "vec.safetensors")
    (d / "prompts.txt").write_text("The cat sat\nI love the rain\n")
    return {"model": str(tiny_dir("llama")), "vec": str(d / "vec.safetensors"), "prompts": str(d / "prompts.txt"),
            "dir": d}


def _commands(f: dict) -> dict[str, list[str]]:
    return {
        "generate": ["generate", "hi", "--model", f["model"], "--vector", f["vec"], "--temp", "1", "--max-tokens", "2"],
        "evaluate": ["evaluate", "--model", f["model"], "--vector", f["vec"], "--caa", "refusal", "--layers", "1",
                     "--temp", "1", "-o", str(f["dir"] / "never")],
        "sae": ["sae", "train", "--model", f["model"], "--site", "layers.1", "--prompts", f["prompts"],
                "-o", str(f["dir"] / "never-sae")],
    }


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("command", ["generate", "evaluate", "sae"])
@pytest.mark.parametrize("seed, message", [
    ("-1", "seed -1 out of range; valid: 0..2**64-1"),
    ("18446744073709551616", "seed 18446744073709551616 out of range; valid: 0..2**64-1"),
    ("1.5", "expected an integer in 0..2**64-1, got '1.5'"),
])
def test_cli_refuses_bad_seeds_before_loading(files, backend, command, seed, message, capsys, monkeypatch):
    monkeypatch.setattr("mlx_steer.cli.loading.load_model", _no_model)
    argv = ["--backend", backend, *_commands(files)[command], "--seed", seed]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].endswith(f"error: argument --seed: {message}")  # not --strength's
    assert not (files["dir"] / "never").exists()


@pytest.mark.parametrize("backend", BACKENDS)
def test_cli_generate_takes_the_largest_seed(files, backend, capsys):
    argv = ["--backend", backend, *_commands(files)["generate"], "--seed", str(SEED_MAX)]
    assert main(argv) == 0, capsys.readouterr().err
    first = capsys.readouterr().out
    assert main(argv) == 0
    assert capsys.readouterr().out == first  # the seed fixes the samples


def _no_model(*args, **kwargs):
    raise AssertionError("the model was loaded before the seed was checked")
