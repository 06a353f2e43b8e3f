"""Bad input raises a ValueError naming the value and what is valid, and leaves the model untouched."""

import numpy as np
import pytest

from mlx_steer import interventions as iv
from mlx_steer.positions import Positions
from torch_fixtures import assert_untouched, snapshot

PROMPT = "I love this wonderful day"


@pytest.fixture
def model(shared_models):
    return shared_models("llama")


def check(model, match, fn):
    before = snapshot(model)
    with pytest.raises(ValueError, match=match):
        fn()
    assert_untouched(model, before)


def test_unknown_path_suggests_close_matches(model):
    check(model, r"unknown site path 'layers\.1\.mpl'.*did you mean model\.layers\.1\.mlp",
          lambda: model.run(PROMPT, record=["layers.1.mpl"]))
    check(model, r"unknown site path 'model\.layer\.2'.*model\.layers\.2.*Decoder layers: model\.layers\.0 \.\. model\.layers\.3",
          lambda: model.steer({"model.layer.2": iv.zero()}))
    check(model, r"layer 9 out of range for a 4-layer model; valid: -4\.\.3",
          lambda: model.steer({"layers.9": iv.zero()}))
    check(model, r"unknown hook point 'inptu'", lambda: model.run(PROMPT, record=["layers.1:inptu"]))


def test_vector_of_wrong_size(model):
    check(model, r"steering vector has size 10 but site 'model\.layers\.1' has size 64",
          lambda: model.steer({"layers.1": iv.add_vector(np.ones(10))}))
    check(model, r"size 64 but site 'model\.layers\.1\.mlp\.gate_proj:input' has size 64|has size 128",
          lambda: model.steer({"layers.1.mlp.down_proj:input": iv.add_vector(np.ones(64))}))


def test_non_finite_vectors_and_scales(model):
    v = np.ones(model.hidden_size, np.float32)
    v[3] = np.nan
    with pytest.raises(ValueError, match=r"1 non-finite values"):
        iv.add_vector(v)
    with pytest.raises(ValueError, match=r"scale must be finite"):
        iv.add_vector(np.ones(4), scale=float("inf"))
    with pytest.raises(ValueError, match="zero norm"):
        iv.project_out(np.zeros(4))


def test_index_out_of_range(model):
    n = len(model.encode(PROMPT))
    check(model, rf"position index 40 out of range for a prompt of {n} tokens; valid: 0\.\.{n - 1}",
          lambda: model.run(PROMPT, interventions={"layers.1": iv.add_vector(np.ones(64), positions=40)}))
    check(model, r"position index 99 out of range for prompt \+ max_tokens",
          lambda: model.generate(PROMPT, max_tokens=5, interventions={"layers.1": iv.zero(positions=[1, 99])}))
    check(model, r"out of range for 4 heads; valid: 0\.\.3",
          lambda: model.steer({"layers.1.self_attn.o_proj:input": iv.ablate_heads([4])}))
    check(model, r"ablate_heads needs an attention output projection's input",
          lambda: model.steer({"layers.1": iv.ablate_heads([0])}))
    with pytest.raises(ValueError, match=r"negative; positions are absolute"):
        iv.add_vector(np.ones(4), positions=-1)
    with pytest.raises(ValueError, match=r"unknown position selector 'first'; valid: all, last"):
        iv.add_vector(np.ones(4), positions="first")


def test_empty_prompts(model):
    check(model, r"empty prompt list", lambda: model.run([]))
    check(model, r"prompt \[\] encodes to no tokens", lambda: model.run([[]]))


def test_front_aligned_longer_than_prompt(model):
    n = len(model.encode(PROMPT))
    delta = np.ones((n + 2, model.hidden_size), np.float32)
    check(model, rf"front-aligned tensor at 'model\.layers\.1' has {n + 2} positions but the prompt has {n} tokens",
          lambda: model.run(PROMPT, interventions={"layers.1": iv.add_vector(delta)}))
    check(model, r"front-aligned tensor .* has", lambda: model.generate(PROMPT, max_tokens=4, interventions={"layers.1": iv.add_vector(delta)}))
    with pytest.raises(ValueError, match="sets its own positions"):
        iv.add_vector(delta, positions="last")


def test_bad_intervention_objects(model):
    check(model, r"intervention for site 'layers\.1' must be made by mlx_steer\.interventions",
          lambda: model.steer({"layers.1": 3.0}))
    check(model, r"interventions must be a dict|expected a dict", lambda: model.steer(["layers.1"]))
    check(model, r"must return a mx\.array of shape", lambda: model.run(PROMPT, interventions={"layers.1": lambda h: h[:, :1]}))
    with pytest.raises(ValueError, match=r"empty window \[3, 3\)"):
        Positions.window(3, 3)
    check(model, r"max_tokens must be a positive int", lambda: model.generate(PROMPT, max_tokens=0))
