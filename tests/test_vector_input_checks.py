"""Checks of what users hand in: vector files, GGUF, intervention
input types and extraction methods, each checked against what the file or the math says."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

import mlx_steer as ms
from mlx_steer.engine import interventions as iv
from mlx_steer.extraction import method_table, methods
from mlx_steer.vectors.steering_vector import SteeringVector
from mlx_steer.vectors.vector_file import load_vector, save_vector

D = 8
rng = np.random.default_rng(5)
POS = ["I love this wonderful day", "happy people walk in the sun", "This is great"]
NEG = ["I hate the rain", "This is terrible, awful and sad news", "sad news"]


# -- item 12: GGUF control vectors ---------------------------------------------------------------
def _write_gguf(path, tensors: dict, fields: dict) -> None:
    pytest.importorskip("gguf")
    from test_gguf_vector import write_gguf

    write_gguf(path, tensors, fields)


def test_gguf_with_two_names_for_one_layer_is_an_error(tmp_path):
    from mlx_steer.vectors.gguf_vector import import_gguf

    path = tmp_path / "dup.gguf"
    a, b = np.ones(D, np.float32), np.full(D, 2.0, np.float32)
    _write_gguf(path, {"direction.7": a, "direction.007": b}, {"controlvector.model_hint": ("string", "llama")})
    with pytest.raises(ValueError, match=rf"{path} holds two directions for layer 7: 'direction.7' and 'direction.007'"):
        import_gguf(path)


@pytest.mark.parametrize("fields, message", [
    ({"controlvector.model_hint": ("uint32", 5)}, "metadata controlvector.model_hint must be a string, got uint32"),
    ({"controlvector.layer_count": ("string", "two")}, "metadata controlvector.layer_count must be an integer, got string"),
    ({"controlvector.layer_count": ("int32", -1)}, "metadata controlvector.layer_count must be a non-negative integer, got -1"),
    ({"controlvector.layer_count": ("uint32", 3)}, "metadata controlvector.layer_count is 3, but it holds 1 directions"),
])
def test_gguf_malformed_metadata_names_the_file(tmp_path, fields, message):
    from mlx_steer.vectors.gguf_vector import import_gguf

    path = tmp_path / "bad.gguf"
    _write_gguf(path, {"direction.7": np.ones(D, np.float32)}, fields)
    with pytest.raises(ValueError, match=f"^{path}: {message}"):
        import_gguf(path)


def test_gguf_nan_direction_names_the_file(tmp_path):
    from mlx_steer.vectors.gguf_vector import import_gguf

    path = tmp_path / "nan.gguf"
    _write_gguf(path, {"direction.3": np.array([1.0, np.nan], np.float32)}, {})
    with pytest.raises(ValueError, match=f"^{path}: .*non-finite"):
        import_gguf(path)


# -- item 12: safetensors metadata numbers -------------------------------------------------------
def _meta_file(path, **change) -> None:
    meta = {"format": "mlx_steer.vector", "format_version": "1", "sites": json.dumps(["model.layers.1"]),
            "hidden_size": str(D), "hook_point": "output", "dtype": "float32", "created_by": "0.1.0", **change}
    save_file({"model.layers.1": np.ones(D, np.float32)}, str(path), metadata=meta)


@pytest.mark.parametrize("change, message", [
    ({"hidden_size": "\u00b2"}, r"hidden_size must be a positive integer, got '\u00b2'"),  # str.isdigit() is True
    ({"hidden_size": "\u0668"}, "hidden_size must be a positive integer"),  # an Arabic-Indic 8, int() reads it
    ({"hidden_size": "0"}, "hidden_size must be a positive integer, got '0'"),
    ({"hidden_size": "9"}, "malformed vector file: hidden_size 9 does not match the directions' width 8"),
    ({"dtype": "float64"}, "metadata dtype 'float64' does not match its tensors \\(float32\\)"),
    ({"hook_point": "middle"}, "malformed vector file: unknown hook point 'middle'"),
    ({"sites": "[" * 100_000 + "]" * 100_000}, "metadata 'sites' is not a JSON list of site paths"),  # RecursionError
    ({"sites": '[1, "model.layers.1"]'}, "metadata 'sites' is not a JSON list of site paths"),  # sorted() TypeError
])
def test_malformed_metadata_numbers_name_the_file(tmp_path, change, message):
    path = tmp_path / "v.safetensors"
    _meta_file(path, **change)
    with pytest.raises(ValueError, match=f"^{path}.*{message}"):
        load_vector(path)


# -- item 9: save_vector to .gguf writes a real control vector -----------------------------------
def test_save_vector_gguf_is_a_control_vector(tmp_path):
    gguf = pytest.importorskip("gguf")
    dirs = {f"model.layers.{i}": rng.normal(size=D).astype(np.float32) for i in (2, 5)}
    vec = SteeringVector(dirs)
    path = save_vector(vec, tmp_path / "v.gguf", model_hint="llama")
    r = gguf.GGUFReader(str(path))
    assert bytes(r.get_field("general.architecture").parts[-1]).decode() == "controlvector"
    assert bytes(r.get_field("controlvector.model_hint").parts[-1]).decode() == "llama"
    tensors = {t.name: np.array(t.data) for t in r.tensors}
    assert sorted(tensors) == ["direction.2", "direction.5"]
    for i in (2, 5):
        np.testing.assert_array_equal(tensors[f"direction.{i}"], dirs[f"model.layers.{i}"])
    back = load_vector(path)  # load_vector reads it back, told by content
    assert back.sites == tuple(dirs) and back.extra["model_hint"] == "llama"
    for s in dirs:
        np.testing.assert_array_equal(back[s], dirs[s])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left


def test_save_vector_gguf_hint_from_the_model_folder(tmp_path):
    gguf = pytest.importorskip("gguf")
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    vec = SteeringVector({"model.layers.3": np.ones(D, np.float32)}, model_id=str(folder))
    r = gguf.GGUFReader(str(save_vector(vec, tmp_path / "v.gguf")))
    assert bytes(r.get_field("controlvector.model_hint").parts[-1]).decode() == "qwen2"
    with pytest.raises(ValueError, match="needs model_hint"):
        save_vector(vec.replace(model_id="org/remote"), tmp_path / "w.gguf")
    assert not (tmp_path / "w.gguf").exists()


# -- item 11: intervention input types -----------------------------------------------------------
@pytest.mark.parametrize("scale", ["2", True, np.bool_(True), 2 + 0j, b"2", None])
def test_add_vector_rejects_non_real_scales(scale):
    with pytest.raises(TypeError, match="scale must be a real number, got"):
        iv.add_vector(np.ones(D), scale=scale)


def test_add_vector_accepts_real_scalars():
    for scale in (2, 2.0, np.float32(2), np.int64(2), np.array(2.0)):
        assert iv.add_vector(np.ones(D), scale=scale).scale == 2.0


@pytest.mark.parametrize("make", [
    lambda: np.ones(D, np.complex64),
    lambda: [1 + 2j] * D,
    lambda: __import__("torch").ones(D, dtype=__import__("torch").complex64),
    lambda: __import__("mlx.core", fromlist=["x"]).ones(D, dtype=__import__("mlx.core", fromlist=["x"]).complex64),
])
def test_complex_vectors_are_rejected(make):
    try:
        value = make()
    except ImportError:
        pytest.skip("backend not installed")
    with pytest.raises(TypeError, match="steering vector must be real, got complex"):
        iv.add_vector(value)
    with pytest.raises(TypeError, match="direction must be real"):
        iv.project_out(value)


def test_text_and_bool_vectors_are_rejected():
    with pytest.raises(TypeError, match="got text"):
        iv.add_vector(["1"] * D)
    with pytest.raises(TypeError, match="got booleans"):
        iv.add_vector([True] * D)


# -- item 7: a scale that overflows float32 ------------------------------------------------------
def test_scale_times_vector_overflowing_float32_is_rejected():
    v = np.full(D, 10.0, np.float32)
    with np.errstate(over="ignore"):
        assert not np.all(np.isfinite(v * np.float32(1e38)))
    with pytest.raises(ValueError, match="overflows float32"):
        iv.add_vector(v, scale=1e38)
    with pytest.raises(ValueError, match="overflows float32"):
        iv.add_vector(np.ones(D), scale=1e39)  # beyond float32 itself
    assert iv.add_vector(v, scale=1e37).scale == 1e37  # 1e38: finite, allowed


# -- one table of extraction methods -------------------------------------------------------------
def test_cli_and_api_share_one_method_table():
    from mlx_steer import cli
    from mlx_steer.extraction import directions as extraction

    assert extraction.METHODS is method_table.METHODS
    assert cli.METHODS is method_table.METHODS
    choices = {a.dest: a.choices for a in cli.build_parser()._subparsers._group_actions[0].choices["extract"]._actions}
    assert list(choices["method"]) == list(method_table.METHODS)


def test_extract_takes_a_function(shared_models):
    m = shared_models("llama")
    seen = []

    def median_diff(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
        seen.append((pos.shape, neg.shape))
        return np.median(pos, 0) - np.median(neg, 0)

    vec = ms.extract(m, POS, NEG[:2], sites=["layers.1", "layers.2"], method=median_diff)
    assert seen == [((3, m.hidden_size), (2, m.hidden_size))] * 2
    assert vec.method == "median_diff"
    # the oracle: the same rows the built-in mean_diff reads, through its own table entry
    rows = {}
    ms.extract(m, POS, NEG[:2], sites=["layers.1", "layers.2"],
               method=lambda p, n: rows.setdefault(len(rows), (p, n))[0].mean(0) - n.mean(0))
    for i, site in enumerate(vec.sites):
        p, n = rows[i]
        np.testing.assert_array_equal(vec[site], (np.median(p, 0) - np.median(n, 0)).astype(np.float32))
    # a table function is the name it aliases
    by_fn = ms.extract(m, POS, NEG, sites=["layers.1"], method=method_table.mean_diff)
    by_name = ms.extract(m, POS, NEG, sites=["layers.1"], method="mean_diff")
    assert by_fn == by_name and by_fn.method == "mean_diff"
    full = []
    ms.extract(m, POS, NEG, sites=["layers.1"], method=lambda p, n: full.append((p, n)) or p.mean(0) - n.mean(0))
    np.testing.assert_array_equal(by_name["model.layers.1"], methods.mean_difference(*full[0]))


def test_extract_function_errors(shared_models):
    m = shared_models("llama")
    with pytest.raises(TypeError, match="method must be one of mean_diff, pca, probe, actadd or a function"):
        ms.extract(m, POS, NEG, sites=["layers.1"], method=3)
    with pytest.raises(ValueError, match=rf"method '<lambda>' must return a real \({m.hidden_size},\) vector, "
                                         rf"got ndarray of shape \(3, {m.hidden_size}\)"):
        ms.extract(m, POS, NEG, sites=["layers.1"], method=lambda p, n: p)  # (N, D)
    bad = lambda p, n: np.full(p.shape[1], np.nan)  # noqa: E731
    bad.__name__ = "nan_method"
    with pytest.raises(ValueError, match="method 'nan_method' returned non-finite values"):
        ms.extract(m, POS, NEG, sites=["layers.1"], method=bad)


# -- item 9: identical pairs give a zero vector: an error naming the site ------------------------
@pytest.mark.parametrize("method", ["mean_diff", "actadd"])
def test_identical_pairs_are_an_error(shared_models, method):
    m = shared_models("llama")
    pos = POS[:1] if method == "actadd" else POS
    with pytest.raises(ValueError, match=f"the {method} direction at model.layers.2 is zero"):
        ms.extract(m, pos, list(pos), sites=["layers.2"], method=method)


def test_system_without_chat_is_an_error(shared_models):
    m = shared_models("llama")
    with pytest.raises(ValueError, match="system only apply to chat prompts"):
        ms.extract(m, POS, NEG, sites=["layers.1"], system="Be brief.")
