"""Per-head results (``mlx_steer.heads.head_results``): each head's write summed over heads, plus
the output projection's bias, is the attention output recorded on its own; each head's ``z`` is its
attention pattern times its values (recorded at the value projection), on both backends."""

import numpy as np
import pytest

from mlx_steer.heads import attention_patterns, head_results, head_z_site, split_heads
from tiny_models import ARCHS, HEADS, HIDDEN
from torch_fixtures import *  # noqa: F403  (fixtures)
from torch_fixtures import BACKENDS, assert_untouched, snapshot

BATCH = ["I love", "The weather is great, happy people walk", "Tell me a story about a cat"]
ATTN = {"gpt2": ("attn", "attn.c_proj")}  # (attention module, output projection) below a layer
D_HEAD = HIDDEN // HEADS


def values(m, arch: str, layer: int, trace_site_for) -> np.ndarray:
    """(B, L, H_kv, d_head) values of ``layer``, sliced from the projection that makes them."""
    site, part = {"gpt2": ("attn.c_attn", slice(2 * HIDDEN, None)),
                  "phi3": ("self_attn.qkv_proj", slice(2 * HIDDEN, None))}.get(arch, ("self_attn.v_proj", slice(None)))
    v = trace_site_for(f"layers.{layer}.{site}")[..., part]
    return v.reshape(*v.shape[:2], -1, D_HEAD)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arch", ARCHS)
def test_writes_sum_to_attention_output_and_z_is_pattern_times_values(backend_models, backend, arch):
    m = backend_models(backend, arch)
    before = snapshot(m)
    got = head_results(m, BATCH, layers=[0, -1])
    assert_untouched(m, before)
    assert got.layers == [0, 3]
    attn, o_proj = ATTN.get(arch, ("self_attn", "self_attn.o_proj"))
    sites = [f"layers.{i}.{o_proj}" for i in (0, 3)] + [f"layers.{i}.{s}" for i in (0, 3) for s in
                                                       ("attn.c_attn", "self_attn.qkv_proj", "self_attn.v_proj")
                                                       if f"{m.layer_paths[i]}.{s}" in m.modules]
    tr = m.run(BATCH, record=sites, logits=False)
    rec = {s: m.to_numpy(tr.activations[m.resolve_key(s)]) for s in sites}
    pats = attention_patterns(m, BATCH, layers=[0, 3])
    for i in (0, 3):
        B, L, H, dh = got.z[i].shape
        assert (H, dh) == (HEADS, D_HEAD) and got.writes[i].shape == (B, L, H, HIDDEN)
        total = got.writes[i].sum(2) + (0 if got.bias[i] is None else got.bias[i])
        np.testing.assert_allclose(total, rec[f"layers.{i}.{o_proj}"], atol=2e-5, rtol=0)
        v = values(m, arch, i, lambda s: rec[s])
        v = np.repeat(v, H // v.shape[2], axis=2)  # query head h reads value head h // (H / H_kv)
        for r, n in enumerate(tr.lengths):
            p = L - n  # left padding
            want = np.einsum("hqk,khd->qhd", pats.row(r, i), v[r, p:])
            np.testing.assert_allclose(got.z[i][r, p:], want, atol=2e-5, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_last_position_is_each_rows_last_token(backend_models, backend):
    m = backend_models(backend, "qwen2")
    every = head_results(m, BATCH, layers=1)
    last = head_results(m, BATCH, layers=1, positions="last")
    assert last.z[1].shape[1] == 1
    np.testing.assert_array_equal(last.writes[1][:, 0], every.writes[1][:, -1])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arch", ["phi3", "gpt2"])
def test_heads_recorded_over_a_generation_split_into_writes(backend_models, backend, arch):
    m = backend_models(backend, arch)
    site = head_z_site(m, -2)
    out_site = m.resolve_key(site.rsplit(":", 1)[0])  # the projection's output: the attention output
    hooks: list = []
    new = m.generate_tokens("Tell me a story", max_tokens=4, record=[site, out_site], record_positions="all",
                            hooks_out=hooks)
    z, writes = split_heads(m, 2, hooks[0].activations[site])
    out = m.to_numpy(hooks[0].activations[out_site])
    bias = head_results(m, "I", layers=2).bias[2]
    assert z.shape[:2] == out.shape[:2] and z.shape[1] >= len(m.encode("Tell me a story")) + len(new) - 1
    np.testing.assert_allclose(writes.sum(-2) + (0 if bias is None else bias), out, atol=2e-5, rtol=0)
    bad = r"recorded width 8 is not layer 1's output projection input \(64\); record '.*1\.\w+\.\w+:input'"
    with pytest.raises(ValueError, match=bad):
        split_heads(m, 1, out[..., :8])


def test_mlx_quantized_projection_is_dequantized(load_tiny):
    import mlx.nn as nn

    m = load_tiny("llama")
    nn.quantize(m.model, group_size=32, bits=8)
    got = head_results(m, "Tell me a story", layers=2)
    out = m.to_numpy(m.run("Tell me a story", record=["layers.2.self_attn.o_proj"]).activations[
        m.resolve_key("layers.2.self_attn.o_proj")])
    np.testing.assert_allclose(got.writes[2].sum(2), out, atol=1e-4, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_layer_refused(backend_models, backend):
    m = backend_models(backend, "gpt2")
    with pytest.raises(ValueError, match=r"layer -5 out of range for a 4-layer model; valid: -4\.\.3"):
        head_results(m, "I love", layers=-5)


def test_the_docs_snippet_runs(tiny_dir):
    """docs/heads.md's snippet, with the demo model swapped for a tiny one."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "heads.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    code = code.replace("from mlx_steer.demo.real_model import prepare_smollm2\n", "")
    scope = {"prepare_smollm2": lambda: tiny_dir("llama")}
    exec(compile(code, "heads.md", "exec"), scope)
    n = len(scope["model"].encode("The capital of France is"))
    assert scope["first"].shape == (4, n, n)
    assert scope["gen"].shape[1] >= len(scope["model"].encode("Tell me a story")) + 7
    assert scope["z"].shape[2:] == (4, 16) and scope["writes"].shape[2:] == (4, 64)
