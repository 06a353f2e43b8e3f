"""Generation from shared prompt prefixes (mlx_steer.engine.prefix_generation): every (prompt, cell)
row generated from its prompt's cached prefix gives the tokens the full path (``batch_generate``,
each row running its whole prompt) gives, on both backends and several architectures, with prompts
of different lengths in one batch and the random and flipped controls; steering that touches the
prompt is refused (no hook left behind) and ``generation_scores`` then runs the full path, with the
same scores."""

from __future__ import annotations

import numpy as np
import pytest

from mlx_steer.engine import interventions as iv
from mlx_steer.engine.positions import Positions
from mlx_steer.engine.prefix_generation import PromptPrefixes
from mlx_steer.engine.shared_prefix import PrefixRefused
from mlx_steer.evaluate.grid import Grid
from mlx_steer.evaluate.open_ended import generation_scores
from torch_fixtures import *  # noqa: F403  (fixtures)
from torch_fixtures import assert_untouched, snapshot

BACKENDS = ["mlx", "torch"]
PROMPTS = [[5, 9, 14, 22, 31, 8, 40], [17, 6, 29], [33, 12, 7, 50, 21, 19, 44, 9, 26, 3, 15]]


def _judge(texts):
    return [float(len(t)) for t in texts]


def _vector(m, seed=0):
    return np.random.default_rng(seed).standard_normal(m.hidden_size).astype(np.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arch", ["llama", "qwen2", "phi3", "gpt2"])
def test_rows_from_prefixes_equal_the_full_path(backend_models, backend, arch):
    m = backend_models(backend, arch)
    vec = _vector(m)
    def add(scale, positions, layer=1):
        return {f"layers.{layer}": iv.add_vector(vec, scale=scale, positions=positions)}

    specs = [None, add(6.0, "last"), add(-6.0, "generated"), add(8.0, Positions.first_generated(2), 0),
             add(6.0, "last", 2), None, add(-8.0, "last")]
    of = [0, 1, 2, 0, 2, 1, 1]
    pp = PromptPrefixes(m, PROMPTS)
    got = pp.batch_generate(of, max_tokens=7, interventions=specs)
    ref = m.batch_generate([PROMPTS[o] for o in of], max_tokens=7, interventions=specs)
    assert got.token_ids == ref.token_ids
    assert got.texts == ref.texts and got.finish_reasons == ref.finish_reasons
    # the steering made a difference (rows 1 and 6 steer prompt 1, row 5 does not), and a run leaves
    # the kept caches as they were
    assert got.token_ids[1] != got.token_ids[5] or got.token_ids[6] != got.token_ids[5]
    again = pp.batch_generate(of[:3], max_tokens=7, interventions=specs[:3])
    assert again.token_ids == ref.token_ids[:3]


@pytest.mark.parametrize("backend", BACKENDS)
def test_seeded_sampling_draws_the_same_tokens(backend_models, backend):
    m = backend_models(backend, "llama")
    vec = _vector(m, 2)
    specs = [None, {"layers.1": iv.add_vector(vec, scale=4.0, positions="generated")}] * 2
    of = [0, 2, 1, 0]
    pp = PromptPrefixes(m, PROMPTS)
    got = pp.batch_generate(of, max_tokens=8, interventions=specs, temp=1.0, seed=7)
    ref = m.batch_generate([PROMPTS[o] for o in of], max_tokens=8, interventions=specs, temp=1.0, seed=7)
    assert got.token_ids == ref.token_ids
    other = m.batch_generate([PROMPTS[o] for o in of], max_tokens=8, interventions=specs, temp=1.0, seed=8)
    assert other.token_ids != ref.token_ids  # the seed matters: equal tokens are not a given


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", ["all", "prompt", "last_n", "index", "front", "gate"])
def test_steering_the_prompt_is_refused_and_leaves_no_hook(fresh_models, backend, case):
    m = fresh_models(backend, "llama")
    vec = _vector(m)
    if case == "front":
        spec = {"layers.1": iv.add_vector(np.ones((2, m.hidden_size), np.float32))}
    elif case == "gate":
        rule = iv.condition(vec, site="layers.1", threshold=-1.0)
        spec = {"layers.1": iv.add_vector(vec, positions="generated").when(rule)}
    else:
        positions = {"last_n": Positions.last_n(2), "index": [1]}.get(case, case)
        spec = {"layers.1": iv.add_vector(vec, positions=positions)}
    pp = PromptPrefixes(m, PROMPTS)
    before = snapshot(m)
    with pytest.raises(PrefixRefused, match="prefix|prompt"):
        pp.batch_generate([0, 1, 2], max_tokens=3, interventions=[None, spec, None])
    assert_untouched(m, before)
    assert not m.registry.live()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("positions", ["last", "generated", "all"])
def test_generation_scores_equal_the_full_path(backend_models, backend, positions, monkeypatch):
    m = backend_models(backend, "llama")
    prompts = ["The cat", "I think the day is long", "Why"]
    grid = Grid(m, vector=_vector(m, 3), layers=[1], strengths=[-4.0, 0.0, 6.0], controls=("random", "flipped"),
                positions=positions)
    used = []
    run = PromptPrefixes.batch_generate
    monkeypatch.setattr(PromptPrefixes, "batch_generate", lambda self, *a, **k: used.append(1) or run(self, *a, **k))
    kw = dict(judge=_judge, max_tokens=6, batch_size=8)
    got = generation_scores(m, prompts, grid, **kw)
    assert bool(used) == (positions != "all")  # "all" steers the prompt: the full path ran
    ref = generation_scores(m, prompts, grid, shared_prefix=False, **kw)
    assert len(used) == (0 if positions == "all" else -(-len(ref) * len(prompts) // 8))  # every batch
    # unsteered, steering and random at -4 and 6, flipped at -4 and 6 (steering at 4 and -6)
    assert got.keys() == ref.keys() and len(ref) == 7
    for k in ref:
        assert got[k].texts == ref[k].texts, k
        np.testing.assert_array_equal(got[k].scores, ref[k].scores)
        assert got[k].n_tokens == ref[k].n_tokens and got[k].nll == ref[k].nll
    assert len({got[k].texts for k in got}) > 1  # the cells differ


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_smollm2_generations_from_shared_prefixes(smollm2, smollm2_torch, backend):
    m = smollm2 if backend == "mlx" else smollm2_torch
    prompts = [m.encode(p, chat=True) for p in ("Tell me about cats.", "What should I cook tonight for my friends?")]
    vec = np.random.default_rng(4).standard_normal(m.hidden_size).astype(np.float32)
    vec *= 4.0 / np.linalg.norm(vec)
    grid = Grid(m, vector=vec, layers=[10], strengths=[6.0], controls=("random", "flipped"), positions="last")
    specs = [grid.interventions(c) for c in grid.distinct().values()]  # unsteered, +6, random, -6 (flipped)
    rows = [(s, i) for s in specs for i in range(len(prompts))]  # prompts of different lengths in one batch
    got = PromptPrefixes(m, prompts).batch_generate([i for _, i in rows], max_tokens=4, interventions=[s for s, _ in rows])
    ref = m.batch_generate([prompts[i] for _, i in rows], max_tokens=4, interventions=[s for s, _ in rows])
    assert got.token_ids == ref.token_ids
    assert len({tuple(t) for t in got.token_ids[::2]}) > 1  # the cells differ


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_model_whose_cache_cannot_be_shared_falls_back(backend_models, backend):
    """gemma2: mlx-lm's padded batches are not exact at some sizes, and transformers keeps its
    sliding-window layers in their own cache class; generation_scores then runs the full path."""
    m = backend_models(backend, "gemma2")
    with pytest.raises(PrefixRefused, match="padded batches|cache layers"):
        PromptPrefixes(m, [m.encode(p, chat=True) for p in ("The cat", "I think the day is long", "Why")])
    grid = Grid(m, vector=_vector(m, 5), layers=[1], strengths=[4.0], controls=("flipped",), positions="last")
    kw = dict(judge=_judge, max_tokens=4, batch_size=6)
    got = generation_scores(m, ["The cat", "I think the day is long", "Why"], grid, **kw)
    ref = generation_scores(m, ["The cat", "I think the day is long", "Why"], grid, shared_prefix=False, **kw)
    assert got.keys() == ref.keys()
    for k in ref:
        assert got[k].texts == ref[k].texts and got[k].nll == ref[k].nll, k
