"""Selectivity and calibrated strengths in ``evaluate``: the control column equals a separate evaluation
of the control items, selectivity equals a hand computation from the table's cells, calibrated units
equal raw strengths times the stored coefficient, and the table's files keep (and older ones lack) the columns."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mlx_steer import evaluate as ev
from mlx_steer.vectors.calibration import Calibration
from mlx_steer.vectors.steering_vector import SteeringVector
from torch_fixtures import *  # noqa: F403  (fixtures)
from torch_fixtures import assert_untouched, snapshot

BACKENDS = ["mlx", "torch"]
TARGET = [
    {"question": "Do you like the cat?\n\nChoices:\n (A) Yes\n (B) No", "answer_matching": "(A)", "answer_not_matching": "(B)"},
    {"question": "Is the day long?\n\nChoices:\n (A) No\n (B) Yes", "answer_matching": "(B)", "answer_not_matching": "(A)"},
]
CONTROL = [
    {"question": "Is water wet?\n\nChoices:\n (A) Yes\n (B) No", "answer_matching": "(B)", "answer_not_matching": "(A)"},
    {"question": "Do birds fly?\n\nChoices:\n (A) No\n (B) Yes", "answer_matching": "(A)", "answer_not_matching": "(B)"},
    {"question": "Shall we go?\n\nChoices:\n (A) Go\n (B) Stay", "answer_matching": "(A)", "answer_not_matching": "(B)"},
]


def _vector(m):
    rng = np.random.default_rng(3)
    return SteeringVector({m.resolve_path(f"layers.{i}"): rng.standard_normal(m.hidden_size) for i in (1, 2)})


@pytest.mark.parametrize("backend", BACKENDS)
def test_selectivity_is_the_hand_computed_movement_difference(backend_models, backend):
    m = backend_models(backend, "llama")
    vec = _vector(m)
    opts = dict(vector=vec, layers=[1, 2], strengths=[-4.0, 0.0, 4.0], controls=["random"], progress=False, batch_size=4)
    table = ev.evaluate(m, items=TARGET, control_items=CONTROL, **opts)
    alone = ev.evaluate(m, items=CONTROL, **opts)  # the oracle for the control column
    assert table.measures == ("ab_probability", "control_ab_probability", "selectivity")
    assert table.info["control_items"] == "3"
    moved = 0
    for row in table.rows:
        base = table.cell(row.layer, 0.0, row.vector)
        control = alone.cell(row.layer, row.strength, row.vector).ab_probability
        assert row.control_ab_probability == pytest.approx(control, abs=1e-6)
        want = abs(row.ab_probability - base.ab_probability) - abs(control - base.control_ab_probability)
        assert row.selectivity == pytest.approx(want, abs=1e-9)
        moved += abs(row.selectivity) > 1e-4
    assert moved >= 4 and all(r.selectivity == 0.0 for r in table.rows if r.strength == 0.0)


def test_the_table_files_keep_the_columns_and_older_tables_load(shared_models, tmp_path):
    m = shared_models("llama")
    table = ev.evaluate(m, vector=_vector(m), layers=[1], strengths=[0.0, 3.0], items=TARGET, control_items=CONTROL,
                        progress=False)
    table.to_json(tmp_path / "t.json")
    back = ev.EvalTable.from_json(tmp_path / "t.json")
    assert back.rows == table.rows and back.measures == table.measures
    assert table.to_csv().splitlines()[0] == "vector,layer,strength,ab_probability,control_ab_probability,selectivity"
    old = json.loads(table.to_json())  # an older table: no control columns
    old["measures"] = ["ab_probability"]
    for r in old["rows"]:
        del r["control_ab_probability"], r["selectivity"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    older = ev.EvalTable.from_json(tmp_path / "old.json")
    assert older.measures == ("ab_probability",) and older.rows[1].selectivity is None
    assert older.rows[1].ab_probability == table.rows[1].ab_probability


@pytest.mark.parametrize("backend", BACKENDS)
def test_calibrated_units_are_raw_strengths_times_each_layers_coefficient(backend_models, backend):
    m = backend_models(backend, "llama")
    vec = _vector(m)
    p1, p2 = vec.sites
    cal = vec.replace(calibration=Calibration({p1: 0.5, p2: 2.0}, 0.1))
    calibrated = ev.evaluate(m, vector=cal, layers=[1, 2], strengths=[-1.0, 0.0, 2.0], items=TARGET,
                             units="calibrated", progress=False)
    assert calibrated.info["units"] == "calibrated" and calibrated.info["coefficient 2"] == "2"
    for layer, c, path in ((1, 0.5, p1), (2, 2.0, p2)):
        raw = ev.evaluate(m, vector=SteeringVector({path: vec[path]}), layers=[layer],
                          strengths=[-1.0 * c, 0.0, 2.0 * c], items=TARGET, progress=False)
        got = [r.ab_probability for r in calibrated.rows if r.layer == layer]
        assert got == pytest.approx([r.ab_probability for r in raw.rows], abs=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    ({"units": "calibrated"}, "no calibration; run `mlx-steer calibrate`"),
    ({"units": "nats"}, "unknown units 'nats'; valid: 'raw'"),
    ({"control_items": CONTROL, "items": None, "prompts": ["x"], "judge": len}, "control_items= .* give items= too"),
])
def test_refusals_name_the_problem_and_leave_the_model_untouched(fresh_models, kwargs, match):
    m = fresh_models("mlx", "llama")
    before = snapshot(m)
    opts = dict(vector=_vector(m), layers=[1], strengths=[1.0], items=TARGET, progress=False) | kwargs
    with pytest.raises(ValueError, match=match):
        ev.evaluate(m, **opts)
    assert_untouched(m, before)


def test_calibrated_units_refuse_a_layer_without_a_coefficient(shared_models):
    m = shared_models("llama")
    vec = _vector(m)
    cal = vec.replace(calibration=Calibration({vec.sites[0]: 0.5}, 0.1))
    with pytest.raises(ValueError, match=f"no coefficient for {vec.sites[1]}; calibrated sites: {vec.sites[0]}"):
        ev.evaluate(m, vector=cal, layers=[1, 2], strengths=[1.0], items=TARGET, units="calibrated", progress=False)
