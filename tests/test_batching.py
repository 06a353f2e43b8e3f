"""Left-padded batches with a batch KV cache equal one prompt at a time."""

import numpy as np
import pytest

from mlx_steer.engine import interventions as iv
from tiny_models import ARCHS

PROMPTS = ["I love", "The weather is great, happy people walk", "Tell me a story about a cat"]


@pytest.mark.parametrize("arch", ARCHS)
def test_batch_equals_single(shared_models, arch):
    m = shared_models(arch)
    v = np.random.default_rng(2).normal(size=m.hidden_size).astype(np.float32) * 3
    spec = {"layers.1": iv.add_vector(v, positions="last"), "layers.2": iv.add_vector(v, positions=[0, 1])}
    batch = m.run(PROMPTS, record={"layers.2": "last", "layers.3": "last"}, interventions=spec)
    assert len(set(batch.lengths)) == 3 and batch.padding[0] > 0
    for b, prompt in enumerate(PROMPTS):
        one = m.run(prompt, record={"layers.2": "last", "layers.3": "last"}, interventions=spec)
        for site in ("layers.2", "layers.3"):
            np.testing.assert_allclose(np.array(batch.activations[site])[b], np.array(one.activations[site])[0], atol=1e-5)
        np.testing.assert_allclose(np.array(batch.logits)[b, -1], np.array(one.logits)[0, -1], atol=1e-5)


def test_batch_mean_over_prompt_ignores_padding(shared_models):
    m = shared_models("llama")
    batch = m.run(PROMPTS, record=["layers.1"], record_positions="prompt", reduce="mean")
    for b, prompt in enumerate(PROMPTS):
        full = np.array(m.run(prompt, record=["layers.1"]).activations["layers.1"])[0]
        np.testing.assert_allclose(np.array(batch.activations["layers.1"])[b], full.mean(0), atol=1e-5)


def test_batch_full_recording_aligns_real_tokens(shared_models):
    m = shared_models("gpt2")
    batch = m.run(PROMPTS, record=["layers.0"])
    acts = np.array(batch.activations["layers.0"])
    for b, prompt in enumerate(PROMPTS):
        one = np.array(m.run(prompt, record=["layers.0"]).activations["layers.0"])[0]
        np.testing.assert_allclose(acts[b, batch.padding[b]:], one, atol=1e-5)


@pytest.mark.parametrize("n", [2, 3, 4])
def test_gemma2_batches_of_every_size_equal_single(load_tiny, n):
    """mlx-lm's gemma2 misaligns its mask when the batch size equals its KV-head count (2 here)."""
    m = load_tiny("gemma2")
    prompts = (PROMPTS * 2)[:n]
    batch = m.run(prompts)
    for b, prompt in enumerate(prompts):
        one = m.run(prompt)
        np.testing.assert_allclose(np.array(batch.logits)[b, -1], np.array(one.logits)[0, -1], atol=1e-5)
