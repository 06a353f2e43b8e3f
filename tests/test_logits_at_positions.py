"""``run(logits=...)`` keeps logits at chosen positions: equal to the full (B, L, V) logits gathered
there, on every tiny architecture and both backends, with left padding and with interventions; the
head runs on those positions only; bad positions are refused by name with the valid range."""

from __future__ import annotations

import numpy as np
import pytest

import tiny_models
from mlx_steer.engine import interventions as iv
from torch_fixtures import *  # noqa: F403  (fixtures)
from torch_fixtures import assert_untouched, snapshot

BACKENDS = ["mlx", "torch"]
PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14], [20, 21, 22, 23, 24]]  # left-padded by 0, 4, 2


def _full(m, spec):
    return m.to_numpy(m.run(PROMPTS, interventions=spec).logits)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arch", tiny_models.ARCHS)
def test_logits_at_positions_equal_the_full_logits_gathered(backend_models, backend, arch):
    m = backend_models(backend, arch)
    vec = np.random.default_rng(0).standard_normal(m.hidden_size).astype(np.float32)
    L, pad = 7, [0, 4, 2]
    for spec in (None, {"layers.1": iv.add_vector(vec, scale=3.0)},
                 [{"layers.2": iv.add_vector(vec, scale=-2.0, positions="last")}, None, {"layers.0": iv.scale(1.5)}]):
        full = _full(m, spec)
        cases = {
            "last": [[n - 1] for n in map(len, PROMPTS)],
            -1: [[n - 1] for n in map(len, PROMPTS)],
            (0, 2): [[0, 2]] * 3,
            (-2, 1, -2): [[n - 2, 1, n - 2] for n in map(len, PROMPTS)],
        }
        per_row = [[6, 0, 3], [2, 1, 0], [4, 4, 0]]
        cases[str(per_row)] = per_row
        for sel, want_pos in cases.items():
            arg = per_row if isinstance(sel, str) and sel.startswith("[") else list(sel) if isinstance(sel, tuple) else sel
            got = m.to_numpy(m.run(PROMPTS, interventions=spec, logits=arg).logits)
            want = np.stack([full[b, [pad[b] + p for p in want_pos[b]]] for b in range(3)])
            assert got.shape == want.shape, sel
            np.testing.assert_allclose(got, want, atol=5e-6, rtol=1e-5, err_msg=f"{arch} {sel}")
    assert m.run(PROMPTS, logits=False).logits is None
    assert m.to_numpy(m.run(PROMPTS, logits=True).logits).shape == (3, L, full.shape[-1])


def test_the_torch_head_runs_on_the_kept_positions_only(torch_models):
    m = torch_models("llama")
    seen = []
    handle = m.model.lm_head.register_forward_hook(lambda mod, args, out: seen.append(tuple(args[0].shape)))
    try:
        m.run(PROMPTS, logits="last")
        m.run(PROMPTS, logits=[[6, 0], [2, 1], [4, 3]])
    finally:
        handle.remove()
    assert seen[0] == (3, 1, m.hidden_size) and seen[1][1] <= 6


@pytest.mark.parametrize("arch", tiny_models.ARCHS)
def test_the_mlx_head_runs_on_the_kept_positions_only(shared_models, arch, monkeypatch):
    from mlx_steer.backends.mlx import logit_cut

    m = shared_models(arch)
    cuts = []
    real = logit_cut.cut_at_norm
    monkeypatch.setattr("mlx_steer.backends.mlx.logit_cut.cut_at_norm", lambda b, p: cuts.append(real(b, p)) or cuts[-1])
    m.run(PROMPTS, logits="last")
    assert cuts and cuts[0] is not None  # the norm was cut: the head saw (B, 1, D)
    norm = m.final_norm_path  # a hook on the final norm (or the head) is left to see every position
    got = m.to_numpy(m.run(PROMPTS, record=[norm], logits="last").logits)
    assert cuts[-1] is None and got.shape == (3, 1, m.to_numpy(m.run(PROMPTS).logits).shape[-1])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("logits, match", [
    (7, r"logits position 7 out of range for row 0 of 7 tokens; valid: -7..6"),
    ([0, -4], r"logits position -4 out of range for row 1 of 3 tokens; valid: -3..2"),
    ([[0], [3], [1]], r"logits position 3 out of range for row 1 of 3 tokens; valid: -3..2"),
    ([[0], [1]], r"one per prompt"),
    ([[0, 1], [1], [2]], r"one count for every row"),
    ([], r"names no position"),
    ("first", r"unknown logits selector 'first'"),
    ([1.5], r"must be ints, got 1.5"),
    (None, r"keeps no positions"),
])
def test_bad_positions_are_refused_by_name(fresh_models, backend, logits, match):
    m = fresh_models(backend, "llama")
    before = snapshot(m)
    with pytest.raises(ValueError, match=match):
        m.run(PROMPTS, logits=logits)
    assert_untouched(m, before)
