"""record_dataset on both backends: every row equals the prompt run alone, the mean equals the
mean of those rows, and bad input names the value (the 2-rank form is in test_distributed.py)."""

from __future__ import annotations

import numpy as np
import pytest

import mlx_steer as ms
from torch_fixtures import *  # noqa: F403
from torch_fixtures import BACKENDS

PROMPTS = ["I love this wonderful day", "sad news", "happy people walk in the sun", "This is terrible, awful and sad",
           "I hate the rain", "The weather is great today"]
SITES = ["layers.1", "layers.2.mlp", "layers.3:input"]


def alone(m, prompt: str, site: str, read) -> np.ndarray:
    """The oracle: one prompt, no padding, its whole recording, the row picked by hand."""
    acts = m.to_numpy(m.run([prompt], record=[site]).activations[site])[0]
    return {"last": acts[-1], "mean": acts.mean(0)}.get(read, acts[read] if isinstance(read, int) else None)


@pytest.mark.parametrize("read", ["last", "mean", 1])
@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_equal_each_prompt_alone(backend_models, backend, read):
    m = backend_models(backend, "llama")
    rows = ms.record_dataset(m, PROMPTS, sites=SITES, read=read, batch_size=4, progress=False)
    assert list(rows) == [m.resolve(s).key for s in SITES]
    for site in SITES:
        got = rows[m.resolve(site).key]
        assert got.shape == (len(PROMPTS), m.hidden_size)
        want = np.stack([alone(m, p, site, read) for p in PROMPTS])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mean_is_the_mean_of_the_rows(backend_models, backend):
    m = backend_models(backend, "qwen2")
    rows = ms.record_dataset(m, PROMPTS, sites=["layers.2"], batch_size=3, progress=False)["model.layers.2"]
    mean = ms.record_dataset(m, PROMPTS, sites="layers.2", reduce="mean", batch_size=3, progress=False)["model.layers.2"]
    assert mean.shape == (m.hidden_size,) and mean.dtype == np.float32
    np.testing.assert_allclose(mean, rows.astype(np.float64).mean(0), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kwargs, match", [
    (dict(prompts=[]), "at least one prompt"),
    (dict(reduce="median"), r"unknown reduce 'median'; valid: None \(every row\) or 'mean'"),
    (dict(read="first"), r"unknown read 'first'; valid: last, mean, assistant_start"),
    (dict(sites=[]), "no sites given"),
    (dict(system="be brief"), "system only apply to chat prompts"),
    (dict(read=50), "read index 50 out of range for a prompt of"),
])
def test_bad_input_names_the_value(shared_models, kwargs, match):
    m = shared_models("llama")
    args = dict(prompts=PROMPTS[:2], sites=["layers.1"]) | kwargs
    with pytest.raises(ValueError, match=match):
        ms.record_dataset(m, args.pop("prompts"), progress=False, **args)
    assert not m.state.layouts  # nothing left installed
