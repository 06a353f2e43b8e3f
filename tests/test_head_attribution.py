"""Direct logit attribution (``mlx_steer.heads.logit_attribution``): the components sum to the model's
own logit difference (fp32, 1e-4 relative) on every architecture it supports, both backends, a
left-padded batch and a chosen position included; each component equals a hand computation from
recorded activations and the model's weights (the final norm linearized with the scale of the full
residual, by hand; a tied (gpt2) and an untied (llama) unembedding); the refusals (gemma2's
soft-capping and post-norms, and any residual the components do not sum to) are named and leave the
model untouched."""

from __future__ import annotations

import numpy as np
import pytest
from tiny_models import HEADS, LAYERS
from torch_fixtures import *  # noqa: F403
from torch_fixtures import BACKENDS, assert_untouched, snapshot

from mlx_steer.heads import head_results
from mlx_steer.heads.logit_attribution import logit_attribution

BATCH = ["I love", "The weather is great, happy people walk", "Tell me a story about a cat"]
TARGET, FOIL = 5, 7


def _rel(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / max(1.0, float(np.max(np.abs(b)))))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arch", ["llama", "qwen2", "phi3", "gpt2"])
def test_components_sum_to_the_logit_difference(backend_models, backend, arch):
    m = backend_models(backend, arch)
    before = snapshot(m)
    got = logit_attribution(m, BATCH, target=TARGET, foil=FOIL)
    assert_untouched(m, before)
    assert got.heads.shape == (len(BATCH), LAYERS, HEADS)
    # the oracle: the model's logits from a plain run (left-padded: the last column is each row's last token)
    logits = m.to_numpy(m.run(BATCH).logits)[:, -1].astype(np.float64)
    want = logits[:, TARGET] - logits[:, FOIL]
    np.testing.assert_allclose(got.logits, want, atol=1e-6)
    assert _rel(got.total, want) < 1e-4
    one = logit_attribution(m, BATCH, target=TARGET)  # the target's logit alone
    assert _rel(one.total, logits[:, TARGET]) < 1e-4
    assert ("final norm bias" in got.components) == (arch == "gpt2")  # LayerNorm's bias: its own component


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_each_component_by_hand(backend_models, backend, arch):
    """Head writes from head_results, MLP outputs and the embeddings recorded, the final norm by hand
    (RMSNorm: w / sqrt(mean(x²) + eps); LayerNorm: centred, w / sqrt(var + eps), bias on its own),
    and the unembedding rows read from the weights."""
    m = backend_models(backend, arch)
    p = 3
    got = logit_attribution(m, BATCH[1:], target=TARGET, foil=FOIL, position=p)
    assert got.positions == (p, p)
    heads = head_results(m, BATCH[1:], layers=None)
    mods = m.modules
    final_norm = m.final_norm_path
    w_norm = np.asarray(_param(m, final_norm, "weight"), np.float64)
    norm = mods[final_norm]
    eps = float(next(getattr(norm, a) for a in ("eps", "variance_epsilon") if hasattr(norm, a)))
    layer_paths = m.layer_paths
    mlp = "mlp"
    rec = m.run(BATCH[1:], record=[f"{layer_paths[0]}:input", layer_paths[-1]] +
                [f"{lp}.{mlp}" for lp in layer_paths])
    act = {k: m.to_numpy(v).astype(np.float64) for k, v in rec.activations.items()}
    keys = list(act)
    lengths = rec.lengths
    L = act[keys[0]].shape[1]
    head_w = _unembed_rows(m)
    d = head_w[TARGET] - head_w[FOIL]
    logits = m.to_numpy(rec.logits).astype(np.float64)
    for b, n in enumerate(lengths):
        col = L - n + p  # left padding
        assert got.logits[b] == pytest.approx(logits[b, col, TARGET] - logits[b, col, FOIL], abs=1e-5)
        assert got.total[b] == pytest.approx(got.logits[b], rel=1e-4)
        x = act[m.resolve_key(layer_paths[-1])][b, col]
        if arch == "gpt2":
            centre = lambda v: v - v.mean()  # noqa: E731
            g = w_norm / np.sqrt(x.var() + eps)
        else:
            centre = lambda v: v  # noqa: E731
            g = w_norm / np.sqrt((x ** 2).mean() + eps)
        emb = act[m.resolve_key(f"{layer_paths[0]}:input")][b, col]
        assert got.component("embed")[b] == pytest.approx(centre(emb) * g @ d, rel=1e-4, abs=1e-5)
        for i in range(LAYERS):
            v = act[m.resolve_key(f"{layer_paths[i]}.{mlp}")][b, col]
            assert got.component(f"mlp {i}")[b] == pytest.approx(centre(v) * g @ d, rel=1e-4, abs=1e-5)
            for h in range(HEADS):
                w = heads.writes[i][b, col, h].astype(np.float64)
                assert got.heads[b, i, h] == pytest.approx(centre(w) * g @ d, rel=1e-4, abs=1e-5), (b, i, h)
            if heads.bias[i] is not None:
                want = centre(heads.bias[i].astype(np.float64)) * g @ d
                assert got.component(f"attn bias {i}")[b] == pytest.approx(want, rel=1e-4, abs=1e-5)
        if arch == "gpt2":
            bias = np.asarray(_param(m, final_norm, "bias"), np.float64)
            assert got.component("final norm bias")[b] == pytest.approx(bias @ d, rel=1e-4, abs=1e-5)


def _param(m, path: str, name: str) -> np.ndarray:
    p = getattr(m.modules[path], name)
    return p.detach().float().numpy() if hasattr(p, "detach") else np.array(p)


def _unembed_rows(m) -> np.ndarray:
    """(V, D) float64 unembedding rows, from the head's weight or (tied) the embedding's table."""
    path = m.unembedding_path
    return np.asarray(_param(m, path, "weight"), np.float64)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_unembedding_bias_is_a_component_of_its_own(fresh_models, backend):
    """An LM head given a bias (set on a fresh tiny llama): its difference is the ``unembed bias``
    component and the sum still equals the model's logit difference."""
    m = fresh_models(backend, "llama")
    head = m.modules[m.unembedding_path]
    bias = np.random.default_rng(0).normal(size=head.weight.shape[0]).astype(np.float32)
    if backend == "torch":
        import torch

        head.bias = torch.nn.Parameter(torch.from_numpy(bias))
    else:
        import mlx.core as mx

        head.bias = mx.array(bias)
    got = logit_attribution(m, BATCH, target=TARGET, foil=FOIL)
    assert got.component("unembed bias") == pytest.approx(float(bias[TARGET] - bias[FOIL]), abs=1e-6)
    logits = m.to_numpy(m.run(BATCH).logits)[:, -1].astype(np.float64)
    assert _rel(got.total, logits[:, TARGET] - logits[:, FOIL]) < 1e-4


@pytest.mark.parametrize("backend", BACKENDS)
def test_gemma2_is_refused_by_name_and_untouched(fresh_models, backend):
    m = fresh_models(backend, "gemma2")
    before = snapshot(m)
    with pytest.raises(ValueError, match=r"gemma2 soft-caps its final logits \(c·tanh\(z / c\), c = 30\)"):
        logit_attribution(m, BATCH, target=TARGET, foil=FOIL)
    assert_untouched(m, before)


@pytest.mark.parametrize("backend", BACKENDS)
def test_post_norms_are_refused_and_so_is_a_residual_the_components_miss(fresh_models, backend, monkeypatch):
    """Without its soft-capping, gemma2 is refused for its post-norms; without that name check, the
    residual check finds the normalized sub-block outputs do not sum to the residual."""
    import importlib

    la = importlib.import_module("mlx_steer.heads.logit_attribution")  # the module: the package exports the function
    from mlx_steer.lens.readout import Readout

    m = fresh_models(backend, "gemma2")
    before = snapshot(m)
    monkeypatch.setattr(la, "readout_of", lambda model: Readout(model.final_norm_path, model.unembedding_path))
    with pytest.raises(ValueError, match=r"gemma2 normalizes each sub-block's output .*post_feedforward_layernorm"):
        logit_attribution(m, BATCH, target=TARGET, foil=FOIL)
    monkeypatch.setattr(la, "POST_NORMS", ())
    with pytest.raises(ValueError, match=r"MLP outputs differs from the model's by .*adds something else"):
        logit_attribution(m, BATCH, target=TARGET, foil=FOIL)
    assert_untouched(m, before)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_arguments_are_refused(backend_models, backend, tmp_path):
    m = backend_models(backend, "llama")
    with pytest.raises(ValueError, match=r"position must be 'last' or an absolute position >= 0.*got -1"):
        logit_attribution(m, BATCH, target=TARGET, position=-1)
    short = r"position index 4 out of range for the shortest prompt.* of 3 tokens; valid: 0..2"
    with pytest.raises(ValueError, match=short):
        logit_attribution(m, BATCH, target=TARGET, position=4)
    got = logit_attribution(m, "Tell me a story", target=TARGET, foil=FOIL)
    assert got.to_csv(tmp_path / "dla.csv").splitlines()[0] == "row,component,layer,head,value"
    assert len(got.to_dicts()) == LAYERS * HEADS + len(got.components)
    assert got.heatmap(0, tmp_path / "dla.png").axes and (tmp_path / "dla.png").stat().st_size > 0
    assert "sum of components" in got.to_text()
    with pytest.raises(KeyError, match=r"no component 'mlp 9'; this attribution has embed, mlp 0"):
        got.component("mlp 9")


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_smollm2_components_sum_to_the_logit_difference(smollm2, smollm2_torch, backend):
    m = smollm2 if backend == "mlx" else smollm2_torch
    prompts = ["The Eiffel Tower is in the city of", "The Colosseum is in the city of"]
    got = logit_attribution(m, prompts, target=" Paris", foil=" Rome")
    logits = m.to_numpy(m.run(prompts).logits)[:, -1].astype(np.float64)
    paris, rome = m.encode(" Paris")[-1], m.encode(" Rome")[-1]
    np.testing.assert_allclose(got.logits, logits[:, paris] - logits[:, rome], atol=1e-5)
    assert np.all(np.abs(got.total - got.logits) <= 1e-4 * np.abs(got.logits))
    assert got.heads.shape == (2, 30, 9)


@pytest.mark.slow
def test_the_docs_sections_run_and_print_what_the_page_shows(smollm2_dir, tmp_path, monkeypatch, capsys):
    """docs/heads.md's direct logit attribution and per-head patching blocks, run in order on
    SmolLM2 (MLX): each prints the ```text block that follows it on the page."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "heads.md").read_text()
    scope: dict = {}
    monkeypatch.chdir(tmp_path)
    for title in ("## Direct logit attribution", "## Per-head activation and attribution patching"):
        section = text[text.index(title):]
        code, shown = re.search(r"```python\n(.*?)```\s*```text\n(.*?)```", section, re.S).groups()
        exec(compile(code, "heads.md", "exec"), scope)
        assert capsys.readouterr().out == shown, title
    assert (tmp_path / "dla_heads.png").exists() and (tmp_path / "patching_heads.png").exists()
    assert (tmp_path / "dla.csv").read_text().startswith("row,component,layer,head,value\n")
