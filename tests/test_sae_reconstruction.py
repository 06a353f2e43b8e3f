"""``SparseAutoencoder.reconstruction`` measures the tokens training measures: each sequence's first token
(the attention sink) and tokens of massive norm are left out by default and listed, and its numbers equal
a hand computation over the other positions; ``record_tokens`` keeps the same tokens."""

from __future__ import annotations

import numpy as np
import pytest

from mlx_steer import sae as S
from torch_fixtures import *  # noqa: F403  (fixtures)

PROMPT = "I love this wonderful sunny day"


def _fitted(acts: np.ndarray) -> S.SparseAutoencoder:
    rng = np.random.default_rng(0)
    d, f = acts.shape[-1], 48
    return S.SparseAutoencoder(rng.normal(size=(d, f)).astype(np.float32) / 8, rng.normal(size=f).astype(np.float32) / 10,
                               rng.normal(size=(f, d)).astype(np.float32) / 8, acts.mean(0).astype(np.float32),
                               architecture="topk", k=6, site="layers.1")


def _by_hand(sae: S.SparseAutoencoder, x: np.ndarray) -> tuple[float, float]:
    """mse and explained variance over the rows of x, written out here."""
    x = x.astype(np.float64)
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    f = np.zeros_like(pre)
    for i, row in enumerate(pre):
        top = np.argsort(-row)[: sae.k]
        f[i, top] = np.maximum(row[top], 0)
    err = x - (f @ sae.W_dec + sae.b_dec)
    sse = float((err**2).sum())
    var = float(((x - x.mean(0)) ** 2).sum())
    return sse / x.size, 1 - sse / var


@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_reconstruction_leaves_out_the_sink_and_massive_tokens_as_training_does(backend_models, backend):
    m = backend_models(backend, "llama")
    acts = m.to_numpy(m.run(PROMPT, record=["layers.1"]).activations["layers.1"])[0].astype(np.float32)
    L = len(acts)
    assert L >= 6
    acts[3] *= 40.0  # a massive token: far over 10x the median norm
    sae = _fitted(acts)

    got = sae.reconstruction(acts)
    assert got["skipped"] == [0, 3] and got["tokens"] == L - 2
    keep = [p for p in range(L) if p not in (0, 3)]
    mse, ev = _by_hand(sae, acts[keep])
    assert got["mse"] == pytest.approx(mse, rel=1e-5)
    assert got["explained_variance"] == pytest.approx(ev, rel=1e-5, abs=1e-6)

    every = sae.reconstruction(acts, skip_first=False, max_norm_ratio=None)
    assert every["skipped"] == [] and every["tokens"] == L
    assert every["mse"] == pytest.approx(_by_hand(sae, acts)[0], rel=1e-5)
    assert sae.reconstruction(acts, max_norm_ratio=None)["skipped"] == [0]

    # several sequences: each one's first token; (row, position) pairs
    two = np.stack([acts, acts[::-1].copy()])
    both = sae.reconstruction(two)
    assert both["skipped"] == [(0, 0), (0, 3), (1, 0), (1, L - 4)]
    rows = np.concatenate([acts[keep], two[1][[p for p in range(L) if p not in (0, L - 4)]]])
    assert both["mse"] == pytest.approx(_by_hand(sae, rows)[0], rel=1e-5)


def test_record_tokens_keeps_the_tokens_reconstruction_keeps(shared_models):
    m = shared_models("llama")
    prompts = ["I love this wonderful sunny day", "Tell me a story", "Paris"]
    got = S.record_tokens(m, prompts, site="layers.1", batch_size=2)
    solo = [m.to_numpy(m.run(p, record=["layers.1"]).activations["layers.1"])[0] for p in prompts]
    # by hand: each prompt's tokens after the first (a one-token prompt keeps its token), then the norm rule
    rest = np.concatenate([s[1:] if len(s) > 1 else s for s in solo])
    norms = np.linalg.norm(rest, axis=1)
    want = rest[norms <= 10 * np.median(norms)]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_reconstruction_refuses_activations_of_another_width():
    sae = _fitted(np.random.default_rng(1).normal(size=(5, 16)).astype(np.float32))
    with pytest.raises(ValueError, match=r"activations have shape \(5, 8\); this SAE reads width 16"):
        sae.reconstruction(np.zeros((5, 8)))
