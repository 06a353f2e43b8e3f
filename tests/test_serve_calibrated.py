"""The server's ``"units": "calibrated"``: scale 1 of a calibrated registered vector generates what the
library generates at the stored coefficient; a vector without a calibration, an inline vector and a
layer without a coefficient are refused with 400 naming ``steering[i].units``; ``/v1/vectors`` shows
the calibration."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

import mlx_steer as ms
from mlx_steer.vectors.calibration import Calibration
from serve_helpers import serving

pytest.importorskip("fastapi", reason="the serve tests need the test extra: pip install -e '.[test]'")

ARCH = "llama"


@pytest.fixture(scope="module")
def setup(tiny_dir, shared_models, tmp_path_factory):
    m = shared_models(ARCH)
    folder = tmp_path_factory.mktemp("calibrated_vectors")
    rng = np.random.default_rng(5)
    p1, p2 = m.layer_paths[1], m.layer_paths[2]
    plain = ms.SteeringVector({p1: rng.normal(size=m.hidden_size), p2: rng.normal(size=m.hidden_size)})
    cal = plain.replace(calibration=Calibration({p1: 0.7}, 0.1, achieved_kl={p1: 0.1}))
    ms.save_vector(plain, folder / "plain.safetensors")
    ms.save_vector(cal, folder / "cal.safetensors")
    with serving(["--model", str(tiny_dir(ARCH)), "--vectors-dir", str(folder)], tmp_path_factory.mktemp("cal_log")) as srv:
        yield srv, m, cal


def _post(srv, steering):
    return httpx.post(f"{srv.url}/v1/completions", timeout=60, json={
        "model": ARCH, "prompt": "I love", "max_tokens": 6, "return_token_ids": True, "ignore_eos": True,
        "steering": steering})


def test_scale_one_is_the_calibrated_coefficient(setup):
    srv, m, cal = setup
    r = _post(srv, [{"vector": "cal", "scale": 2.0, "units": "calibrated", "layers": [1]}])
    assert r.status_code == 200, r.text
    site = m.layer_paths[1]
    want = m.generate_tokens("I love", max_tokens=6,
                             interventions=cal.select(site).to_interventions(scale=2.0 * 0.7))
    assert r.json()["choices"][0]["token_ids"] == want
    assert r.json()["steering"][0]["units"] == "calibrated"
    listed = {v["id"]: v["calibration"] for v in httpx.get(f"{srv.url}/v1/vectors", timeout=10).json()["data"]}
    assert listed["plain"] is None and listed["cal"]["coefficients"] == {site: 0.7}


@pytest.mark.parametrize("steering, message", [
    ({"vector": "plain", "scale": 1.0, "units": "calibrated"}, "vector 'plain': calibrated strengths need a calibrated "
                                                               "vector, and this vector has no calibration"),
    ({"vector": "cal", "scale": 1.0, "units": "calibrated", "layers": [2]}, "no coefficient for model.layers.2"),
    ({"vector": [0.0] * 64, "scale": 1.0, "units": "calibrated", "layers": [1]}, "calibrated units need a registered"),
])
def test_refused_naming_the_units_field(setup, steering, message):
    srv, _, _ = setup
    r = _post(srv, [steering])
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == "steering[0].units" and message in error["message"], error
