"""What is specific to the torch backend: transformers' own ``hidden_states`` and ``generate``, torch
hooks and module names, attention-mask padding, torch dtypes and RNG, torch-only options.

The contracts both backends keep run on both with one body in the file of their concept
(test_recording, test_generation, test_batching, test_lifetime, test_errors, test_rows...).
Oracles here: transformers' ``hidden_states``, test-owned torch forward hooks, zeroed weight columns.
"""

import subprocess
import sys

import numpy as np
import pytest
import torch

from mlx_steer.engine import interventions as iv
from tiny_models import ARCHS
from torch_fixtures import FINAL_NORM, load_torch, np_, torch_models  # noqa: F401 - fixtures

PROMPT = "I love this wonderful day"
GEN_PROMPT = "Tell me a story about a cat who lives on"
BATCH = ["I love", "The weather is great, happy people walk", "Tell me a story about a cat"]
N_NEW = 10


def _vector(m, seed=3, norm=None):
    v = np.random.default_rng(seed).normal(size=m.hidden_size).astype(np.float32)
    return v * (norm / np.linalg.norm(v)) if norm else v


# -- recording ---------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_block_outputs_match_hf_hidden_states(load_torch, arch):
    """hidden_states[i + 1] is block i's output, except the last entry, which has the final norm."""
    m = load_torch(arch)  # fresh: output_hidden_states installs transformers' capture hooks for good
    tokens = m.encode(PROMPT)
    sites = [f"layers.{i}" for i in range(m.num_layers)]
    tr = m.run(PROMPT, record=sites + ["layers.0:input"])
    with torch.no_grad():
        hs = m.model(input_ids=torch.tensor([tokens]), output_hidden_states=True).hidden_states
    assert len(hs) == m.num_layers + 1
    assert torch.equal(tr.activations["layers.0:input"], hs[0])
    for i in range(m.num_layers - 1):
        got = tr.activations[sites[i]]
        assert got.shape == (1, len(tokens), m.hidden_size)
        torch.testing.assert_close(got, hs[i + 1], rtol=0, atol=1e-6)
    last = tr.activations[sites[-1]]
    with torch.no_grad():
        normed = m.modules[FINAL_NORM.get(arch, "model.norm")](last)
    torch.testing.assert_close(normed, hs[-1], rtol=0, atol=1e-5)
    assert not torch.allclose(last, hs[-1], atol=1e-3)  # the caveat is real


def test_submodule_sites_and_short_keys(torch_models):
    m = torch_models("gpt2")
    assert m.layer_paths[0] == "transformer.h.0" and m.resolve_path("layers.3.attn") == "transformer.h.3.attn"
    assert m.resolve_path("h.3") == "transformer.h.3" == m.resolve_path("layers.-1")
    tr = m.run(PROMPT, record=["layers.1.mlp", "h.1.attn", "layers.1", "layers.1:input"])
    out, x = np_(m, tr.activations["layers.1"]), np_(m, tr.activations["transformer.h.1:input"])
    attn, mlp = np_(m, tr.activations["layers.1.attn"]), np_(m, tr.activations["transformer.h.1.mlp"])
    np.testing.assert_allclose(out - mlp, x + attn, atol=1e-5)  # gpt2 block: h = x + attn; out = h + mlp


# -- hooks ---------------------------------------------------------------------------------------
def test_parameter_names_unchanged_while_hooked(torch_models):
    m = torch_models("qwen2")
    names = [k for k, _ in m.model.named_parameters()]
    classes = [type(x) for x in m.model.modules()]
    with m.steer({"layers.1": iv.add_vector(np.ones(m.hidden_size)), "layers.1.self_attn.o_proj:input": iv.ablate_heads(0)}):
        assert [k for k, _ in m.model.named_parameters()] == names
        assert [type(x) for x in m.model.modules()] == classes


def test_import_mlx_steer_does_not_import_torch():
    code = "import mlx_steer, sys; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# -- bad input -----------------------------------------------------------------------------------
def test_torch_only_bad_options(torch_models):
    m = torch_models("llama")
    with pytest.raises(ValueError, match=r"unsupported option\(s\) for the torch backend: max_kv_size"):
        m.generate(PROMPT, max_tokens=3, max_kv_size=10)
    with pytest.raises(ValueError, match="prefill_step_size must be a positive int"):
        m.generate(PROMPT, max_tokens=3, prefill_step_size=0)
    with pytest.raises(ValueError, match=r"`top_k` has to be an integer in the \(0, 384\) interval"):
        m.generate(PROMPT, max_tokens=3, temp=1.0, top_k=1000)


# -- generation ----------------------------------------------------------------------------------
def test_hf_generate_under_steer_equals_our_loop(torch_models):
    """A raw transformers ``generate`` (DynamicCache, no compile) gets the same absolute positions."""
    m = torch_models("llama")
    prompt = m.encode(GEN_PROMPT)
    v = _vector(m, norm=40.0)
    for positions in ("all", "last", [0, 3]):
        ours = m.generate_tokens(prompt, max_tokens=N_NEW, interventions={"layers.1": iv.add_vector(v, positions=positions)})
        with m.steer({"layers.1": iv.add_vector(v, positions=positions)}), torch.no_grad():
            out = m.model.generate(torch.tensor([prompt]), max_new_tokens=N_NEW, do_sample=False,
                                   disable_compile=True, pad_token_id=0)
        hf = out[0, len(prompt):].tolist()
        assert len(ours) == N_NEW and hf[:N_NEW] == ours, positions


def test_samplers_seeded_and_processors(torch_models):
    m = torch_models("llama")
    prompt = m.encode(GEN_PROMPT)
    opts = dict(temp=0.8, top_p=0.9, min_p=0.05, top_k=50, repetition_penalty=1.3, max_tokens=15)
    a = m.generate_tokens(prompt, seed=11, **opts)
    assert a == m.generate_tokens(prompt, seed=11, **opts)
    noop = {"layers.1": iv.add_vector(_vector(m), scale=0.0)}
    assert a == m.generate_tokens(prompt, seed=11, interventions=noop, **opts)
    rng_state = torch.get_rng_state()
    m.generate_tokens(prompt, seed=3, temp=1.0, max_tokens=3)
    assert torch.equal(torch.get_rng_state(), rng_state)  # a private generator


def test_stream_protocol(torch_models):
    m = torch_models("gpt2")
    steps = list(m.stream_generate(GEN_PROMPT, max_tokens=12))
    assert all(s.finish_reason is None for s in steps[:-1]) and steps[-1].finish_reason in ("length", "stop")
    tokens = m.generate_tokens(GEN_PROMPT, max_tokens=12)
    assert "".join(s.text for s in steps) == m.tokenizer.decode(tokens)
    assert steps[0].prompt_tokens == len(m.encode(GEN_PROMPT)) and steps[-1].logprobs.shape == (384,)


# -- batches -------------------------------------------------------------------------------------
def test_raw_padded_call_reads_padding_from_attention_mask(torch_models):
    """Outside trace/generate, left padding comes from the attention mask: position 0 is each row's
    first real token."""
    m = torch_models("llama")
    rows = [m.encode(p) for p in BATCH]
    L = max(map(len, rows))
    ids = torch.tensor([[0] * (L - len(r)) + r for r in rows])
    mask = (torch.arange(L)[None] >= torch.tensor([L - len(r) for r in rows])[:, None]).long()
    v = _vector(m, norm=10.0)
    with m.record({"layers.1": "all"}) as clean, torch.no_grad():
        m.model(input_ids=ids, attention_mask=mask)
    with m.hooks(interventions={"layers.1": iv.add_vector(v, positions=0)}, record={"layers.1": "all"}) as rec, torch.no_grad():
        m.model(input_ids=ids, attention_mask=mask)
    diff = np_(m, rec.activations["layers.1"]) - np_(m, clean.activations["layers.1"])
    for b, r in enumerate(rows):
        first = L - len(r)
        np.testing.assert_allclose(diff[b, first], v, atol=1e-5)
        assert np.abs(np.delete(diff[b], first, axis=0)).max() == 0


# -- ops -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch,o_proj", [("llama", "self_attn.o_proj"), ("gpt2", "attn.c_proj"), ("phi3", "self_attn.o_proj")])
def test_head_ablation_equals_zeroed_columns(load_torch, arch, o_proj):
    m = load_torch(arch)
    heads = [1, 3]
    site = f"layers.2.{o_proj}:input"
    ablated = np_(m, m.run(PROMPT, interventions={site: iv.ablate_heads(heads)}).logits)
    proj = m.modules[m.resolve(site).path]
    hd = m.hidden_size // m.n_heads
    with torch.no_grad():
        for h in heads:  # nn.Linear weight is (out, in); gpt2's Conv1D weight is (in, out)
            if isinstance(proj, torch.nn.Linear):
                proj.weight[:, h * hd : (h + 1) * hd] = 0.0
            else:
                proj.weight[h * hd : (h + 1) * hd, :] = 0.0
    expected = np_(m, m.run(PROMPT).logits)
    np.testing.assert_allclose(ablated, expected, atol=1e-5)


def test_project_out_set_scale_and_order(torch_models):
    m = torch_models("gemma2")
    d = _vector(m, seed=4)
    u = d / np.linalg.norm(d)
    clean = np_(m, m.run(PROMPT, record=["layers.1"]).activations["layers.1"])[0]
    out = np_(m, m.run(PROMPT, record=["layers.1"], interventions={"layers.1": iv.project_out(d)}).activations["layers.1"])[0]
    assert np.abs(clean @ u).max() > 0.1 and np.abs(out @ u).max() < 1e-4
    mean = _vector(m, seed=6)
    got = np_(m, m.run(PROMPT, record=["layers.1"], interventions={"layers.1": iv.mean_ablate(mean, positions=[0, 2])}).activations["layers.1"])[0]
    assert np.array_equal(got[[0, 2]], np.stack([mean, mean]))
    assert np.array_equal(np.delete(got, [0, 2], axis=0), np.delete(clean, [0, 2], axis=0))
    zeroed = np_(m, m.run(PROMPT, record=["layers.1"], interventions={"layers.1": iv.zero(positions="last")}).activations["layers.1"])[0]
    assert not zeroed[-1].any() and np.array_equal(zeroed[:-1], clean[:-1])
    both = np_(m, m.run(PROMPT, record=["layers.1"], interventions={"layers.1": [iv.add_vector(d), iv.scale(0.5)]}).activations["layers.1"])[0]
    np.testing.assert_allclose(both, (clean + d) * 0.5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_keeps_dtype_and_adds_exactly(load_torch, dtype):
    m = load_torch("llama", dtype=dtype)
    assert m.dtype == dtype
    v = _vector(m, seed=0)
    a = m.run(PROMPT, record=["layers.1"]).activations["layers.1"]
    steered = m.run(PROMPT, record=["layers.2:input"], interventions={"layers.1": iv.add_vector(v)})
    b = steered.activations["layers.2:input"]
    assert a.dtype == dtype and b.dtype == dtype  # a float32 vector does not upcast the stream
    assert torch.equal(b, a + torch.from_numpy(v).to(dtype))
    assert m.generate_tokens(PROMPT, max_tokens=8) != m.generate_tokens(PROMPT, max_tokens=8, interventions={"layers.1": iv.add_vector(v * 40)})


def test_steering_vector_like_objects_are_accepted(torch_models):
    m = torch_models("llama")
    v = _vector(m)

    class Vec:  # the duck type SteerableModel accepts: anything with to_interventions(scale=, positions=)
        def to_interventions(self, *, scale, positions):
            return {"layers.1": iv.add_vector(v, scale=scale, positions=positions)}

    with m.steer(Vec(), scale=2.0, positions="last"):
        got = np_(m, m.run(PROMPT).logits)
    expected = np_(m, m.run(PROMPT, interventions={"layers.1": iv.add_vector(2 * v, positions="last")}).logits)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert m.generate_tokens(PROMPT, max_tokens=4, interventions=Vec()) == m.generate_tokens(
        PROMPT, max_tokens=4, interventions={"layers.1": iv.add_vector(v)})


def test_unembed_ignores_hooks_on_norm_and_head(torch_models):
    m = torch_models("llama")
    x = np.random.default_rng(1).normal(size=(2, m.hidden_size)).astype(np.float32)
    expected = m.unembed(x, final_norm=True)
    with m.steer({"model.norm": iv.zero(), "lm_head": iv.scale(3.0)}):
        assert np.array_equal(m.unembed(x, final_norm=True), expected)
    with pytest.raises(ValueError, match=r"vectors must be \(K, 64\)"):
        m.unembed(np.ones(3))


@pytest.mark.parametrize("keyword", ["cache", "past_key_values"])
def test_position_tracker_reads_the_cache_under_either_name(keyword):
    """transformers >= 5.24 passes the KV cache to the decoder as ``cache``, earlier releases as
    ``past_key_values``: both give absolute positions offset by the cache's length."""
    from transformers import DynamicCache

    from mlx_steer.backends.torch.arrays import XP
    from mlx_steer.backends.torch.hooks import attach_tracker, cache_keyword
    from mlx_steer.engine.positions import PositionState

    class Decoder(torch.nn.Module):  # the signature is all the tracker reads
        def forward(self, input_ids=None, attention_mask=None, **kwargs):
            return input_ids

    cache = DynamicCache()
    cache.update(torch.zeros(1, 2, 5, 4), torch.zeros(1, 2, 5, 4), layer_idx=0)  # 5 tokens seen
    state, dec = PositionState(XP), Decoder()
    handle = attach_tracker(dec, state)
    try:
        dec(input_ids=torch.tensor([[7, 8, 9]]), **{keyword: cache})
    finally:
        handle.remove()
    assert state.pos.tolist() == [[5, 6, 7]]

    class New(torch.nn.Module):
        def forward(self, input_ids=None, cache=None):
            return input_ids

    class Old(torch.nn.Module):
        def forward(self, input_ids=None, past_key_values=None):
            return input_ids

    assert (cache_keyword(New()), cache_keyword(Old())) == ("cache", "past_key_values")
