"""GGUF control vectors: the repeng / llama.cpp layout and its layer numbering.

``direction.N`` is added to the output of block N (0-based) in llama.cpp, i.e. our
``model.layers.N`` output; see the module docstring of mlx_steer.vectors.gguf_vector for the sources.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from mlx_steer.vectors.gguf_vector import export_gguf, import_gguf  # noqa: E402
from mlx_steer.vectors.steering_vector import SteeringVector  # noqa: E402

D = 8
rng = np.random.default_rng(2)
DIRS = {f"model.layers.{i}": rng.normal(size=D).astype(np.float32) for i in (3, 1, 10)}


def read_raw(path) -> tuple[dict, dict]:
    """(string/int fields, tensors by name) straight from gguf's reader."""
    r = gguf.GGUFReader(str(path))
    fields = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
    return fields, {t.name: np.array(t.data) for t in r.tensors}


def write_gguf(path, tensors: dict, fields: dict, *, arch="controlvector") -> None:
    """A GGUF file holding ``tensors`` and metadata ``fields`` ({key: (kind, value)}, kind as in
    ``GGUFWriter.add_<kind>``), written with gguf's own writer."""
    w = gguf.GGUFWriter(str(path), arch)
    for key, (kind, value) in fields.items():
        getattr(w, f"add_{kind}")(key, value)
    for name, arr in tensors.items():
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_raw(path, tensors: dict, *, arch="controlvector", hint="llama") -> None:
    """A control vector written the way repeng's ControlVector.export_gguf does."""
    write_gguf(path, tensors, {f"{arch}.model_hint": ("string", hint), f"{arch}.layer_count": ("uint32", len(tensors))},
               arch=arch)


def test_export_writes_llama_cpp_layout_with_identity_numbering(tmp_path):
    path = export_gguf(SteeringVector(DIRS), tmp_path / "v.gguf", model_hint="llama")
    fields, tensors = read_raw(path)
    assert fields == {"general.architecture": "controlvector", "controlvector.model_hint": "llama",
                      "controlvector.layer_count": 3}
    # hand-written expectation: the output of block N (model.layers.N) is direction.N
    expected = {"direction.1": DIRS["model.layers.1"], "direction.3": DIRS["model.layers.3"],
                "direction.10": DIRS["model.layers.10"]}
    assert list(tensors) == ["direction.1", "direction.3", "direction.10"]
    for name, arr in expected.items():
        assert tensors[name].dtype == np.float32 and np.array_equal(tensors[name], arr)


def test_round_trip(tmp_path):
    v = SteeringVector(DIRS, method="pca")
    w = import_gguf(export_gguf(v, tmp_path / "v.gguf", model_hint="qwen2"))
    assert w.sites == ("model.layers.1", "model.layers.3", "model.layers.10")
    assert all(np.array_equal(w[s], v[s]) for s in v.sites)
    assert (w.hook_point, w.dtype, dict(w.extra)) == ("output", "float32", {"model_hint": "qwen2"})


def test_float64_vectors_export_as_float32(tmp_path):
    v = SteeringVector(DIRS).to("float64") / 3
    _, tensors = read_raw(export_gguf(v, tmp_path / "v.gguf", model_hint="llama"))
    assert np.array_equal(tensors["direction.3"], v["model.layers.3"].astype(np.float32))


def test_repeng_style_file_imports(tmp_path):
    d1, d5 = np.arange(D, dtype=np.float32), -np.arange(D, dtype=np.float32)
    write_raw(tmp_path / "r.gguf", {"direction.5": d5, "direction.1": d1}, hint="mistral")
    v = import_gguf(tmp_path / "r.gguf")
    assert v.sites == ("model.layers.1", "model.layers.5")
    assert np.array_equal(v["model.layers.1"], d1) and np.array_equal(v["model.layers.5"], d5)
    assert v.extra["model_hint"] == "mistral" and v.hidden_size == D


@pytest.mark.parametrize("name", ["direction.0", "direction.00"])
def test_a_layer_0_direction_is_refused_naming_tensor_file_and_valid_range(tmp_path, name):
    # llama.cpp's common_control_vector_load_one: "invalid (zero) direction tensor layer index"
    path = tmp_path / "r.gguf"
    write_raw(path, {"direction.5": np.ones(D, np.float32), name: np.ones(D, np.float32)})
    before = path.read_bytes()
    with pytest.raises(ValueError, match=rf"{path} holds tensor '{name}'.*valid: direction\.1 and up"):
        import_gguf(path)
    assert path.read_bytes() == before


def test_layer_path_template(tmp_path):
    v = SteeringVector({"model.h.2": DIRS["model.layers.1"]})
    path = export_gguf(v, tmp_path / "v.gguf", model_hint="gpt2", layer_path_template="model.h.{}")
    assert list(read_raw(path)[1]) == ["direction.2"]
    w = import_gguf(path, layer_path_template="transformer.h.{}")
    assert w.sites == ("transformer.h.2",) and np.array_equal(w["transformer.h.2"], v["model.h.2"])


@pytest.mark.parametrize(
    "vec, kwargs, message",
    [
        (SteeringVector(DIRS, hook_point="input"), {}, "only output-hook vectors.*hooks 'input'"),
        (SteeringVector({"model.layers.2": np.ones((3, D))}), {}, r"model\.layers\.2 hold \(n, D\) tensors"),
        (SteeringVector({**DIRS, "model.layers.0": np.ones(D)}), {}, r"llama\.cpp rejects direction\.0"),
        (SteeringVector({"model.layers.2.mlp": np.ones(D), "lm_head": np.ones(D)}), {},
         r"sites model\.layers\.2\.mlp, lm_head are not decoder-layer outputs 'model\.layers\.N'"),
        (SteeringVector(DIRS), {"model_hint": ""}, "model_hint must be a non-empty string"),
        (SteeringVector(DIRS), {"layer_path_template": "model.layers"}, r"must contain '\{\}' once"),
    ],
)
def test_export_errors(tmp_path, vec, kwargs, message):
    kwargs = {"model_hint": "llama", **kwargs}
    with pytest.raises(ValueError, match=message):
        export_gguf(vec, tmp_path / "v.gguf", **kwargs)


def test_import_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no GGUF file at .*missing.gguf"):
        import_gguf(tmp_path / "missing.gguf")
    (tmp_path / "junk.gguf").write_bytes(b"this is not a gguf file at all, not even close")
    with pytest.raises(ValueError, match="not a GGUF file"):
        import_gguf(tmp_path / "junk.gguf")
    write_raw(tmp_path / "model.gguf", {"blk.0.attn_q.weight": np.ones(D, np.float32)}, arch="llama")
    with pytest.raises(ValueError, match="not a control vector: general.architecture is 'llama'"):
        import_gguf(tmp_path / "model.gguf")
    write_raw(tmp_path / "odd.gguf", {"direction.1": np.ones(D, np.float32), "bias.1": np.ones(D, np.float32)})
    with pytest.raises(ValueError, match="holds tensor 'bias.1'"):
        import_gguf(tmp_path / "odd.gguf")
    write_raw(tmp_path / "2d.gguf", {"direction.1": np.ones((2, D), np.float32)})
    with pytest.raises(ValueError, match=r"direction\.1 .* must be a 1-D float direction"):
        import_gguf(tmp_path / "2d.gguf")


def test_missing_gguf_package_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)  # makes `import gguf` raise ImportError
    with pytest.raises(ImportError, match="pip install gguf"):
        export_gguf(SteeringVector(DIRS), tmp_path / "v.gguf", model_hint="llama")
    with pytest.raises(ImportError, match="pip install gguf"):
        import_gguf(tmp_path / "v.gguf")
