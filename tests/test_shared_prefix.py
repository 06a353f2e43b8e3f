"""Shared prefixes (mlx_steer.engine.shared_prefix): a suffix row run from a cached prefix equals the
full forward of prefix + suffix (logits and recordings), on both backends, with prefixes and suffixes
of different lengths in one call and per-row steering; what would touch a prefix is refused and
leaves no hook behind; A/B scoring from shared prefixes equals the whole-forward path (and the
forwards with full logits, the path before logits were kept only where read), controls included."""

from __future__ import annotations

import numpy as np
import pytest

from mlx_steer import evaluate as ev
from mlx_steer.engine import interventions as iv
from mlx_steer.engine.positions import Positions
from mlx_steer.engine.shared_prefix import PrefixRefused, shared_prefix
from torch_fixtures import *  # noqa: F403  (fixtures)

BACKENDS = ["mlx", "torch"]
PREFIXES = [[5, 9, 14, 22, 31, 8, 40], [17, 6, 29, 11], [33, 12, 7, 50, 21, 19, 44, 9, 26]]
SUFFIXES = [[11], [12, 13], [14], [15], [16, 17, 18], [19]]
PREFIX_OF = [0, 1, 2, 0, 2, 1]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_suffix_rows_equal_full_forwards(backend_models, backend, arch):
    m = backend_models(backend, arch)
    vec = np.random.default_rng(0).standard_normal(m.hidden_size).astype(np.float32)
    def add(scale: float, positions: object, layer: int = 1) -> dict:
        return {f"layers.{layer}": iv.add_vector(vec, scale=scale, positions=positions)}

    specs = [None, add(2.0, Positions.last_n(2)), add(-4.0, "last"), add(4.0, "last", 0),
             add(8.0, Positions.last_n(3)), add(8.0, "last", 2)]
    sp = shared_prefix(m, PREFIXES)
    tr = sp.run(SUFFIXES, prefix_of=PREFIX_OF, interventions=specs, logits="last", record=["layers.2"],
                record_positions="last")
    got, rec = m.to_numpy(tr.logits), m.to_numpy(next(iter(tr.activations.values())))
    assert got.shape[:2] == (len(SUFFIXES), 1)
    for i, (suffix, o) in enumerate(zip(SUFFIXES, PREFIX_OF)):
        full = PREFIXES[o] + suffix
        assert tr.tokens[i] == full
        ref = m.run([full], interventions=specs[i], logits="last", record=["layers.2"], record_positions="last")
        np.testing.assert_allclose(got[i], m.to_numpy(ref.logits)[0], atol=1e-5, rtol=0, err_msg=f"row {i}")
        np.testing.assert_allclose(rec[i], m.to_numpy(next(iter(ref.activations.values())))[0], atol=1e-5, rtol=0)
    # the cache is not changed by a run: the same rows again give the same logits, in small chunks too
    again = sp.run(SUFFIXES, prefix_of=PREFIX_OF, interventions=specs, logits="last", max_rows=1)
    np.testing.assert_allclose(m.to_numpy(again.logits), got, atol=1e-6, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_logits_at_several_suffix_positions(backend_models, backend):
    m = backend_models(backend, "llama")
    sp = shared_prefix(m, PREFIXES)
    suffixes, of = [[11, 12, 13], [14, 15, 16]], [1, 2]
    tr = sp.run(suffixes, prefix_of=of, logits=[-3, -1])
    got = m.to_numpy(tr.logits)
    for i, (s, o) in enumerate(zip(suffixes, of)):
        full = m.to_numpy(m.run([PREFIXES[o] + s]).logits)[0]
        np.testing.assert_allclose(got[i], full[[-3, -1]], atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", ["all", "prompt", "index", "front", "logits", "record"])
def test_touching_a_prefix_is_refused_and_leaves_no_hook(backend_models, backend, case):
    m = backend_models(backend, "llama")
    vec = np.ones(m.hidden_size, np.float32)
    sp = shared_prefix(m, PREFIXES)
    kw: dict = {"logits": "last"}
    if case in ("all", "prompt"):
        kw["interventions"] = {"layers.1": iv.add_vector(vec, positions=case)}
    elif case == "index":
        kw["interventions"] = {"layers.1": iv.add_vector(vec, positions=[2, 4])}
    elif case == "front":
        kw["interventions"] = {"layers.1": iv.add_vector(np.ones((2, m.hidden_size), np.float32))}
    elif case == "logits":
        kw["logits"] = [-2]  # the last prefix token for the one-token suffixes
    else:
        kw["record"], kw["record_positions"] = ["layers.2"], "all"
    with pytest.raises(PrefixRefused, match="prefix|position 0"):
        sp.run(SUFFIXES, prefix_of=PREFIX_OF, **kw)
    assert m.registry.live() == []
    with pytest.raises(ValueError, match="prefix_of 3 out of range; valid: 0..2"):
        sp.run([[1]], prefix_of=[3])


def _items():
    base = ev.caa_items("myopic-reward")[:5]
    # different lengths in one chunk: a short question beside the dataset's long ones
    return [*base, ev.as_items([{"question": "Agree?", "answer_matching": "(A)", "answer_not_matching": "(B)"}])[0]]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_ab_scores_from_shared_prefixes_equal_whole_forwards(backend_models, backend, arch):
    m = backend_models(backend, arch)
    items = _items()
    assert len({len(ev.ab_prompt(m, it).prompt) for it in items}) > 1
    vec = np.random.default_rng(1).standard_normal(m.hidden_size).astype(np.float32)
    grid = ev.Grid(m, vector=vec, layers=[1, 2], strengths=[-8.0, -2.0, 0.0, 4.0], controls=("random", "flipped"),
                   positions="last", seed=3)
    shared = ev.ab.ab_scores(m, items, grid, batch_size=6)
    whole = ev.ab.ab_scores(m, items, grid, batch_size=6, shared_prefix=False, share_layers=False)
    full_logits = ev.ab.ab_scores(m, items, grid, batch_size=6, shared_prefix=False, share_layers=False,
                                  _all_logits=True)
    assert set(shared) == set(whole) == set(grid.distinct())
    for key in whole:
        np.testing.assert_allclose(shared[key], whole[key], atol=1e-6, rtol=0, err_msg=str(key))
        np.testing.assert_allclose(full_logits[key], whole[key], atol=1e-6, rtol=0, err_msg=str(key))
    assert np.ptp(np.concatenate([shared[k] for k in shared])) > 1e-3  # the cells differ: the check can fail


@pytest.mark.parametrize("backend", BACKENDS)
def test_ab_scores_steering_every_position_falls_back(backend_models, backend):
    m = backend_models(backend, "llama")
    items = _items()[:3]
    vec = np.random.default_rng(2).standard_normal(m.hidden_size).astype(np.float32)
    grid = ev.Grid(m, vector=vec, layers=[1], strengths=[-4.0, 4.0], positions="all")
    got = ev.ab.ab_scores(m, items, grid, batch_size=4)
    want = ev.ab.ab_scores(m, items, grid, batch_size=4, shared_prefix=False, share_layers=False)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], atol=1e-6, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_smollm2_ab_scores_from_shared_prefixes(smollm2, smollm2_torch, backend):
    m = smollm2 if backend == "mlx" else smollm2_torch
    shared, whole = _smollm2_both_paths(m, ev.caa_items("myopic-reward")[:2] + ev.caa_items("refusal")[:1])
    # fp32 on SmolLM2's 30 layers: today's whole-forward path differs from itself by up to 1.8e-6 when only
    # the chunking changes (batch_size 8 vs 4, measured on MLX), so 1e-5 is the bound that means "same numbers"
    for key in whole:
        np.testing.assert_allclose(shared[key], whole[key], atol=1e-5, rtol=0, err_msg=str(key))


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_smollm2_shared_prefixes_exact_in_float64(smollm2_dir, backend):
    """In float64 the shared-prefix path gives today's whole-forward A/B probabilities to the last bit
    on SmolLM2 (measured: 0.0 on both backends), items of two lengths in one batch, both controls: what
    fp32 leaves (up to ~6e-6, above) is the BLAS's rounding of differently shaped products, not the path."""
    if backend == "mlx":
        import mlx.core as mx

        import mlx_steer as ms

        m = ms.load(str(smollm2_dir))
        m.backend.model.set_dtype(mx.float64)
    else:
        from mlx_steer.torch_backend import load

        m = load(str(smollm2_dir), dtype="float64")
    shared, whole = _smollm2_both_paths(m, ev.caa_items("myopic-reward")[:1] + ev.caa_items("refusal")[:1])
    assert set(shared) == set(whole) and len(whole) == 4
    for key in whole:
        np.testing.assert_allclose(shared[key], whole[key], atol=1e-12, rtol=0, err_msg=str(key))
    assert np.ptp(np.concatenate([whole[k] for k in whole])) > 1e-2  # the cells differ: the check can fail


def _smollm2_both_paths(m, items: list) -> tuple[dict, dict]:
    """A/B scores of ``items`` (of different lengths) at layer 8, +8, both controls: shared, whole."""
    assert len({len(ev.ab_prompt(m, it).prompt) for it in items}) >= 2
    vec = np.random.default_rng(4).standard_normal(m.hidden_size).astype(np.float32)
    vec *= 2.0 / np.linalg.norm(vec)
    grid = ev.Grid(m, vector=vec, layers=[8], strengths=[8.0], controls=("random", "flipped"),
                   positions="last", seed=0)
    shared = ev.ab.ab_scores(m, items, grid, batch_size=8)
    return shared, ev.ab.ab_scores(m, items, grid, batch_size=8, shared_prefix=False, share_layers=False)
