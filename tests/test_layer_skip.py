"""run(from_layer=L, hidden=...) on both backends and every tiny architecture: fed the input layer
L saw in an unsteered run of the same prompts, it equals the full forward for any steering at or
above L, without running the layers below (counted); bad input is refused and leaves nothing behind."""

from __future__ import annotations

import numpy as np
import pytest

from mlx_steer.engine import interventions as iv
from tiny_models import ARCHS
from torch_fixtures import *  # noqa: F403
from torch_fixtures import BACKENDS

PROMPTS = ["I love this wonderful day", "sad news", "happy people walk in the sun"]


def _padded(m, tr) -> np.ndarray:
    """Real positions only (padding positions are computed and thrown away)."""
    real = np.arange(max(tr.lengths))[None, :] >= np.asarray(tr.padding)[:, None]
    return real[..., None]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_from_layer_equals_the_full_forward(backend_models, backend, arch):
    m = backend_models(backend, arch)
    rng = np.random.default_rng(2)
    v = rng.normal(size=m.hidden_size).astype(np.float32) * 3
    steer = [None, {"layers.2": iv.add_vector(v)}, {"layers.3.mlp": iv.scale(0.5), "layers.2:input": iv.add_vector(-v)}]
    base = m.run(PROMPTS, record=["layers.2:input"])
    full = m.run(PROMPTS, interventions=steer, record=["layers.3"])
    skipped = m.run(PROMPTS, interventions=steer, record=["layers.3"], from_layer=2,
                    hidden=base.activations["layers.2:input"])
    keep = _padded(m, full)
    for got, want in ((skipped.logits, full.logits), (skipped.activations["layers.3"], full.activations["layers.3"])):
        np.testing.assert_allclose(np.where(keep, m.to_numpy(got), 0), np.where(keep, m.to_numpy(want), 0),
                                   rtol=1e-5, atol=1e-5)
    # a host (numpy) input works the same
    host = m.run(PROMPTS, interventions=steer, from_layer=2, hidden=m.to_numpy(base.activations["layers.2:input"]))
    np.testing.assert_allclose(np.where(keep, m.to_numpy(host.logits), 0), np.where(keep, m.to_numpy(full.logits), 0),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_layers_below_do_not_run(backend_models, backend):
    """Recording every layer's attention output counts which layers ran: only 3 (of 0..3)."""
    m = backend_models(backend, "llama")
    base = m.run(PROMPTS, record=["layers.3:input"])
    attn = [f"{p}.self_attn" for p in m.layer_paths]
    full = m.run(PROMPTS, record=attn)
    assert all(full.activations[a] is not None for a in attn)
    with m.record(attn[:3]) as below:  # hooks around the call: they would see any call of layers 0..2
        m.run(PROMPTS, from_layer=3, hidden=base.activations["layers.3:input"])
    assert all(below.activations[a] is None for a in attn[:3])


def test_a_backend_that_runs_rows_one_at_a_time_gets_each_rows_input(load_tiny, monkeypatch):
    """MLX runs padded batches row by row (unpadded) where a model's padding fails (gemma2 at
    some sizes): the skipped layers then hand each row its own, unpadded, input."""
    m = load_tiny("llama")
    steer = [{"layers.2": iv.scale(1.5)}, None, {"layers.3": iv.add_vector(np.ones(m.hidden_size, np.float32))}]
    base = m.run(PROMPTS, record=["layers.2:input"])
    full = m.run(PROMPTS, interventions=steer)
    monkeypatch.setattr(type(m.backend), "_batch_padding_works", lambda self, pad: False)
    rows = m.run(PROMPTS, interventions=steer, from_layer=2, hidden=base.activations["layers.2:input"])
    keep = _padded(m, full)
    np.testing.assert_allclose(np.where(keep, m.to_numpy(rows.logits), 0), np.where(keep, m.to_numpy(full.logits), 0),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    (dict(from_layer=2), "from_layer and hidden go together"),
    (dict(from_layer=0, hidden="H"), r"from_layer must be a decoder layer index in 1\.\.3"),
    (dict(from_layer=4, hidden="H"), r"in 1\.\.3 \(the layers below it are skipped\), got 4"),
    (dict(from_layer=True, hidden="H"), "got True"),
    (dict(from_layer=2, hidden=np.zeros((3, 2, 64))), r"= \(3, \d+, 64\) for this forward, got \(3, 2, 64\)"),
    (dict(from_layer=2, hidden="H", record=["layers.1"]), "nothing can be steered or recorded at model.layers.1"),
    (dict(from_layer=2, hidden="H", interventions={"layers.1.mlp": iv.scale(2.0)}), "model.layers.1.mlp"),
])
@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_input_is_refused_and_leaves_the_model_untouched(backend_models, backend, kwargs, match):
    m = backend_models(backend, "llama")
    base = m.run(PROMPTS, record=["layers.2:input"])
    if isinstance(kwargs.get("hidden"), str):
        kwargs = {**kwargs, "hidden": base.activations["layers.2:input"]}
    with pytest.raises(ValueError, match=match):
        m.run(PROMPTS, **kwargs)
    again = m.run(PROMPTS)  # the full model still runs, unpatched
    np.testing.assert_array_equal(m.to_numpy(again.logits), m.to_numpy(base.logits))


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_embeddings_run_before_the_skipped_layers_so_they_are_refused(backend_models, backend):
    """A tied model's unembedding on MLX is its embedding module (``as_linear``): it runs first, so a
    site there is below any start layer; torch's tied ``lm_head`` runs last and stays allowed."""
    m = backend_models(backend, "qwen2")
    embed = next(p for p in m.modules if p.endswith("embed_tokens"))
    base = m.run(PROMPTS, record=["layers.2:input"])
    with pytest.raises(ValueError, match=f"nothing can be steered or recorded at {embed}"):
        m.run(PROMPTS, from_layer=2, hidden=base.activations["layers.2:input"], interventions={embed: iv.scale(2.0)})
    head = {m.unembedding_path: iv.scale(0.5)} if m.unembedding_path != embed else None
    if head is not None:  # a head that runs after the layers: steered as in the whole forward
        full = m.run(PROMPTS, interventions=head)
        part = m.run(PROMPTS, interventions=head, from_layer=2, hidden=base.activations["layers.2:input"])
        keep = _padded(m, full)
        np.testing.assert_allclose(np.where(keep, m.to_numpy(part.logits), 0),
                                   np.where(keep, m.to_numpy(full.logits), 0), rtol=1e-5, atol=1e-5)
