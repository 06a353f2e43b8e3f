"""Bad input raises a ValueError naming the value and what is valid, and leaves the model untouched;
the same messages on both backends."""

import numpy as np
import pytest

from mlx_steer.engine import interventions as iv
from mlx_steer.engine.positions import Positions
from torch_fixtures import *  # noqa: F403  (fixtures)
from torch_fixtures import BACKENDS, assert_untouched, snapshot

PROMPT = "I love this wonderful day"

# (message, call); in a message {array} is the backend's array type, {n} the prompt's token count
# and {last} its last position
ERRORS = [
    (r"unknown site path 'layers\.1\.mpl'.*did you mean model\.layers\.1\.mlp", lambda m: m.run(PROMPT, record=["layers.1.mpl"])),
    (r"unknown site path 'model\.layer\.2'.*model\.layers\.2.*Decoder layers: model\.layers\.0 \.\. model\.layers\.3",
     lambda m: m.steer({"model.layer.2": iv.zero()})),
    (r"layer 9 out of range for a 4-layer model; valid: -4\.\.3", lambda m: m.steer({"layers.9": iv.zero()})),
    (r"unknown hook point 'inptu'", lambda m: m.run(PROMPT, record=["layers.1:inptu"])),
    (r"steering vector has size 10 but site 'model\.layers\.1' has size 64", lambda m: m.steer({"layers.1": iv.add_vector(np.ones(10))})),
    (r"size 64 but site 'model\.layers\.1\.mlp\.down_proj:input' has size 128",
     lambda m: m.steer({"layers.1.mlp.down_proj:input": iv.add_vector(np.ones(64))})),
    (r"position index 40 out of range for a prompt of {n} tokens; valid: 0\.\.{last}",
     lambda m: m.run(PROMPT, interventions={"layers.1": iv.add_vector(np.ones(64), positions=40)})),
    (r"position index 99 out of range for prompt \+ max_tokens",
     lambda m: m.generate(PROMPT, max_tokens=5, interventions={"layers.1": iv.zero(positions=[1, 99])})),
    (r"out of range for 4 heads; valid: 0\.\.3", lambda m: m.steer({"layers.1.self_attn.o_proj:input": iv.ablate_heads([4])})),
    (r"ablate_heads needs an attention output projection's input", lambda m: m.steer({"layers.1": iv.ablate_heads([0])})),
    (r"empty prompt list", lambda m: m.run([])),
    (r"prompt \[\] encodes to no tokens", lambda m: m.run([[]])),
    (r"front-aligned tensor at 'model\.layers\.1' has 30 positions but the prompt has {n} tokens",
     lambda m: m.run(PROMPT, interventions={"layers.1": iv.add_vector(np.ones((30, 64)))})),
    (r"front-aligned tensor .* has", lambda m: m.generate(PROMPT, max_tokens=4, interventions={"layers.1": iv.add_vector(np.ones((30, 64)))})),
    (r"intervention for site 'layers\.1' must be made by mlx_steer\.interventions", lambda m: m.steer({"layers.1": 3.0})),
    (r"expected a dict", lambda m: m.steer(["layers.1"])),
    (r"must return a {array} of shape", lambda m: m.run(PROMPT, interventions={"layers.1": lambda h: h[:, :1]})),
    (r"max_tokens must be a positive int", lambda m: m.generate(PROMPT, max_tokens=0)),
    (r"unknown reduce 'sum'", lambda m: m.run(PROMPT, record=["layers.1"], reduce="sum")),
]


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_input_errors_leave_model_untouched(fresh_models, backend):
    m = fresh_models(backend, "llama")
    before = snapshot(m)
    n = len(m.encode(PROMPT))
    fill = {"{array}": {"mlx": r"mx\.array", "torch": r"torch\.Tensor"}[backend], "{n}": str(n), "{last}": str(n - 1)}
    for match, call in ERRORS:
        for key, value in fill.items():
            match = match.replace(key, value)
        with pytest.raises(ValueError, match=match):
            call(m)
        assert_untouched(m, before)


def test_non_finite_vectors_and_scales():
    v = np.ones(64, np.float32)
    v[3] = np.nan
    with pytest.raises(ValueError, match=r"1 non-finite values"):
        iv.add_vector(v)
    with pytest.raises(ValueError, match=r"scale must be finite"):
        iv.add_vector(np.ones(4), scale=float("inf"))
    with pytest.raises(ValueError, match="zero norm"):
        iv.project_out(np.zeros(4))


def test_bad_positions_raise_when_the_intervention_is_made():
    with pytest.raises(ValueError, match=r"negative; positions are absolute"):
        iv.add_vector(np.ones(4), positions=-1)
    with pytest.raises(ValueError, match=r"unknown position selector 'first'; valid: all, last"):
        iv.add_vector(np.ones(4), positions="first")
    with pytest.raises(ValueError, match="sets its own positions"):
        iv.add_vector(np.ones((3, 4), np.float32), positions="last")
    with pytest.raises(ValueError, match=r"empty window \[3, 3\)"):
        Positions.window(3, 3)
