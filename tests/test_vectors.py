"""SteeringVector arithmetic and files, against numpy oracles."""

import numpy as np
import pytest

import mlx_steer as ms
from mlx_steer import SteeringVector
from mlx_steer.vectors.vector_file import load_vector, save_vector

rng = np.random.default_rng(0)
A = {"model.layers.1": rng.normal(size=8).astype(np.float32), "model.layers.2": rng.normal(size=8).astype(np.float32)}
B = {k: rng.normal(size=8).astype(np.float32) for k in A}


def test_arithmetic_matches_numpy():
    a, b = SteeringVector(A, method="mean_diff"), SteeringVector(B)
    for site in A:
        assert np.array_equal((a + b)[site], A[site] + B[site])
        assert np.array_equal((a - b)[site], A[site] - B[site])
        assert np.array_equal((2 * a)[site], A[site] * np.float32(2))
        assert np.array_equal((a * 2)[site], A[site] * np.float32(2))
        assert np.array_equal((a / 4)[site], A[site] / np.float32(4))
        assert np.array_equal((-a)[site], -A[site])
        np.testing.assert_allclose(np.linalg.norm(a.normalized()[site]), 1.0, rtol=1e-6)
        assert abs(float(a.orthogonalized(b)[site] @ B[site])) < 1e-5
    assert a.norms() == {k: float(np.linalg.norm(v)) for k, v in A.items()}
    assert a.sites == tuple(A) and len(a) == 2
    with pytest.raises(ValueError, match="differ in sites"):
        _ = a + SteeringVector({"model.layers.1": A["model.layers.1"]})
    assert a.scaled_per_site({"model.layers.2": 3.0})["model.layers.2"].tolist() == (A["model.layers.2"] * 3).tolist()


def test_validation_and_read_only():
    with pytest.raises(ValueError, match="different sizes"):
        SteeringVector({"a": np.ones(3), "b": np.ones(4)})
    with pytest.raises(ValueError, match="non-finite"):
        SteeringVector({"a": np.array([1.0, np.inf])})
    with pytest.raises(ValueError, match="unknown hook point"):
        SteeringVector(A, hook_point="middle")
    v = SteeringVector(A)
    with pytest.raises(ValueError):
        v["model.layers.1"][0] = 3.0


def test_file_round_trip(tmp_path):
    v = SteeringVector(A, hook_point="input", model_id="tiny", method="pca", read_positions="last", extra={"note": "x"})
    path = save_vector(v, tmp_path / "v.safetensors")
    w = load_vector(path)
    for site in A:
        assert np.array_equal(w[site], A[site])
    for f in ("hook_point", "model_id", "method", "read_positions", "dtype", "hidden_size", "created_by"):
        assert getattr(w, f) == getattr(v, f)
    assert dict(w.extra) == {"note": "x"}
    assert b"pickle" not in path.read_bytes()


def test_file_errors(tmp_path, shared_models):
    with pytest.raises(FileNotFoundError, match="no vector file"):
        load_vector(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a file at all")
    with pytest.raises(ValueError, match="not a safetensors file"):
        load_vector(junk)
    m = shared_models("llama")
    bad = SteeringVector({"model.layers.1": np.ones(8), "model.layers.9": np.ones(8)}, model_id="other")
    path = save_vector(bad, tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match=r"hidden size: file 8, model 64; sites unknown to the model: model\.layers\.9; model id"):
        load_vector(path, model=m)


def test_vector_files_load_on_the_other_layer_naming(tmp_path, shared_models):
    """gpt2 in mlx-lm is `model.h.i`; in transformers `transformer.h.i`: both load."""
    m = shared_models("gpt2")
    v = SteeringVector({"transformer.h.2": np.ones(m.hidden_size)})
    w = load_vector(save_vector(v, tmp_path / "v.safetensors"), model=m)
    assert w.sites == ("model.h.2",)


def test_steer_with_a_vector_equals_explicit_interventions(shared_models):
    from mlx_steer.engine import interventions as iv

    m = shared_models("qwen2")
    v = SteeringVector({"model.layers.1": rng.normal(size=m.hidden_size), "model.layers.2": rng.normal(size=m.hidden_size)})
    with m.steer(v, scale=2.0):
        a = np.array(m.run("I love this").logits)
    b = np.array(m.run("I love this", interventions={s: iv.add_vector(v[s], scale=2.0) for s in v.sites}).logits)
    assert np.array_equal(a, b)
    weighted = v.to_interventions(scale=2.0, weights={"model.layers.2": 0.5})
    assert weighted["model.layers.2"].scale == 1.0 and weighted["model.layers.1"].scale == 2.0
