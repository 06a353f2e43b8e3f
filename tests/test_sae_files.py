"""SAE folders read strictly: every corrupt cfg.json or weights file is refused with a ValueError naming
the file and the field (and ``serve --sae`` exits 2 with it, no traceback); bf16 weights, as the hub
ships them, load and encode as the same weights widened to float32 by torch or MLX."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mlx_steer import sae as S
from serve_helpers import free_port

D, F = 64, 96
NAMES = ("W_enc", "b_enc", "W_dec", "b_dec")


def _random(arch: str = "topk", seed: int = 0) -> S.SparseAutoencoder:
    rng = np.random.default_rng(seed)
    kw = {"k": 8} if arch == "topk" else {"threshold": rng.uniform(0.0, 0.5, F).astype(np.float32)} \
        if arch == "jumprelu" else {}
    return S.SparseAutoencoder(rng.normal(size=(D, F)).astype(np.float32) / 8, rng.normal(size=F).astype(np.float32) / 10,
                               rng.normal(size=(F, D)).astype(np.float32) / 8, rng.normal(size=D).astype(np.float32),
                               architecture=arch, site="layers.1", **kw)


def _cfg(**changes):
    def edit(folder):
        cfg = json.loads((folder / "cfg.json").read_text())
        cfg.update(changes)
        (folder / "cfg.json").write_text(json.dumps(cfg))
    return edit


def _text(text: bytes):
    def edit(folder):
        (folder / "cfg.json").write_bytes(text)
    return edit


def _tensors(**changes):
    """Rewrite the weights with numpy's safetensors writer, some tensors replaced."""
    def edit(folder):
        from safetensors.numpy import load_file, save_file

        path = folder / "sae_weights.safetensors"
        tensors = load_file(str(path))
        for name, change in changes.items():
            if change is None:
                del tensors[name]
            else:
                tensors[name] = change(tensors[name])
        save_file(tensors, str(path))
    return edit


def _truncate(folder):
    path = folder / "sae_weights.safetensors"
    path.write_bytes(path.read_bytes()[:-100])


def _poke(value):
    def change(a):
        a = a.copy()
        a.flat[7] = value
        return a
    return change


CORRUPT = {  # case: (edit, file at fault, what the message must name)
    "truncated weights": (_truncate, "sae_weights.safetensors", "not a valid safetensors file"),
    "cfg a list": (_text(b"[1, 2]"), "cfg.json", "JSON list"),
    "malformed json": (_text(b'{"architecture": "topk", "k": '), "cfg.json", "not valid JSON"),
    "cfg not utf-8": (_text(b'{"k": "\xff"}'), "cfg.json", "not valid JSON"),
    "bool as a string": (_cfg(apply_b_dec_to_input="false"), "cfg.json", "field apply_b_dec_to_input"),
    "fractional k": (_cfg(k=1.7), "cfg.json", "field k is 1.7"),
    "boolean k": (_cfg(k=True), "cfg.json", "field k is true"),
    "k too large": (_cfg(k=97), "cfg.json", "field k is 97"),
    "old k a string": (_cfg(k=None, activation_fn_kwargs={"k": "8"}), "cfg.json", "field activation_fn_kwargs.k"),
    "metadata a list": (_cfg(metadata=["x"]), "cfg.json", "field metadata"),
    "hook name a number": (_cfg(hook_name=5, mlx_steer_site=None), "cfg.json", "field hook_name"),
    "d_in disagrees": (_cfg(d_in=65), "cfg.json", "field d_in is 65"),
    "d_sae a string": (_cfg(d_sae="96"), "cfg.json", "field d_sae"),
    "normalized input": (_cfg(normalize_activations="expected_average_only_in"), "cfg.json",
                         'field normalize_activations is "expected_average_only_in"'),
    "unknown architecture": (_cfg(architecture="gated"), "cfg.json", 'field architecture (or activation_fn_str) is "gated"'),
    "NaN weight": (_tensors(W_dec=_poke(math.nan)), "sae_weights.safetensors", "tensor W_dec holds 1 NaN or inf"),
    "inf bias": (_tensors(b_enc=_poke(math.inf)), "sae_weights.safetensors", "tensor b_enc holds 1 NaN or inf"),
    "integer tensor": (_tensors(b_dec=lambda a: a.astype(np.int32)), "sae_weights.safetensors",
                       "tensor b_dec has type I32"),
    "wrong decoder shape": (_tensors(W_dec=lambda a: a[:, :3].copy()), "sae_weights.safetensors",
                            "W_dec has shape [96, 3]"),
    "empty decoder bias": (_tensors(b_dec=lambda a: a[:0]), "sae_weights.safetensors", "b_dec has shape [0]"),
    "missing tensor": (_tensors(b_dec=None), "sae_weights.safetensors", "lacks b_dec"),
}


@pytest.mark.parametrize("case", list(CORRUPT))
def test_a_corrupt_sae_folder_is_refused_naming_the_file_and_field(tmp_path, case):
    edit, file, field = CORRUPT[case]
    folder = S.save_sae(_random(), tmp_path / "sae")
    edit(folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(ValueError) as got:
        S.load_sae(folder)
    assert str(folder / file) in str(got.value) and field in str(got.value), str(got.value)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # nothing written


def test_json_booleans_and_integers_are_read_as_written(tmp_path):
    folder = S.save_sae(_random(), tmp_path / "sae")
    _cfg(apply_b_dec_to_input=False, k=5)(folder)
    sae = S.load_sae(folder)
    assert (sae.apply_b_dec_to_input, sae.k) == (False, 5)
    x = np.random.default_rng(1).normal(size=(3, D)).astype(np.float32)
    pre = x @ sae.W_enc + sae.b_enc  # b_dec not subtracted
    want = np.zeros_like(pre)
    for i, row in enumerate(pre):
        top = np.argsort(-row)[:5]
        want[i, top] = np.maximum(row[top], 0)
    np.testing.assert_allclose(sae.encode(x), want, rtol=1e-5, atol=1e-6)


def _bf16_file(folder, sae, writer):
    """Write ``sae``'s weights as bf16 with torch's or MLX's own safetensors writer; returns them widened
    to float32 by that library (the oracle)."""
    names = NAMES + (("threshold",) if sae.threshold is not None else ())
    arrays = {n: getattr(sae, n) for n in names}
    path = str(folder / "sae_weights.safetensors")
    if writer == "torch":
        torch = pytest.importorskip("torch")
        from safetensors.torch import save_file

        t = {n: torch.from_numpy(a.copy()).to(torch.bfloat16) for n, a in arrays.items()}
        save_file(t, path)
        return {n: v.to(torch.float32).numpy() for n, v in t.items()}
    mx = pytest.importorskip("mlx.core")
    m = {n: mx.array(a).astype(mx.bfloat16) for n, a in arrays.items()}
    mx.save_safetensors(path, m)
    return {n: np.array(v.astype(mx.float32)) for n, v in m.items()}


@pytest.mark.parametrize("writer", ["torch", "mlx"])
@pytest.mark.parametrize("arch", S.ARCHITECTURES)
def test_bf16_weights_load_as_the_same_weights_widened(tmp_path, writer, arch):
    sae = _random(arch, seed=2)
    folder = S.save_sae(sae, tmp_path / "sae")
    wide = _bf16_file(folder, sae, writer)
    loaded = S.load_sae(folder)
    by_hand = S.SparseAutoencoder(wide["W_enc"], wide["b_enc"], wide["W_dec"], wide["b_dec"], architecture=arch,
                                  k=sae.k, threshold=wide.get("threshold"), site="layers.1")
    for name in wide:
        assert getattr(loaded, name).dtype == np.float32
        np.testing.assert_array_equal(getattr(loaded, name), wide[name])
    x = np.random.default_rng(3).normal(size=(9, D)).astype(np.float32) * 3
    np.testing.assert_array_equal(loaded.encode(x), by_hand.encode(x))
    np.testing.assert_array_equal(loaded.decode(loaded.encode(x)), by_hand.decode(by_hand.encode(x)))
    # and near the fp32 SAE they were rounded from (bf16 keeps 8 bits of mantissa)
    assert not np.array_equal(loaded.W_enc, sae.W_enc)
    np.testing.assert_allclose(loaded.W_enc, sae.W_enc, rtol=2**-8, atol=0)
    if arch == "standard":  # continuous in the weights (TopK and JumpReLU may switch a feature at the edge)
        np.testing.assert_allclose(loaded.encode(x), sae.encode(x), rtol=0, atol=0.05)
        np.testing.assert_allclose(loaded.decode(loaded.encode(x)), sae.decode(sae.encode(x)), rtol=0, atol=0.1)


def test_bf16_weights_load_for_a_model(tmp_path, shared_models):
    m = shared_models("llama")
    sae = _random("topk", seed=4)
    folder = S.save_sae(sae, tmp_path / "sae")
    wide = _bf16_file(folder, sae, "mlx")
    loaded = S.load_sae(folder, model=m)
    acts = m.to_numpy(m.run("I love this", record=[loaded.site]).activations[loaded.site])[0]
    assert np.isfinite(loaded.encode(acts)).all()
    np.testing.assert_array_equal(loaded.W_dec, wide["W_dec"])


@pytest.mark.parametrize("case", ["cfg a list", "truncated weights", "NaN weight"])
def test_serve_with_a_bad_sae_folder_exits_2_naming_it(tiny_dir, tmp_path, capsys, monkeypatch, case):
    import uvicorn

    from mlx_steer.cli import main

    def serve(*args, **kwargs):
        raise AssertionError("the server started with a bad SAE folder")

    monkeypatch.setattr(uvicorn, "run", serve)

    edit, file, field = CORRUPT[case]
    folder = S.save_sae(_random(), tmp_path / "bad")
    edit(folder)
    code = main(["serve", "--model", str(tiny_dir("llama")), "--port", str(free_port()), "--sae", f"bad={folder}"])
    err = capsys.readouterr().err
    assert code == 2, err
    last = err.strip().splitlines()[-1]  # (before it: the tiny model's build, when this test builds it)
    assert "Traceback" not in err and last.startswith("error: "), err
    assert str(folder / file) in last and field in last, err
