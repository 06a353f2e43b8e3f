"""SteeringVector: arithmetic, transforms and validation against hand-computed numpy oracles."""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys

import numpy as np
import pytest

from mlx_steer.engine import interventions as iv
from mlx_steer.vectors.steering_vector import SteeringVector

D = 16
SITES = ("model.layers.3", "model.layers.10", "model.layers.7")  # deliberately not sorted
rng = np.random.default_rng(0)
A = {s: rng.normal(size=D).astype(np.float32) for s in SITES}
B = {s: rng.normal(size=D).astype(np.float32) for s in SITES}


def vec(dirs=A, **kw) -> SteeringVector:
    return SteeringVector(dict(dirs), **kw)


# -- arithmetic ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "op, oracle",
    [
        (lambda a, b: a + b, lambda x, y: x + y),
        (lambda a, b: a - b, lambda x, y: x - y),
        (lambda a, b: a * 2.5, lambda x, y: x * np.float32(2.5)),
        (lambda a, b: 2.5 * a, lambda x, y: x * np.float32(2.5)),
        (lambda a, b: np.float32(-3) * a, lambda x, y: x * np.float32(-3)),
        (lambda a, b: a / 3.0, lambda x, y: x / np.float32(3.0)),
        (lambda a, b: -a, lambda x, y: -x),
        (lambda a, b: 2 * a - b / 4, lambda x, y: x * np.float32(2) - y / np.float32(4)),
    ],
    ids=["add", "sub", "mul", "rmul", "numpy-scalar-rmul", "div", "neg", "combo"],
)
def test_arithmetic_is_exact_per_site(op, oracle):
    out = op(vec(A), vec(B))
    assert isinstance(out, SteeringVector) and out.sites == SITES and out.dtype == "float32"
    for s in SITES:
        expected = oracle(A[s], B[s])
        assert out[s].dtype == np.float32 and np.array_equal(out[s], expected), s


def test_add_accepts_other_site_order_and_keeps_the_left_one():
    right = SteeringVector({s: B[s] for s in reversed(SITES)})
    out = vec(A) + right
    assert out.sites == SITES
    assert all(np.array_equal(out[s], A[s] + B[s]) for s in SITES)


def test_add_mixed_dtypes_promotes():
    out = vec(A) + vec(B).to("float64")
    assert out.dtype == "float64"
    s = SITES[0]
    assert np.array_equal(out[s], A[s].astype(np.float64) + B[s].astype(np.float64))


def test_add_keeps_metadata_both_sides_agree_on():
    a = vec(A, model_id="m", method="pca", read_positions="last", extra={"k": "1", "only": "a"})
    b = vec(B, model_id="m", method="mean_diff", read_positions="last", extra={"k": "1"})
    out = a + b
    assert (out.model_id, out.method, out.read_positions) == ("m", None, "last")
    assert dict(out.extra) == {"k": "1"}


def test_add_with_different_sites_says_which():
    a = vec(A)
    b = SteeringVector({"model.layers.3": B["model.layers.3"], "model.layers.99": B["model.layers.7"]})
    with pytest.raises(ValueError, match=r"differ in sites: only in the left: model\.layers\.10, model\.layers\.7; "
                                         r"only in the right: model\.layers\.99"):
        _ = a + b


def test_add_rejects_other_hook_point_and_shapes():
    with pytest.raises(ValueError, match="different hook points: 'output' and 'input'"):
        _ = vec(A) - vec(B, hook_point="input")
    tensor = {s: np.ones((2, D), np.float32) for s in SITES}
    with pytest.raises(ValueError, match=r"different shapes at model\.layers\.3: \(16,\) vs \(2, 16\)"):
        _ = vec(A) + SteeringVector(tensor)


def test_arithmetic_rejects_bad_operands():
    v = vec(A)
    with pytest.raises(TypeError):
        _ = v * "2"
    with pytest.raises(TypeError):
        _ = v + A  # a plain dict is not a vector
    with pytest.raises(ValueError, match="divide a SteeringVector by 0"):
        _ = v / 0
    with pytest.raises(ValueError, match="multiplier must be a finite number, got nan"):
        _ = v * float("nan")


# -- norms and geometry --------------------------------------------------------------------------
def test_norms_and_normalized():
    v = vec(A)
    assert v.norms() == {s: float(np.linalg.norm(A[s])) for s in SITES}
    unit = v.normalized()
    for s in SITES:
        assert abs(np.linalg.norm(unit[s].astype(np.float64)) - 1.0) < 1e-6
        np.testing.assert_allclose(unit[s], A[s] / np.linalg.norm(A[s].astype(np.float64)), rtol=1e-6)


def test_normalized_scales_a_tensor_as_a_whole():
    t = rng.normal(size=(3, D)).astype(np.float32)
    unit = SteeringVector({"model.layers.1": t}).normalized()["model.layers.1"]
    assert abs(np.sqrt((unit.astype(np.float64) ** 2).sum()) - 1.0) < 1e-6
    np.testing.assert_allclose(unit, t / np.linalg.norm(t.astype(np.float64)), rtol=1e-6)


def test_normalized_rejects_zero_direction():
    with pytest.raises(ValueError, match=r"cannot normalize zero directions at: model\.layers\.7"):
        vec({**A, "model.layers.7": np.zeros(D)}).normalized()


def test_orthogonalized_against_vector_matches_oracle():
    out = vec(A).orthogonalized(vec(B))
    for s in SITES:
        v, u = A[s].astype(np.float64), B[s].astype(np.float64)
        expected = v - (v @ u) / (u @ u) * u
        np.testing.assert_allclose(out[s], expected, rtol=1e-5, atol=1e-6)
        cos = out[s].astype(np.float64) @ u / (np.linalg.norm(out[s]) * np.linalg.norm(u))
        assert abs(cos) < 1e-6


def test_orthogonalized_against_one_array_and_for_tensor_rows():
    u = rng.normal(size=D).astype(np.float32)
    t = rng.normal(size=(4, D)).astype(np.float32)
    out = SteeringVector({"model.layers.1": t, "model.layers.2": t * 2}).orthogonalized(u)
    for s in out.sites:
        assert out[s].shape == (4, D)
        dots = out[s].astype(np.float64) @ u.astype(np.float64)
        assert np.all(np.abs(dots) < 1e-5 * np.linalg.norm(out[s], axis=1) * np.linalg.norm(u))


def test_orthogonalized_errors():
    with pytest.raises(ValueError, match=r"other has no direction at: model\.layers\.10, model\.layers\.7"):
        vec(A).orthogonalized(SteeringVector({"model.layers.3": B["model.layers.3"]}))
    with pytest.raises(ValueError, match="against a zero direction at 'model.layers.3'"):
        vec(A).orthogonalized(np.zeros(D))
    with pytest.raises(ValueError, match=r"must have shape \(16,\), got \(8,\)"):
        vec(A).orthogonalized(np.ones(8))


# -- container and transforms --------------------------------------------------------------------
def test_container_protocol():
    v = vec(A)
    assert v.sites == SITES and len(v) == 3 and list(v) == list(SITES)
    assert "model.layers.10" in v and "model.layers.4" not in v
    assert np.array_equal(v["model.layers.10"], A["model.layers.10"])
    with pytest.raises(KeyError, match="no direction at 'model.layers.4'; sites: model.layers.3, model.layers.10"):
        v["model.layers.4"]


def test_replace_revalidates_and_keeps_other_fields():
    v = vec(A, method="pca", model_id="m")
    w = v.replace(method="probe")
    assert (w.method, w.model_id, w.created_by) == ("probe", "m", v.created_by)
    assert all(np.array_equal(w[s], v[s]) for s in SITES)
    with pytest.raises(ValueError, match="unknown hook point 'middle'"):
        v.replace(hook_point="middle")


def test_to_casts_every_array():
    v64 = vec(A).to("float64")
    assert v64.dtype == "float64" and all(np.array_equal(v64[s], A[s].astype(np.float64)) for s in SITES)
    v16 = vec(A).to(np.float16)
    assert v16.dtype == "float16" and all(np.array_equal(v16[s], A[s].astype(np.float16)) for s in SITES)
    with pytest.raises(ValueError, match="unsupported dtype 'int8'; valid: float16, float32, float64"):
        vec(A).to("int8")
    with pytest.raises(ValueError, match="non-finite values .* as float16"):
        (vec(A) * 1e6).to("float16")


def test_select_with_sites_and_scaled_per_site():
    v = vec(A)
    picked = v.select(["model.layers.7", "model.layers.3"])
    assert picked.sites == ("model.layers.7", "model.layers.3")
    assert v.select("model.layers.10").sites == ("model.layers.10",)
    with pytest.raises(ValueError, match=r"no direction at 'model.layers.5'; this vector has"):
        v.select(["model.layers.5"])
    with pytest.raises(ValueError, match="needs at least one site"):
        v.select([])

    renamed = v.with_sites({"model.layers.10": "model.h.10"})
    assert renamed.sites == ("model.layers.3", "model.h.10", "model.layers.7")
    assert np.array_equal(renamed["model.h.10"], A["model.layers.10"])
    with pytest.raises(ValueError, match="several sites at: model.layers.7"):
        v.with_sites({"model.layers.3": "model.layers.7"})

    scaled = v.scaled_per_site({"model.layers.10": 0.5, "model.layers.7": -2.0})
    assert np.array_equal(scaled["model.layers.3"], A["model.layers.3"])
    assert np.array_equal(scaled["model.layers.10"], A["model.layers.10"] * np.float32(0.5))
    assert np.array_equal(scaled["model.layers.7"], A["model.layers.7"] * np.float32(-2.0))
    with pytest.raises(ValueError, match="no direction at 'model.layers.1'"):
        v.scaled_per_site({"model.layers.1": 2.0})


def test_to_interventions_keys_carry_the_hook_point():
    spec = vec(A, hook_point="input").to_interventions(scale=3.0, positions="last", weights={"model.layers.7": 0.5})
    assert list(spec) == [f"{s}:input" for s in SITES]
    for s in SITES:
        add = spec[f"{s}:input"]
        assert isinstance(add, iv.AddVector) and np.array_equal(add.vector, A[s])
        assert add.scale == (1.5 if s == "model.layers.7" else 3.0) and add.positions.kind == "last"
    assert list(vec(A).to_interventions()) == list(SITES)


# -- validation and immutability -----------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(directions={}), "non-empty mapping"),
        (dict(directions={"a": np.ones(3), "b": np.ones(4)}), r"different sizes \(last dim\): a=3, b=4"),
        (dict(directions={"a": np.ones((2, 2, 2))}), r"shape \(D,\) or \(n, D\).*\(2, 2, 2\)"),
        (dict(directions={"a": np.array([1.0, np.nan, np.inf])}), "2 non-finite values"),
        (dict(directions={"a": "abc"}), r"must be a numeric array, got text \(<U3\)"),
        (dict(directions={"model.layers.1:input": np.ones(3)}), "carries a hook point"),
        (dict(directions={"": np.ones(3)}), "non-empty strings"),
        (dict(directions={"a": np.ones(3)}, hook_point="middle"), "unknown hook point 'middle'; valid: output, input"),
        (dict(directions={"a": np.ones(3)}, hidden_size=4), "hidden_size 4 does not match the directions' width 3"),
        (dict(directions={"a": np.ones(3)}, method=3), "method must be a string or None, got 3"),
        (dict(directions={"a": np.ones(3)}, extra={"k": 1}), r"bad entries: 'k': 1"),
    ],
)
def test_invalid_vectors_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SteeringVector(**kwargs)


def test_arrays_are_read_only_copies():
    src = {s: a.copy() for s, a in A.items()}
    v = SteeringVector(src)
    src["model.layers.3"][0] += 1.0
    assert np.array_equal(v["model.layers.3"], A["model.layers.3"])
    with pytest.raises(ValueError, match="read-only"):
        v["model.layers.3"][0] = 0.0
    with pytest.raises(TypeError):
        v.directions["model.layers.3"] = np.zeros(D)  # type: ignore[index]
    with pytest.raises(AttributeError):
        v.method = "pca"  # type: ignore[misc]


def test_inferred_fields_and_defaults():
    import mlx_steer

    v = SteeringVector({"a": [1, 2, 3]})
    assert v.hidden_size == 3 and v.dtype == "float32" and v["a"].dtype == np.float32
    assert v.hook_point == "output" and v.created_by == mlx_steer.__version__ and v.created_by
    assert dict(v.extra) == {}


def test_equality_copy_and_pickle():
    v = vec(A, method="pca", extra={"k": "v"})
    assert v == vec(A, method="pca", extra={"k": "v"})
    assert v != vec(A, method="probe", extra={"k": "v"})
    assert v != vec(B, method="pca", extra={"k": "v"})
    assert pickle.loads(pickle.dumps(v)) == v and copy.deepcopy(v) == v
    with pytest.raises(TypeError):
        hash(v)


def test_module_imports_neither_mlx_nor_torch():
    code = (
        "import sys, mlx_steer.vectors.steering_vector, mlx_steer.vectors.vector_file, mlx_steer.vectors.gguf_vector\n"
        "bad = [m for m in ('mlx', 'torch') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_created_by_is_the_package_version(monkeypatch):
    """One version source: a vector records mlx_steer.__version__ (not the version of the unrelated
    distribution named mlx-steer), read when the vector is made."""
    import mlx_steer

    assert SteeringVector({"model.layers.0": np.ones(4)}).created_by == mlx_steer.__version__
    monkeypatch.setattr(mlx_steer, "__version__", "9.8.7")
    assert SteeringVector({"model.layers.0": np.ones(4)}).created_by == "9.8.7"
