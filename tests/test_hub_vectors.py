"""Vectors by hub id and vector packs. Each test builds a Hugging Face hub cache in a temp dir, laid out
as huggingface_hub writes it (``models--org--name/refs/<ref>`` holding a commit hash,
``snapshots/<hash>/<file>`` linking into ``blobs/<sha256>``), points huggingface_hub at it and at a
closed local port for the hub itself (nothing can be downloaded), and checks a load by id against
loading the same file from its local path (values and every metadata field)."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import numpy as np
import pytest

import mlx_steer as ms
from mlx_steer.cli import main
from mlx_steer.evaluate.table import EvalRow, EvalTable
from mlx_steer.vectors.vector_card import VectorCard

from torch_fixtures import BACKENDS, load_torch, torch_models  # noqa: F401

COMMIT_A, COMMIT_B = "a" * 40, "b" * 40
POS = ["I love this wonderful day", "happy people walk in the sun"]
NEG = ["I hate this terrible day", "sad people walk in the rain"]


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty hub cache that huggingface_hub reads, online but with no hub to reach."""
    from huggingface_hub import constants

    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: connection refused
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))  # for subprocesses
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return cache


def put(cache: Path, repo_id: str, files: dict[str, Path], *, commit: str = COMMIT_A, refs: tuple[str, ...] = ("main",)):
    """Place ``files`` (name in the repo: local file) as commit ``commit`` of ``repo_id``."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    for ref in refs:
        (repo / "refs" / ref).write_text(commit)
    for name, src in files.items():
        data = src.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))


def same(a: ms.SteeringVector, b: ms.SteeringVector) -> None:
    """Equal values (bitwise), site order and every metadata field."""
    assert a.sites == b.sites
    for s in a.sites:
        np.testing.assert_array_equal(a[s], b[s])
        assert a[s].dtype == b[s].dtype
    for field in ("hidden_size", "hook_point", "dtype", "created_by", "model_id", "method", "read_positions",
                  "calibration"):
        assert getattr(a, field) == getattr(b, field), field
    assert dict(a.extra) == dict(b.extra)


def vector(seed: int, sites=("model.layers.1", "model.layers.2"), d: int = 16, **fields) -> ms.SteeringVector:
    rng = np.random.default_rng(seed)
    return ms.SteeringVector({s: rng.standard_normal(d).astype(np.float32) for s in sites}, **fields)


# -- by id -----------------------------------------------------------------------------------------
def test_load_by_id_equals_the_local_file(hub, tmp_path):
    v = vector(0, method="mean_diff", model_id="HuggingFaceTB/SmolLM2-135M-Instruct", read_positions="last",
               extra={"note": "x"})
    local = ms.save_vector(v, tmp_path / "happy.safetensors")
    put(hub, "acme/happy", {"happy.safetensors": local})
    got = ms.load_vector("acme/happy")
    same(got, ms.load_vector(local))
    same(got, v)


def test_revision_pins_a_commit_or_tag(hub, tmp_path):
    old, new = vector(1), vector(2)
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    put(hub, "acme/v", {"v.safetensors": ms.save_vector(old, tmp_path / "old" / "v.safetensors")}, commit=COMMIT_A,
        refs=("v1",))
    put(hub, "acme/v", {"v.safetensors": ms.save_vector(new, tmp_path / "new" / "v.safetensors")}, commit=COMMIT_B)
    same(ms.load_vector("acme/v"), new)  # main
    same(ms.load_vector("acme/v", revision=COMMIT_A), old)
    same(ms.load_vector("acme/v", revision="v1"), old)
    with pytest.raises(FileNotFoundError, match=r"'acme/v' at revision 'v2' is not in the hub cache"):
        ms.load_vector("acme/v", revision="v2")


def test_filename_and_name_choose_a_file(hub, tmp_path):
    a, b = vector(3), vector(4)
    put(hub, "acme/two", {"a.safetensors": ms.save_vector(a, tmp_path / "a.safetensors"),
                          "sub/b.safetensors": ms.save_vector(b, tmp_path / "b.safetensors")})
    with pytest.raises(ValueError, match=r"hub repo acme/two holds 2 vector files \(a.safetensors, "
                                         r"sub/b.safetensors\); choose one with filename= or name="):
        ms.load_vector("acme/two")
    same(ms.load_vector("acme/two", filename="sub/b.safetensors"), b)
    same(ms.load_vector("acme/two", name="a"), a)
    same(ms.load_vector("acme/two", name="b"), b)
    with pytest.raises(ValueError, match=r"no vector file 'c.safetensors'; valid: a.safetensors, sub/b.safetensors"):
        ms.load_vector("acme/two", filename="c.safetensors")
    with pytest.raises(ValueError, match=r"no vector named 'c'; valid: a, b"):
        ms.load_vector("acme/two", name="c")
    with pytest.raises(ValueError, match="filename= or name=, not both"):
        ms.load_vector("acme/two", name="a", filename="a.safetensors")


def test_a_repo_without_vectors_and_a_card_not_ours(hub, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    put(hub, "acme/a-model", {"config.json": tmp_path / "config.json"})
    with pytest.raises(ValueError, match=r"^hub repo acme/a-model holds no vector file \(.safetensors or .gguf\)"):
        ms.load_vector("acme/a-model")
    (tmp_path / "README.md").write_text("---\nlicense: mit\n---\n# someone's vectors\n")
    v = vector(13)
    put(hub, "acme/theirs", {"README.md": tmp_path / "README.md",
                             "happy.safetensors": ms.save_vector(v, tmp_path / "happy.safetensors")})
    same(ms.load_vector("acme/theirs", name="happy"), v)  # names from file stems; their card is not read


def test_gguf_control_vector_by_id(hub, tmp_path):
    pytest.importorskip("gguf")
    from mlx_steer.vectors.gguf_vector import export_gguf, import_gguf

    path = export_gguf(vector(5), tmp_path / "happy.gguf", model_hint="llama")  # repeng's layout
    put(hub, "someone/happy-control", {"happy.gguf": path})
    got = ms.load_vector("someone/happy-control")
    same(got, import_gguf(path))
    assert got.extra["model_hint"] == "llama" and got.sites == ("model.layers.1", "model.layers.2")


@pytest.mark.parametrize("backend", BACKENDS)
def test_by_id_with_a_model_checks_and_ports_like_the_file(hub, tmp_path, backend, shared_models, torch_models):
    model = (shared_models if backend == "mlx" else torch_models)("gpt2")
    local = ms.save_vector(ms.extract(model, POS, NEG, sites=["layers.1"]), tmp_path / "v.safetensors")
    put(hub, "acme/gpt2-vec", {"v.safetensors": local})
    other = (torch_models if backend == "mlx" else shared_models)("gpt2")  # the other backend's paths
    same(ms.load_vector("acme/gpt2-vec", model=other), ms.load_vector(local, model=other))
    assert ms.load_vector("acme/gpt2-vec", model=other).sites == (other.resolve("layers.1").path,)


# -- not there -------------------------------------------------------------------------------------
def test_offline_and_not_cached_fails_at_once_naming_the_id(hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match=r"vector repo 'acme/missing' is not in the hub cache and "
                                                r"HF_HUB_OFFLINE is set"):
        ms.load_vector("acme/missing")
    assert time.perf_counter() - start < 1.0


def test_no_network_and_not_cached_fails_fast_naming_the_id(hub):
    start = time.perf_counter()  # online, but the hub's address refuses connections
    with pytest.raises(FileNotFoundError, match=r"vector repo 'acme/missing' is not in the hub cache and could "
                                                r"not be downloaded \(.*\); check the id"):
        ms.load_vector("acme/missing")
    assert time.perf_counter() - start < 5.0


def test_offline_file_not_in_the_cached_snapshot(hub, tmp_path, monkeypatch):
    put(hub, "acme/one", {"a.safetensors": ms.save_vector(vector(6), tmp_path / "a.safetensors")})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"file 'b.safetensors' of vector repo 'acme/one'"):
        ms.load_vector("acme/one", filename="b.safetensors")


@pytest.mark.parametrize("text", ["happy", "a/b/c", "acme/x.safetensors", "acme/../x", "-acme/x", "acme--x/y"])
def test_neither_a_path_nor_a_repo_id(hub, text):
    with pytest.raises(FileNotFoundError, match=rf"no vector file at {text}, and '{text}' is not a hub repo id; "
                                                r"valid: an existing .safetensors or .gguf file, a vector-pack "
                                                r"folder, or a hub repo id 'org/name'"):
        ms.load_vector(text)


def test_a_local_path_wins_over_a_repo_id(hub, tmp_path, monkeypatch):
    on_disk, in_cache = vector(7), vector(8)
    (tmp_path / "acme").mkdir()
    ms.save_vector(on_disk, tmp_path / "acme" / "v.safetensors")
    put(hub, "acme/v.safetensors", {"v.safetensors": ms.save_vector(in_cache, tmp_path / "c.safetensors")})
    monkeypatch.chdir(tmp_path)
    same(ms.load_vector("acme/v.safetensors"), on_disk)
    with pytest.raises(ValueError, match=r"revision='v1' is for hub repo ids; acme is a local path"):
        ms.load_vector("acme", revision="v1")


# -- packs -----------------------------------------------------------------------------------------
def test_pack_round_trip_by_folder_and_by_id(hub, tmp_path):
    happy, calm = vector(9, method="mean_diff"), vector(10, sites=("model.layers.3",), method="pca")
    table = EvalTable((EvalRow("steering", 1, 0.0, ab_probability=0.5), EvalRow("steering", 1, 4.0,
                                                                                 ab_probability=float("nan"))),
                      ("ab_probability",))
    card = VectorCard(base_model="HuggingFaceTB/SmolLM2-135M-Instruct", method="mean difference, last token",
                      data="64 happy/sad prompt pairs", evaluation=table, tags=("sentiment",), license="mit")
    folder = ms.save_vector_pack(tmp_path / "pack", {"happy": happy, "calm": calm}, card=card)
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "calm.safetensors", "happy.safetensors"]
    same(ms.load_vector(folder / "happy.safetensors"), happy)
    same(ms.load_vector(folder, name="happy"), happy)
    same(ms.load_vector(folder, name="calm"), calm)
    with pytest.raises(ValueError, match=r"holds 2 vector files"):
        ms.load_vector(folder)

    text = (folder / "README.md").read_text()
    front = text.split("---\n")[1]
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct\n" in front and "license: mit\n" in front
    assert "- mlx-steer\n- steering-vector\n- sentiment\n" in front
    for section in ("## Base model", "## Vectors and sites", "## Method", "## Data", "## Evaluation"):
        assert f"\n{section}\n" in text, section
    assert "| happy | happy.safetensors | model.layers.1, model.layers.2 | output | 16 | mean_diff |" in text
    assert "| steering | 1 | 0 | 0.5 |\n| steering | 1 | 4 |  |" in text  # NaN: an empty cell

    want = VectorCard(base_model=card.base_model, method=card.method, data=card.data, license="mit",
                      tags=("sentiment",), vectors={"happy": "happy.safetensors", "calm": "calm.safetensors"},
                      evaluation=[{"vector": "steering", "layer": 1, "strength": 0.0, "ab_probability": 0.5},
                                  {"vector": "steering", "layer": 1, "strength": 4.0, "ab_probability": None}])
    assert ms.load_vector_card(folder) == want

    put(hub, "acme/moods", {p.name: p for p in folder.iterdir()})
    same(ms.load_vector("acme/moods", name="calm"), calm)
    same(ms.load_vector("acme/moods", filename="happy.safetensors"), happy)
    assert ms.load_vector_card("acme/moods") == want


def test_pack_refusals_write_nothing(tmp_path):
    v = vector(11)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"busy is not empty; give an empty or new folder, or overwrite=True"):
        ms.save_vector_pack(busy, {"v": v})
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]
    for vectors, message in (({"bad name": v}, r"vector name 'bad name' must be 1-64 letters"),
                             ({"v": np.ones(3)}, r"vector 'v' must be a SteeringVector, got ndarray"),
                             ({}, r"non-empty mapping"), ({"A": v, "a": v}, r"differ only in case")):
        with pytest.raises(ValueError, match=message):
            ms.save_vector_pack(tmp_path / "new", vectors)
        assert not (tmp_path / "new").exists()
    with pytest.raises(ValueError, match=r"VectorCard base_model must be a string or None, got int"):
        VectorCard(base_model=3)  # type: ignore[arg-type]
    ms.save_vector_pack(busy, v, overwrite=True)  # a lone vector is named "vector"
    same(ms.load_vector(busy), v)
    assert (busy / "keep.txt").read_text() == "mine"


def test_a_card_that_is_not_a_packs(tmp_path):
    (tmp_path / "README.md").write_text("---\nlicense: mit\n---\n# a model\n")
    with pytest.raises(ValueError, match=r"not a vector pack's card: .*no mlx_steer block .*\(keys: license\)"):
        ms.load_vector_card(tmp_path)


# -- command line ----------------------------------------------------------------------------------
def test_cli_vector_by_id_from_the_cache(hub, tmp_path, tiny_dir, shared_models, capsys, monkeypatch):
    model = shared_models("llama")
    happy = ms.extract(model, POS, NEG, sites=["layers.1"])
    calm = ms.extract(model, NEG, POS, sites=["layers.2"])
    folder = ms.save_vector_pack(tmp_path / "pack", {"happy": happy, "calm": calm})
    local = tmp_path / "calm.safetensors"
    ms.save_vector(calm, local)
    put(hub, "acme/moods", {p.name: p for p in folder.iterdir()}, refs=("main", "v1"))

    def generate(vector: str) -> str:
        assert main(["generate", "I think that", "--model", str(tiny_dir("llama")), "--vector", vector,
                     "--strength", "4", "--max-tokens", "6"]) == 0
        out = capsys.readouterr().out
        assert f"from {vector}\n" in out
        return out.replace(f"from {vector}\n", "from VECTOR\n")

    expected = generate(str(local))
    assert generate("acme/moods:calm") == expected
    assert generate("acme/moods@v1:calm") == expected
    assert generate(f"{folder}:calm") == expected

    assert main(["inspect", "acme/moods:happy"]) == 0
    assert "model.layers.1" in capsys.readouterr().out
    assert main(["inspect", "acme/moods"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: hub repo acme/moods holds 2 vector files") and err.count("\n") == 1
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["inspect", "acme/elsewhere"]) == 2
    assert "vector repo 'acme/elsewhere' is not in the hub cache and HF_HUB_OFFLINE is set" in capsys.readouterr().err


def test_serve_vector_by_id(hub, tmp_path, capsys, monkeypatch):
    """serve resolves each --vector before loading the model: a cached id passes (the error is then the
    missing model's), an id neither cached nor reachable offline is the one-line error naming it."""
    pytest.importorskip("fastapi", reason="serve needs the serve extra")
    pytest.importorskip("uvicorn", reason="serve needs the serve extra")
    put(hub, "acme/v", {"v.safetensors": ms.save_vector(vector(12), tmp_path / "v.safetensors")})
    no_model = str(tmp_path / "no-model")
    assert main(["serve", "--model", no_model, "--vector", "love=acme/v"]) == 2
    assert capsys.readouterr().err == f"error: no such file: {no_model}\n"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["serve", "--model", no_model, "--vector", "love=acme/w"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: vector repo 'acme/w' is not in the hub cache and HF_HUB_OFFLINE is set")
    assert err.count("\n") == 1
