"""The same weights folder loaded by both backends gives the same numbers.

MLX (``mlx_steer.load``) and torch (``mlx_steer.torch_backend.load``) read one fp32 tiny folder per
architecture. Both use the module names of the Hugging Face checkpoint below the decoder-layer
container (``self_attn``/``mlp`` for llama-family models, ``attn``/``mlp`` for gpt2), so one short
site string means the same module on both; only the container differs for gpt2 (``model.h`` on
MLX, ``transformer.h`` on torch), which ``layers.i`` hides.
"""

import numpy as np
import pytest
import torch

from mlx_steer.engine import interventions as iv
from mlx_steer.engine.positions import Positions
from torch_fixtures import load_torch, np_, torch_models  # noqa: F401 - fixtures

ARCHS = ("llama", "qwen2", "gemma2", "phi3", "gpt2")
ATTN = {"gpt2": "attn"}  # the attention submodule's name; "self_attn" elsewhere
O_PROJ = {"gpt2": "attn.c_proj"}  # a Conv1D on torch, an nn.Linear on MLX
TOL = 1e-4
PROMPT = "The weather is great, happy people walk in the sun"
BATCH = ["I love", "The weather is great, happy people walk", "Tell me a story about a cat"]
N_GEN = 30

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(
        not torch.cuda.is_available(), reason="torch.cuda.is_available() is False: no CUDA device here")),
]


@pytest.fixture(scope="module")
def pair(shared_models, load_torch):
    """pair(arch, device) -> (mlx model, torch model on device), loaded from the same folder."""
    cache: dict = {}

    def get(arch: str, device: str = "cpu"):
        if (arch, device) not in cache:
            cache[arch, device] = (shared_models(arch), load_torch(arch, device=device))
        return cache[arch, device]

    return get


def max_diff(a_model, a, b_model, b) -> float:
    x, y = np_(a_model, a), np_(b_model, b)
    assert x.shape == y.shape
    return float(np.abs(x - y).max())


def _sites(arch: str, n_layers: int) -> list[str]:
    attn = ATTN.get(arch, "self_attn")
    out = []
    for i in range(n_layers):
        for sub in ("", f".{attn}", ".mlp"):
            out += [f"layers.{i}{sub}", f"layers.{i}{sub}:input"]
    return out


def _tails(m) -> set[str]:
    """Module names below decoder layer 0, relative to it."""
    head = m.layer_paths[0] + "."
    return {n[len(head):] for n in m.modules if n.startswith(head)}


@pytest.mark.parametrize("arch", ARCHS)
def test_same_module_names_and_sizes(pair, arch):
    mx_m, pt_m = pair(arch)
    assert (mx_m.num_layers, mx_m.hidden_size, mx_m.n_heads) == (pt_m.num_layers, pt_m.hidden_size, pt_m.n_heads)
    # every MLX module below a block exists on torch under the same name (MLX adds a rope module;
    # torch adds dropouts and activation modules)
    assert _tails(mx_m) - {"self_attn.rope"} <= _tails(pt_m)
    for short in ("mlp", ATTN.get(arch, "self_attn"), O_PROJ.get(arch, "self_attn.o_proj")):
        assert f"layers.0.{short}" in {f"layers.0.{t}" for t in _tails(mx_m) & _tails(pt_m)}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", ARCHS)
def test_recorded_block_and_submodule_activations(pair, arch, device):
    mx_m, pt_m = pair(arch, device)
    sites = _sites(arch, mx_m.num_layers)
    a, b = mx_m.run(PROMPT, record=sites), pt_m.run(PROMPT, record=sites)
    diffs = {s: max_diff(mx_m, a.activations[s], pt_m, b.activations[s]) for s in sites}
    worst = max(diffs, key=diffs.get)
    assert diffs[worst] <= TOL, (worst, diffs[worst])
    assert max_diff(mx_m, a.logits, pt_m, b.logits) <= TOL


@pytest.mark.parametrize("arch", ARCHS)
def test_padded_batch_recordings(pair, arch):
    """Left-padded batches (MLX runs gemma2 row by row; torch always batches) agree per real token."""
    mx_m, pt_m = pair(arch)
    record = {"layers.1": "last", "layers.3:input": "last"}
    a, b = mx_m.run(BATCH, record=record), pt_m.run(BATCH, record=record)
    for s in record:
        assert max_diff(mx_m, a.activations[s], pt_m, b.activations[s]) <= TOL
    a, b = (m.run(BATCH, record=["layers.2"], record_positions="prompt", reduce="mean") for m in (mx_m, pt_m))
    assert max_diff(mx_m, a.activations["layers.2"], pt_m, b.activations["layers.2"]) <= TOL
    la, lb = np_(mx_m, a.logits), np_(pt_m, b.logits)
    for r, pad in enumerate(a.padding):  # padding rows hold whatever each backend computes there
        assert np.abs(la[r, pad:] - lb[r, pad:]).max() <= TOL


@pytest.mark.parametrize("arch", ARCHS)
def test_embedding_sites(pair, arch):
    """The residual stream entering block 0 is the same on both backends. The embedding module's
    own output is too, except for gemma: transformers scales by sqrt(D) inside ``embed_tokens``
    (a ScaledWordEmbedding), mlx-lm after it, in the model's forward."""
    mx_m, pt_m = pair(arch)
    emb = "wte" if arch == "gpt2" else "model.embed_tokens"
    a, b = (m.run(PROMPT, record=[emb, "layers.0:input"]) for m in (mx_m, pt_m))
    assert max_diff(mx_m, a.activations["layers.0:input"], pt_m, b.activations["layers.0:input"]) == 0.0
    scale = np.float32(mx_m.hidden_size**0.5) if arch.startswith("gemma") else np.float32(1.0)
    np.testing.assert_array_equal(np_(mx_m, a.activations[emb]) * scale, np_(pt_m, b.activations[emb]))


def _selectors(P: int) -> dict:
    return {
        "all": "all", "last": "last", "index": 3, "indices": [0, P - 1], "window": Positions.window(2, P - 1),
        "prompt": "prompt", "generated": "generated", "first_generated": Positions.first_generated(3),
    }


def _interventions(m, arch: str, sel) -> dict:
    rng = np.random.default_rng(7)
    v = rng.normal(size=m.hidden_size).astype(np.float32)
    o_proj = f"layers.1.{O_PROJ.get(arch, 'self_attn.o_proj')}:input"
    return {
        "add_vector": {"layers.1": iv.add_vector(v, scale=4.0, positions=sel)},
        "scale": {"layers.1": iv.scale(0.5, positions=sel)},
        "set": {"layers.1": iv.set(v, positions=sel)},
        "zero": {"layers.2:input": iv.zero(positions=sel)},
        "mean_ablate": {"layers.1.mlp": iv.mean_ablate(v, positions=sel)},
        "ablate_heads": {o_proj: iv.ablate_heads([1, 2], positions=sel)},
        "project_out": {"layers.1": iv.project_out(v, positions=sel)},
        "custom": {"layers.1": iv.custom(lambda h: h * 0.5 + 1.0, positions=sel)},
        "several": {"layers.0": [iv.add_vector(v, positions=sel), iv.scale(2.0)], "layers.2": iv.project_out(v)},
    }


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_for_every_intervention_and_selector(pair, arch):
    mx_m, pt_m = pair(arch)
    P = len(mx_m.encode(PROMPT))
    assert P == len(pt_m.encode(PROMPT))
    worst = (0.0, None)
    for sel_name, sel in _selectors(P).items():
        specs_mx, specs_pt = _interventions(mx_m, arch, sel), _interventions(pt_m, arch, sel)
        if sel_name in ("generated", "first_generated"):  # a forward over prompts generates nothing
            for m, spec in ((mx_m, specs_mx["add_vector"]), (pt_m, specs_pt["add_vector"])):
                with pytest.raises(ValueError, match=r"generates nothing; use them while generating"):
                    m.run(PROMPT, interventions=spec)
            continue
        for kind in specs_mx:
            a = mx_m.run(PROMPT, interventions=specs_mx[kind], record=["layers.2"])
            b = pt_m.run(PROMPT, interventions=specs_pt[kind], record=["layers.2"])
            d = max(max_diff(mx_m, a.logits, pt_m, b.logits),
                    max_diff(mx_m, a.activations["layers.2"], pt_m, b.activations["layers.2"]))
            worst = max(worst, (d, (kind, sel_name)), key=lambda t: t[0])
    delta = np.random.default_rng(8).normal(size=(4, mx_m.hidden_size)).astype(np.float32) * 3
    a, b = (m.run(PROMPT, interventions={"layers.1": iv.add_vector(delta)}) for m in (mx_m, pt_m))
    worst = max(worst, (max_diff(mx_m, a.logits, pt_m, b.logits), ("front_aligned", "-")), key=lambda t: t[0])
    assert worst[0] <= TOL, worst


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_steered_generations_identical(pair, arch, device):
    mx_m, pt_m = pair(arch, device)
    prompt = mx_m.encode(PROMPT)
    P = len(prompt)
    v = np.random.default_rng(3).normal(size=mx_m.hidden_size).astype(np.float32)
    v *= 30.0 / np.linalg.norm(v)
    gen_selectors = dict(_selectors(P), indices=[0, P - 1, P + 2], window=Positions.window(2, P + 3))
    cases = {name: {"layers.1": iv.add_vector(v, positions=sel)} for name, sel in gen_selectors.items()}
    cases["ablate_heads"] = {f"layers.2.{O_PROJ.get(arch, 'self_attn.o_proj')}:input": iv.ablate_heads([0, 1])}
    cases["project_out+add"] = {"layers.1": iv.project_out(v), "layers.2": iv.add_vector(v, positions="generated")}
    plain = mx_m.generate_tokens(prompt, max_tokens=N_GEN)
    assert plain == pt_m.generate_tokens(prompt, max_tokens=N_GEN)
    differs = 0
    for name, spec in cases.items():
        a = mx_m.generate_tokens(prompt, max_tokens=N_GEN, interventions=spec)
        b = pt_m.generate_tokens(prompt, max_tokens=N_GEN, interventions=spec, prefill_step_size=4)
        assert a == b, name
        differs += a != plain
    assert differs >= len(cases) // 2  # the steering is strong enough to matter


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_recording_during_generation(pair, arch):
    """Both loops run the same forwards: the same rows are recorded, at the same positions."""
    mx_m, pt_m = pair(arch)
    out = []
    for m in (mx_m, pt_m):
        hooks = []
        toks = m.generate_tokens(PROMPT, max_tokens=8, record={"layers.2": "last", "layers.1": "generated"},
                                 hooks_out=hooks)
        out.append((toks, hooks[0].activations))
    (ta, aa), (tb, ab) = out
    assert ta == tb
    for s in ("layers.2", "layers.1"):
        assert max_diff(mx_m, aa[s], pt_m, ab[s]) <= TOL


@pytest.mark.parametrize("arch", ARCHS)
def test_unembed_and_banned_tokens(pair, arch):
    """The analysis contract: unembedding (tied heads: MLX goes through the embedding, torch through
    the tied ``lm_head``; same weights) and a token-banning logits processor."""
    mx_m, pt_m = pair(arch)
    if not hasattr(mx_m, "unembed"):
        pytest.skip("this MLX backend has no unembed() yet")
    x = np.random.default_rng(1).normal(size=(3, mx_m.hidden_size)).astype(np.float32)
    for final_norm in (False, True):
        assert np.abs(mx_m.unembed(x, final_norm=final_norm) - pt_m.unembed(x, final_norm=final_norm)).max() <= TOL
    assert pt_m.unembed(x[0]).shape == (384,) and mx_m.eos_token_ids == pt_m.eos_token_ids
    plain = pt_m.generate_tokens(PROMPT, max_tokens=10)
    banned = sorted(set(plain))[:2]
    a, b = (m.generate_tokens(PROMPT, max_tokens=10, logits_processors=[m.ban_tokens_processor(banned)])
            for m in (mx_m, pt_m))
    assert a == b and not set(b) & set(banned)


def test_sampling_filters_match_mlx_lm():
    """top-p, min-p, top-k and the repetition penalty keep exactly what mlx-lm keeps."""
    import mlx.core as mx
    from mlx_lm import sample_utils as su

    from mlx_steer.torch_backend import sampling as ts

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(1, 384)).astype(np.float32) * 3
    lp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    cases = [
        (lambda x: su.apply_top_p(x, 0.9), lambda x: ts.apply_top_p(x, 0.9)),
        (lambda x: su.apply_min_p(x, 0.05), lambda x: ts.apply_min_p(x, 0.05)),
        (lambda x: su.apply_min_p(x, 0.5, 7), lambda x: ts.apply_min_p(x, 0.5, 7)),
        (lambda x: su.apply_top_k(x, 20), lambda x: ts.apply_top_k(x, 20)),
    ]
    for f_mx, f_pt in cases:
        keep_mx = np.isfinite(np.array(f_mx(mx.array(lp))))
        keep_pt = np.isfinite(f_pt(torch.from_numpy(lp)).numpy())
        assert keep_mx.sum() > 1 and np.array_equal(keep_mx, keep_pt)
    tokens = [5, 9, 9, 300, 17]
    pen_mx = su.make_repetition_penalty(1.3, 3)(mx.array(tokens), mx.array(logits))
    pen_pt = ts.make_repetition_penalty(1.3, 3)(torch.tensor(tokens), torch.from_numpy(logits.copy()))
    np.testing.assert_allclose(np.array(pen_mx), pen_pt.numpy(), rtol=1e-6)


# ---- extraction and vector files ------------------------------------------------------------------
POS = ["I love this wonderful day", "happy people walk in the sun", "This is great", "I love the sun and the rain"]
NEG = ["I hate the rain", "This is terrible, awful and sad news", "sad news", "I hate this terrible day"]


@pytest.mark.parametrize("method,read,site", [
    ("mean_diff", "last", "layers.1"), ("mean_diff", "mean", "layers.2:input"),
    ("pca", "last", "layers.2"), ("probe", "mean", "layers.1"),
])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma2", "gpt2"])
def test_extraction_parity(pair, arch, method, read, site):
    import mlx_steer as ms

    m_mx, m_pt = pair(arch)
    a = ms.extract(m_mx, POS, NEG, sites=[site], method=method, read=read, batch_size=3)
    b = ms.extract(m_pt, POS, NEG, sites=[site], method=method, read=read, batch_size=3)
    da, db = a[m_mx.resolve_path(site.split(":")[0])], b[m_pt.resolve_path(site.split(":")[0])]
    cos = float(da @ db / np.linalg.norm(da) / np.linalg.norm(db))
    assert cos >= 0.9999, cos


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_actadd_parity(pair, arch):
    import mlx_steer as ms

    m_mx, m_pt = pair(arch)
    a = ms.extract(m_mx, ["I love"], ["I hate this day"], sites=["layers.1:input"], method="actadd")
    b = ms.extract(m_pt, ["I love"], ["I hate this day"], sites=["layers.1:input"], method="actadd")
    da, db = a[a.sites[0]], b[b.sites[0]]
    assert da.shape == db.shape
    cos = float(da.ravel() @ db.ravel() / np.linalg.norm(da) / np.linalg.norm(db))
    assert cos >= 0.9999


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_vector_files_cross_backends(pair, arch, tmp_path):
    """A file written from one backend loads on the other and steers it the same way."""
    import mlx_steer as ms

    m_mx, m_pt = pair(arch)
    vec = ms.extract(m_pt, POS, NEG, sites=["layers.1", "layers.2"])
    path = ms.save_vector(vec, tmp_path / "v.safetensors")
    on_mx = ms.load_vector(path, model=m_mx)
    assert set(on_mx.sites) == {m_mx.resolve_path("layers.1"), m_mx.resolve_path("layers.2")}
    back = ms.load_vector(ms.save_vector(on_mx, tmp_path / "w.safetensors"), model=m_pt)
    for s in vec.sites:
        assert np.array_equal(back[s], vec[s])
    lm = np_(m_mx, m_mx.run(PROMPT, interventions=on_mx.to_interventions(scale=3.0)).logits)
    lt = np_(m_pt, m_pt.run(PROMPT, interventions=back.to_interventions(scale=3.0)).logits)
    assert np.abs(lm - lt).max() <= TOL


# ---- the real model -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smollm2_pair(smollm2, smollm2_dir):
    from mlx_steer import torch_backend

    return smollm2, torch_backend.load(str(smollm2_dir))


@pytest.mark.slow
def test_real_model_steered_generations_identical(smollm2_pair):
    """SmolLM2-135M-Instruct (fp32): greedy steered generations, 3 prompts x 2 strengths."""
    import mlx_steer as ms
    from mlx_steer.demo import NEGATIVE, POSITIVE

    m_mx, m_pt = smollm2_pair
    vec = ms.extract(m_mx, POSITIVE[:3], NEGATIVE[:3], sites=["layers.7"], read="mean")
    for prompt in ("I think that my neighbour is", "Today at work, I", "The best thing about winter is"):
        for scale in (-2.0, 3.0):
            spec = vec.to_interventions(scale=scale)
            a = m_mx.generate_tokens(prompt, max_tokens=16, interventions=spec)
            b = m_pt.generate_tokens(prompt, max_tokens=16, interventions=spec)
            assert a == b, (prompt, scale)
