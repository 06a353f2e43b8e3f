"""SharedPrefix.run(from_layer=L, hidden=...) on both backends and every tiny architecture: suffix rows
continuing cached prefixes of different lengths, started at layer L with the input layer L saw at the
suffix positions in an unsteered full forward, equal the full forward of prefix + suffix with the same
per-row steering (at or above L); the layers below do not run; bad input is refused, leaving no hook."""

from __future__ import annotations

import numpy as np
import pytest

from mlx_steer.engine import interventions as iv
from mlx_steer.engine.positions import Positions
from mlx_steer.engine.shared_prefix import PrefixRefused, shared_prefix
from tiny_models import ARCHS
from torch_fixtures import *  # noqa: F403
from torch_fixtures import BACKENDS, assert_untouched, snapshot

PREFIXES = [[5, 9, 14, 22, 31, 8, 40], [17, 6, 29, 11], [33, 12, 7, 50, 21, 19, 44, 9, 26]]
SUFFIXES = [[11, 3], [12, 13, 4], [14], [15, 2, 6], [16, 17, 18], [19, 20]]
PREFIX_OF = [0, 1, 2, 0, 2, 1]
L = 2


def _suffix_inputs(m, layer: int) -> np.ndarray:
    """(suffixes, longest suffix, D): each row's layer input at its suffix positions, right-aligned,
    from one unsteered full forward of that row's prefix + suffix (the oracle's own run)."""
    S = max(len(s) for s in SUFFIXES)
    out = np.zeros((len(SUFFIXES), S, m.hidden_size), dtype=np.float32)
    for i, (s, o) in enumerate(zip(SUFFIXES, PREFIX_OF)):
        rec = m.run([PREFIXES[o] + s], record=[f"layers.{layer}:input"], logits=False)
        out[i, S - len(s):] = m.to_numpy(rec.activations[f"layers.{layer}:input"])[0, len(PREFIXES[o]):]
    return out


def _steering(m) -> list[dict | None]:
    v = np.random.default_rng(3).normal(size=m.hidden_size).astype(np.float32) * 3
    return [None, {f"layers.{L}": iv.add_vector(v, positions="last")},
            {f"layers.{L + 1}.mlp": iv.scale(0.5, positions="last"), f"layers.{L}:input": iv.add_vector(-v, positions="last")},
            {f"layers.{L}": iv.set(v, positions=Positions.last_n(2))},
            {f"layers.{L + 1}": iv.add_vector(2 * v, positions=Positions.last_n(3))},
            {f"layers.{L}": iv.zero(positions="last")}]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_from_layer_equals_the_full_forward(backend_models, backend, arch):
    m = backend_models(backend, arch)
    steer = _steering(m)
    try:
        sp = shared_prefix(m, PREFIXES)
    except PrefixRefused as exc:
        pytest.skip(f"{arch} on {backend} cannot share prefixes: {exc}")
    hidden = _suffix_inputs(m, L)
    got = sp.run(SUFFIXES, prefix_of=PREFIX_OF, interventions=steer, logits="last", record=[f"layers.{L + 1}"],
                 record_positions="last", from_layer=L, hidden=hidden)
    logits, rec = m.to_numpy(got.logits), m.to_numpy(got.activations[f"layers.{L + 1}"])
    for i, (s, o) in enumerate(zip(SUFFIXES, PREFIX_OF)):
        full = m.run([PREFIXES[o] + s], interventions=steer[i], logits="last", record=[f"layers.{L + 1}"],
                     record_positions="last")
        np.testing.assert_allclose(logits[i], m.to_numpy(full.logits)[0], rtol=1e-5, atol=1e-5, err_msg=f"row {i}")
        np.testing.assert_allclose(rec[i], m.to_numpy(full.activations[f"layers.{L + 1}"])[0], rtol=1e-5, atol=1e-5)
    # one forward per row (each its own slice of hidden) gives the same; so does the backend's array
    alone = sp.run(SUFFIXES, prefix_of=PREFIX_OF, interventions=steer, logits="last", max_rows=1, from_layer=L,
                   hidden=m.xp.constant(hidden, like=got.logits))
    np.testing.assert_allclose(m.to_numpy(alone.logits), logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_wrong_input_changes_the_result(backend_models, backend):
    """The oracle can fail: layer L's input is really what the suffix rows start from."""
    m = backend_models(backend, "llama")
    sp = shared_prefix(m, PREFIXES)
    hidden = _suffix_inputs(m, L)
    right = m.to_numpy(sp.run(SUFFIXES, prefix_of=PREFIX_OF, from_layer=L, hidden=hidden).logits)
    wrong = m.to_numpy(sp.run(SUFFIXES, prefix_of=PREFIX_OF, from_layer=L, hidden=hidden * 1.5).logits)
    assert np.abs(right - wrong).max() > 1e-2


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_layers_below_do_not_run(backend_models, backend):
    m = backend_models(backend, "llama")
    sp = shared_prefix(m, PREFIXES)
    attn, hidden = [f"{p}.self_attn" for p in m.layer_paths], _suffix_inputs(m, L)
    with m.record(attn) as seen:  # hooks around the call: they would see any call of a layer below L
        sp.run(SUFFIXES, prefix_of=PREFIX_OF, from_layer=L, hidden=hidden, max_rows=1)  # 1-row forwards
    assert [seen.activations[a] is None for a in attn] == [i < L for i in range(len(attn))]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", ["site below", "shape", "layer", "hidden alone"])
def test_bad_input_is_refused_and_leaves_no_hook(backend_models, backend, case):
    m = backend_models(backend, "llama")
    sp = shared_prefix(m, PREFIXES)
    hidden = _suffix_inputs(m, L)
    kw: dict = {"from_layer": L, "hidden": hidden}
    match = {"site below": "nothing can be steered", "shape": "hidden must have shape",
             "layer": "from_layer must be", "hidden alone": "go together"}[case]
    if case == "site below":
        kw["interventions"] = {f"layers.{L - 1}": iv.zero(positions="last")}
    elif case == "shape":
        kw["hidden"] = hidden[:, 1:]
    elif case == "layer":
        kw["from_layer"] = m.num_layers
    else:
        del kw["from_layer"]
    before = snapshot(m)
    with pytest.raises(ValueError, match=match):
        sp.run(SUFFIXES, prefix_of=PREFIX_OF, **kw)
    assert_untouched(m, before)
