"""Left-padded batches with a batch KV cache equal one prompt at a time, on both backends."""

import numpy as np
import pytest

from mlx_steer.engine import interventions as iv
from tiny_models import ARCHS
from torch_fixtures import *  # noqa: F403  (fixtures)
from torch_fixtures import BACKENDS, np_

PROMPTS = ["I love", "The weather is great, happy people walk", "Tell me a story about a cat"]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_equals_single(backend_models, backend, arch):
    m = backend_models(backend, arch)
    v = np.random.default_rng(2).normal(size=m.hidden_size).astype(np.float32) * 3
    spec = {"layers.1": iv.add_vector(v, positions="last"), "layers.2": iv.add_vector(v, positions=[0, 1])}
    record = {"layers.2": "last", "layers.3": "last", "layers.0": "all"}
    batch = m.run(PROMPTS, record=record, interventions=spec)
    assert len(set(batch.lengths)) == 3 and batch.padding[0] > 0
    for b, prompt in enumerate(PROMPTS):
        one = m.run(prompt, record=record, interventions=spec)
        for site in ("layers.2", "layers.3"):
            np.testing.assert_allclose(np_(m, batch.activations[site])[b], np_(m, one.activations[site])[0], atol=1e-5)
        full = np_(m, batch.activations["layers.0"])[b, batch.padding[b]:]  # every real token, padding cut
        np.testing.assert_allclose(full, np_(m, one.activations["layers.0"])[0], atol=1e-5)
        np.testing.assert_allclose(np_(m, batch.logits)[b, -1], np_(m, one.logits)[0, -1], atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_mean_over_prompt_ignores_padding(backend_models, backend):
    m = backend_models(backend, "llama")
    batch = m.run(PROMPTS, record=["layers.1"], record_positions="prompt", reduce="mean")
    for b, prompt in enumerate(PROMPTS):
        full = np_(m, m.run(prompt, record=["layers.1"]).activations["layers.1"])[0]
        np.testing.assert_allclose(np_(m, batch.activations["layers.1"])[b], full.mean(0), atol=1e-5)


@pytest.mark.parametrize("n", [2, 3, 4])
def test_gemma2_batches_of_every_size_equal_single(load_tiny, n):
    """mlx-lm's gemma2 misaligns its mask when the batch size equals its KV-head count (2 here)."""
    m = load_tiny("gemma2")
    prompts = (PROMPTS * 2)[:n]
    batch = m.run(prompts)
    for b, prompt in enumerate(prompts):
        one = m.run(prompt)
        np.testing.assert_allclose(np.array(batch.logits)[b, -1], np.array(one.logits)[0, -1], atol=1e-5)
