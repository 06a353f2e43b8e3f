"""Attention patterns (``mlx_steer.heads``) equal transformers' eager attention with
``output_attentions=True`` on the same weights: for prompts, left-padded batches (each row against
its solo run) and tokens generated under the KV cache, on both backends and every tiny architecture.
"""

import numpy as np
import pytest
import torch

from mlx_steer.heads import attention_patterns, record_patterns
from tiny_models import ARCHS
from torch_fixtures import *  # noqa: F403  (fixtures)
from torch_fixtures import BACKENDS, assert_untouched, snapshot

TOL = 1e-5  # fp32, against transformers' eager attention
BATCH = ["I love", "The weather is great, happy people walk", "Tell me a story about a cat"]
LAYERS = [0, 3]


@pytest.fixture(scope="module")
def eager(tiny_dir):
    """eager(arch) -> the folder loaded by transformers alone with eager attention (the oracle)."""
    from transformers import AutoModelForCausalLM

    cache: dict = {}

    def get(arch: str):
        if arch not in cache:
            cache[arch] = AutoModelForCausalLM.from_pretrained(
                str(tiny_dir(arch)), dtype=torch.float32, attn_implementation="eager").eval()
        return cache[arch]

    return get


def eager_patterns(hf, tokens: list[int]) -> list[np.ndarray]:
    """(H, n, n) per layer for one unpadded sequence, from transformers' eager attention."""
    with torch.no_grad():
        out = hf(input_ids=torch.tensor([tokens]), output_attentions=True, use_cache=False)
    return [a[0].numpy() for a in out.attentions]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arch", ARCHS)
def test_left_padded_batch_rows_equal_eager_solo(backend_models, eager, backend, arch):
    m = backend_models(backend, arch)
    before = snapshot(m)
    got = attention_patterns(m, BATCH, layers=LAYERS)
    assert_untouched(m, before)
    assert got.layers == LAYERS
    tokens = [m.encode(p) for p in BATCH]
    assert got.lengths == tuple(len(t) for t in tokens)
    for r, t in enumerate(tokens):
        want = eager_patterns(eager(arch), t)
        for layer in LAYERS:
            row = got.row(r, layer)
            assert row.shape == want[layer].shape
            np.testing.assert_allclose(row, want[layer], atol=TOL, rtol=0)
            n = len(t)
            assert np.allclose(row.sum(-1), 1.0, atol=1e-6)
            assert (row[:, np.triu_indices(n, 1)[0], np.triu_indices(n, 1)[1]] == 0).all()  # future keys
            assert (got[layer][r, :, n:] == 0).all() and (got[layer][r, :, :, n:] == 0).all()  # past the row


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arch", ARCHS)
def test_generated_rows_cover_their_whole_context(backend_models, eager, backend, arch):
    m = backend_models(backend, arch)
    prompt = m.encode("Tell me a story about")
    with record_patterns(m, layers=LAYERS) as rec:
        new = m.generate_tokens(prompt, max_tokens=6)
    got = rec.result()
    seq = prompt + new
    n = got.lengths[0]
    assert len(seq) - 1 <= n <= len(seq) and len(new) == 6  # the last token is fed back only if a step ran after it
    want = eager_patterns(eager(arch), seq[:n])
    for layer in LAYERS:
        np.testing.assert_allclose(got.row(0, layer), want[layer], atol=TOL, rtol=0)
        assert (got.row(0, layer)[:, len(prompt):, : len(prompt)].sum(-1) > 0).all()  # decode rows see the prompt


@pytest.mark.parametrize("backend", BACKENDS)
def test_chunked_prefill_and_a_second_turn_equal_eager(backend_models, eager, backend):
    m = backend_models(backend, "qwen2")
    cache = m.make_prompt_cache()
    first, second = m.encode("Tell me a story about"), m.encode(" a cat who lives")
    with record_patterns(m, layers=[2]) as rec:
        new1 = m.generate_tokens(first, max_tokens=3, prefill_step_size=2, prompt_cache=cache)
        new2 = m.generate_tokens(second, max_tokens=3, prefill_step_size=2, prompt_cache=cache)
    got = rec.result()
    seq = first + new1 + second + new2
    n = got.lengths[0]
    assert len(seq) - 1 <= n <= len(seq)
    np.testing.assert_allclose(got.row(0, 2), eager_patterns(eager("qwen2"), seq[:n])[2], atol=TOL, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batched_generation_rows_equal_eager(backend_models, eager, backend):
    m = backend_models(backend, "llama")
    prompts = ["I love", "The weather is great, happy"]
    with record_patterns(m, layers=[1]) as rec:
        out = m.batch_generate(prompts, max_tokens=4)
    got = rec.result()
    for r, p in enumerate(prompts):
        seq = m.encode(p) + out.token_ids[r]
        n = got.lengths[r]
        assert len(seq) - 1 <= n <= len(seq)
        np.testing.assert_allclose(got.row(r, 1), eager_patterns(eager("llama"), seq[:n])[1], atol=TOL, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arch", ["qwen2", "gpt2"])
def test_steered_patterns_equal_eager_with_the_same_vector_added(backend_models, eager, backend, arch):
    from mlx_steer.engine import interventions as iv

    m = backend_models(backend, arch)
    v = np.random.default_rng(0).normal(0, 1.0, 64).astype(np.float32)
    got = attention_patterns(m, BATCH, layers=[1, 2], interventions={"layers.0": iv.add_vector(v)})
    hf = eager(arch)
    blocks = hf.model.layers if hasattr(hf, "model") else hf.transformer.h
    # a test-owned hook on transformers' block 0: its output plus v at every position
    handle = blocks[0].register_forward_hook(lambda mod, args, out: (out[0] + torch.from_numpy(v),) + tuple(out[1:])
                                             if isinstance(out, tuple) else out + torch.from_numpy(v))
    try:
        for r, p in enumerate(BATCH):
            want = eager_patterns(hf, m.encode(p))
            plain = attention_patterns(m, p, layers=1).row(0, 1)
            for layer in (1, 2):
                np.testing.assert_allclose(got.row(r, layer), want[layer], atol=TOL, rtol=0)
            assert np.abs(got.row(r, 1) - plain).max() > 1e-3  # the vector moved the pattern
    finally:
        handle.remove()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt2"])
def test_outputs_unchanged_while_recording(backend_models, backend, arch):
    m = backend_models(backend, arch)
    plain = m.to_numpy(m.run(BATCH).logits)
    with record_patterns(m, layers=None) as rec:
        during = m.to_numpy(m.run(BATCH).logits)
    assert np.array_equal(plain, during)
    assert rec.result().layers == [0, 1, 2, 3]
    assert np.array_equal(plain, m.to_numpy(m.run(BATCH).logits))
    assert_default_path(m)


def assert_default_path(m) -> None:
    """Nothing of a recording is left: mlx-lm's model files call their own attention again, every
    torch attention module holds the model's config."""
    if type(m).__name__ == "TorchSteerableModel":
        attns = [mod for name, mod in m.modules.items() if name.endswith(("self_attn", ".attn"))]
        assert attns and all(a.config is m.model.config for a in attns)
        return
    import mlx.core as mx
    import mlx_lm.models.base as base
    import mlx_lm.models.gemma2 as gemma2
    import mlx_lm.models.llama as llama

    assert llama.scaled_dot_product_attention is base.scaled_dot_product_attention and gemma2.mx is mx


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_an_error_in_the_block_undoes_the_recording(backend_models, backend, arch):
    m = backend_models(backend, arch)
    before = snapshot(m)
    with pytest.raises(RuntimeError, match="boom"), record_patterns(m, layers=[1]):
        m.run("I love")
        raise RuntimeError("boom")
    assert_untouched(m, before)
    assert_default_path(m)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_layers_refused_and_nothing_installed(backend_models, backend):
    m = backend_models(backend, "qwen2")
    before = snapshot(m)
    with pytest.raises(ValueError, match=r"layer 4 out of range for a 4-layer model; valid: -4\.\.3"):
        attention_patterns(m, "I love", layers=[0, 4])
    with pytest.raises(ValueError, match="layers is empty"):
        attention_patterns(m, "I love", layers=[])
    assert_untouched(m, before)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_recording_without_a_forward_says_so(backend_models, backend):
    m = backend_models(backend, "llama")
    with record_patterns(m, layers=[1, 2]) as rec:
        pass
    with pytest.raises(ValueError, match=r"no attention pattern was recorded at layers \[1, 2\]"):
        rec.result()


def test_mlx_architecture_without_readable_attention_refused_by_name(load_tiny, monkeypatch):
    import mlx_lm.models.phi3 as phi3

    m = load_tiny("phi3")
    monkeypatch.delattr(phi3, "scaled_dot_product_attention")
    before = snapshot(m)
    with pytest.raises(ValueError, match="not supported for the phi3 architecture.*supported:.*gemma2"):
        attention_patterns(m, "I love")
    assert_untouched(m, before)


def test_torch_attention_without_a_config_refused_by_name(load_torch, monkeypatch):
    m = load_torch("phi3")
    monkeypatch.delattr(m.modules["model.layers.2.self_attn"], "config")
    before = snapshot(m)
    with pytest.raises(ValueError, match="not supported for Phi3Attention.*supported: transformers models"):
        attention_patterns(m, "I love", layers=[1, 2])
    assert_untouched(m, before)
    assert m.modules["model.layers.1.self_attn"].config is m.model.config


def test_mlx_rotating_cache_refused(shared_models):
    m = shared_models("qwen2")  # no make_cache of its own: max_kv_size gives a rotating cache
    before = snapshot(m)
    with pytest.raises(ValueError, match="cover only the last 4 tokens"), record_patterns(m, layers=0):
        m.generate_tokens("Tell me a story about a cat who lives on", max_tokens=2, max_kv_size=4)
    assert_untouched(m, before)


def _with_config(src, dst, **changes):
    """A copy of the model folder ``src`` with ``changes`` in its config.json."""
    import json
    import shutil

    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(changes)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_torch_sliding_window_equals_eager(tiny_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from mlx_steer.torch_backend import load

    folder = _with_config(tiny_dir("gemma2"), tmp_path / "gemma2", sliding_window=3)
    m = load(str(folder))
    tokens = m.encode("The weather is great, happy people walk")
    got = attention_patterns(m, tokens, layers=[0, 1])
    hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, attn_implementation="eager")
    want = eager_patterns(hf, tokens)
    n = len(tokens)
    assert hf.config.layer_types[0] == "sliding_attention" and hf.config.layer_types[1] == "full_attention"
    for layer in (0, 1):
        np.testing.assert_allclose(got.row(0, layer), want[layer], atol=TOL, rtol=0)
    outside = np.tril(np.ones((n, n), bool), -3)  # keys 3 or more tokens back
    assert (got.row(0, 0)[:, outside] == 0).all() and (got.row(0, 1)[:, outside] > 0).all()


def test_mlx_sliding_window_renormalizes_the_full_pattern(tiny_dir, tmp_path, shared_models):
    import mlx_steer as ms

    layer_types = ["sliding_attention"] + ["full_attention"] * 3
    m = ms.load(str(_with_config(tiny_dir("llama"), tmp_path / "llama", layer_types=layer_types, sliding_window=3)))
    full = shared_models("llama")  # the same weights, every layer full attention
    tokens = m.encode("The weather is great, happy people walk")
    got = attention_patterns(m, tokens, layers=0).row(0, 0)
    n = len(tokens)
    window = np.tril(np.ones((n, n), bool)) & ~np.tril(np.ones((n, n), bool), -3)
    p = attention_patterns(full, tokens, layers=0).row(0, 0) * window  # layer 0 sees the same q and k
    np.testing.assert_allclose(got, p / p.sum(-1, keepdims=True), atol=TOL, rtol=0)
    assert (got[:, ~window] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_another_model_of_the_same_file_is_not_recorded(backend_models, fresh_models, backend):
    a, b = backend_models(backend, "gemma2"), fresh_models(backend, "gemma2")
    plain = b.to_numpy(b.run(BATCH).logits)
    with record_patterns(a, layers=[0]) as rec:
        during = b.to_numpy(b.run(BATCH).logits)
        a.run("I love")
    assert np.array_equal(plain, during)
    assert [rows.tolist() for _, rows, _, _ in rec.pieces[0]] == [[0]]  # a's one forward only


@pytest.mark.slow
def test_smollm2_patterns_equal_eager_on_both_backends(smollm2, smollm2_torch, smollm2_dir):
    """The real model (GQA, 30 layers), fp32: left-padded batch rows against transformers' eager
    attention on each prompt alone (measured: 3.1e-6 on MLX, 1.4e-6 on torch)."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(smollm2_dir), dtype=torch.float32, attn_implementation="eager")
    prompts = ["The capital of France is", "Tell me a story about a cat who lives on a boat."]
    wants = [eager_patterns(hf, smollm2.encode(p)) for p in prompts]
    for m in (smollm2, smollm2_torch):
        got = attention_patterns(m, prompts, layers=[0, 15, 29])
        for r, want in enumerate(wants):
            for layer in (0, 15, 29):
                np.testing.assert_allclose(got.row(r, layer), want[layer], atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory):
    """A tiny seeded Qwen3 folder: q/k norms on each head before the rotary embedding."""
    import tiny_models
    from transformers import AutoModelForCausalLM, Qwen3Config

    folder = tmp_path_factory.mktemp("qwen3")
    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=tiny_models.VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=True)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.08)
            elif "q_norm" in name or "k_norm" in name:
                p.uniform_(0.5, 2.0)  # norms that change the scores
    model.save_pretrained(folder)
    tiny_models.build_tokenizer().save_pretrained(folder)
    tiny_models.fix_rope_theta(folder)
    return folder


@pytest.mark.parametrize("backend", BACKENDS)
def test_qk_norm_architecture_equals_eager(qwen3_dir, backend):
    import mlx_steer as ms
    from mlx_steer.torch_backend import load
    from transformers import AutoModelForCausalLM

    m = ms.load(str(qwen3_dir)) if backend == "mlx" else load(str(qwen3_dir))
    hf = AutoModelForCausalLM.from_pretrained(str(qwen3_dir), dtype=torch.float32, attn_implementation="eager")
    got = attention_patterns(m, BATCH, layers=None)
    for r, p in enumerate(BATCH):
        want = eager_patterns(hf, m.encode(p))
        for layer in (0, 1):
            np.testing.assert_allclose(got.row(r, layer), want[layer], atol=TOL, rtol=0)
