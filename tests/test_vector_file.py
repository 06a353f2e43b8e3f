"""Vector files: safetensors round trips, the on-disk layout, and checks against a (fake) model."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from safetensors.numpy import save_file

from mlx_steer.engine.paths import PathResolver
from mlx_steer.vectors.steering_vector import SteeringVector
from mlx_steer.vectors.vector_file import load_vector, save_vector, validate_against

rng = np.random.default_rng(1)
D = 8
SITES = ("model.layers.9", "model.layers.10", "model.layers.2")  # lexical order would differ


class FakeModel:
    """Just what loading needs: hidden_size, resolve_path (ValueError if unknown), model_id, layer_paths."""

    def __init__(self, *, hidden_size=D, n_layers=12, container="model.layers", model_id="org/base"):
        self.hidden_size, self.model_id = hidden_size, model_id
        self.layer_paths = [f"{container}.{i}" for i in range(n_layers)]
        names = [container.split(".")[0], container, *self.layer_paths, *(f"{p}.mlp" for p in self.layer_paths)]
        self.resolve_path = PathResolver(names, self.layer_paths).resolve_path


def make(**kw) -> SteeringVector:
    dirs = kw.pop("directions", None) or {s: rng.normal(size=D).astype(np.float32) for s in SITES}
    return SteeringVector(dirs, **kw)


def header(path) -> dict:
    """The safetensors JSON header, read by hand (8-byte little-endian length, then JSON)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n])


# -- round trips ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_round_trip_is_bit_identical(tmp_path, dtype):
    v = make(hook_point="input", model_id="org/m", method="pca", read_positions="last", extra={"note": "x", "k": "2"})
    v = v.to(dtype)
    path = save_vector(v, tmp_path / "v.safetensors")
    w = load_vector(path)
    assert w == v
    assert w.sites == SITES
    for s in SITES:
        assert w[s].dtype == np.dtype(dtype) and w[s].tobytes() == v[s].tobytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.safetensors"]  # no temp file left


def test_round_trip_of_a_front_aligned_tensor(tmp_path):
    t = rng.normal(size=(5, D)).astype(np.float32)
    v = SteeringVector({"model.layers.1": t}, method="actadd")
    w = load_vector(save_vector(v, tmp_path / "t.safetensors"))
    assert w["model.layers.1"].shape == (5, D) and np.array_equal(w["model.layers.1"], t) and w == v


def test_on_disk_layout(tmp_path):
    v = make(method="mean_diff", extra={"note": "hi"})
    path = save_vector(v, tmp_path / "v.safetensors")
    h = header(path)
    assert h.pop("__metadata__") == {
        "format": "mlx_steer.vector",
        "format_version": "1",
        "sites": json.dumps(list(SITES)),
        "hidden_size": "8",
        "hook_point": "output",
        "dtype": "float32",
        "created_by": v.created_by,
        "method": "mean_diff",
        "extra.note": "hi",
    }  # model_id and read_positions are None, so left out
    assert {k: (t["dtype"], t["shape"]) for k, t in h.items()} == {s: ("F32", [D]) for s in SITES}


def test_files_without_site_order_load_in_natural_order(tmp_path):
    v = make()
    meta = {"format": "mlx_steer.vector", "format_version": "1", "hidden_size": "8", "hook_point": "output",
            "dtype": "float32", "created_by": "0.0.1"}
    save_file({s: v[s].copy() for s in SITES}, str(tmp_path / "v.safetensors"), metadata=meta)
    w = load_vector(tmp_path / "v.safetensors")
    assert w.sites == ("model.layers.2", "model.layers.9", "model.layers.10") and w.created_by == "0.0.1"


# -- bad files -----------------------------------------------------------------------------------
def test_missing_and_junk_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no vector file at .*missing.safetensors"):
        load_vector(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="is not a file"):
        load_vector(tmp_path)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"certainly not a safetensors file")
    with pytest.raises(ValueError, match="not a safetensors file"):
        load_vector(junk)


def test_other_safetensors_files_are_named(tmp_path):
    weights = tmp_path / "model.safetensors"
    save_file({"lm_head.weight": np.ones((2, 2), np.float32), "embed.weight": np.ones(2, np.float32)}, str(weights))
    with pytest.raises(ValueError, match=r"not an mlx_steer vector file: metadata format is None.*2 tensors \(embed\.weight, lm_head\.weight\)"):
        load_vector(weights)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"format_version": "2"}, "format version '2'; this mlx_steer reads '1'"),
        ({"hidden_size": "eight"}, "hidden_size must be a positive integer, got 'eight'"),
        ({"hidden_size": None}, "lacks metadata hidden_size"),
        ({"sites": '["model.layers.9"]'}, "do not match its tensors"),
        ({"sites": "not json"}, "not a JSON list"),
        ({"hook_point": "middle"}, "unknown hook point 'middle'"),
    ],
)
def test_malformed_metadata(tmp_path, change, message):
    v = make()
    meta = {"format": "mlx_steer.vector", "format_version": "1", "sites": json.dumps(list(SITES)), "hidden_size": "8",
            "hook_point": "output", "dtype": "float32", "created_by": "0.1.0"}
    meta = {k: val for k, val in {**meta, **change}.items() if val is not None}
    save_file({s: v[s].copy() for s in SITES}, str(tmp_path / "v.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match=message):
        load_vector(tmp_path / "v.safetensors")


def test_save_errors(tmp_path):
    with pytest.raises(ValueError, match="takes a SteeringVector, got dict"):
        save_vector({"a": np.ones(3)}, tmp_path / "v.safetensors")  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save_vector(make(), tmp_path / "nowhere" / "v.safetensors")


# -- checks against a model ----------------------------------------------------------------------
def test_load_against_a_fitting_model(tmp_path):
    v = make(model_id="org/base")
    w = load_vector(save_vector(v, tmp_path / "v.safetensors"), model=FakeModel())
    assert w == v


def test_a_different_model_id_alone_is_allowed(tmp_path):
    v = make(model_id="org/base-finetune")
    assert load_vector(save_vector(v, tmp_path / "v.safetensors"), model=FakeModel()) == v


def test_every_difference_is_reported_at_once(tmp_path):
    v = make(model_id="org/other", directions={
        "model.layers.1": np.ones(D), "model.layers.40": np.ones(D), "model.layers.2.attn": np.ones(D),
    })
    path = save_vector(v, tmp_path / "v.safetensors")
    model = FakeModel(hidden_size=64)
    with pytest.raises(ValueError) as err:
        load_vector(path, model=model)
    msg = str(err.value)
    assert msg.startswith(f"vector file {path} does not fit this model: ")
    assert "hidden size: file 8, model 64; " in msg
    assert "sites unknown to the model: model.layers.40, model.layers.2.attn; " in msg
    assert "model id: file 'org/other', model 'org/base'" in msg
    assert "layer 40 out of range for a 12-layer model" in msg  # the resolver's reason for the first


def test_model_id_is_not_mentioned_when_equal(tmp_path):
    v = make(model_id="org/base")
    with pytest.raises(ValueError, match=r"hidden size: file 8, model 16$"):
        load_vector(save_vector(v, tmp_path / "v.safetensors"), model=FakeModel(hidden_size=16))


def test_validate_against_directly():
    v = make(model_id="org/x")
    model = FakeModel()
    validate_against(v, hidden_size=D, resolve_path=model.resolve_path)  # fits: returns quietly
    with pytest.raises(ValueError, match=r"^sites unknown to the model: model\.layers\.9, model\.layers\.10 "):
        validate_against(v, hidden_size=D, resolve_path=FakeModel(n_layers=4).resolve_path, model_id="org/x")


def test_layer_paths_port_between_backends(tmp_path):
    """gpt2 is `model.h.i` in mlx-lm and `transformer.h.i` in transformers: either file loads on either."""
    v = SteeringVector({"model.h.2": np.ones(D), "model.h.3.mlp": np.full(D, 2.0)})
    w = load_vector(save_vector(v, tmp_path / "v.safetensors"), model=FakeModel(container="transformer.h"))
    assert w.sites == ("transformer.h.2", "transformer.h.3.mlp")
    assert np.array_equal(w["transformer.h.3.mlp"], v["model.h.3.mlp"])
    with pytest.raises(ValueError, match="sites unknown to the model: model.h.2, model.h.3.mlp"):
        validate_against(v, hidden_size=D, resolve_path=FakeModel(container="transformer.h").resolve_path)
