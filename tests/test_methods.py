"""Direction-finding math against planted directions and hand-computed oracles."""

import numpy as np
import pytest

from mlx_steer import methods as M
from mlx_steer import similarity as S

D, N = 64, 256


@pytest.fixture
def planted():
    rng = np.random.default_rng(0)
    u = rng.normal(size=D)
    u /= np.linalg.norm(u)
    pos = rng.normal(size=(N, D)) + 6 * u + 1.0
    neg = rng.normal(size=(N, D)) - 6 * u + 1.0
    return u, pos, neg


@pytest.mark.parametrize("fn", [M.mean_difference, M.pca_direction, M.pca_center_direction,
                                lambda p, n: M.logistic_probe(p, n).direction])
def test_recovers_planted_direction(planted, fn):
    u, pos, neg = planted
    d = fn(pos, neg)
    assert S.cosine(d, u) >= 0.99


def test_mean_difference_oracle(planted):
    _, pos, neg = planted
    np.testing.assert_allclose(M.mean_difference(pos, neg), pos.mean(0) - neg.mean(0), rtol=1e-6)


def test_pca_direction_oracle_and_sign(planted):
    _, pos, neg = planted
    diffs = pos - neg
    _, _, vt = np.linalg.svd(diffs, full_matrices=False)
    d = M.pca_direction(pos, neg)
    assert abs(abs(float(d @ vt[0])) - 1) < 1e-6
    assert float((diffs @ d).mean()) > 0
    assert float((diffs @ M.pca_direction(neg, pos)).mean()) < 0  # swapped classes flip it


def test_probe_is_optimal(planted):
    _, pos, neg = planted
    l2 = 0.05
    r = M.logistic_probe(pos, neg, l2=l2)
    x = np.concatenate([pos, neg])
    y = np.r_[np.ones(N), np.zeros(N)]
    p = 1 / (1 + np.exp(-(x @ r.weight + r.bias)))
    grad_w = (x - x.mean(0)).T @ (p - y) + l2 * r.weight
    assert np.linalg.norm(grad_w) < 1e-5 and abs((p - y).sum()) < 1e-5
    assert r.accuracy == 1.0
    assert np.all(((x @ r.weight + r.bias) > 0) == (y > 0.5))


def test_probe_high_dimensional_is_fast_and_right():
    import time

    rng = np.random.default_rng(1)
    u = rng.normal(size=576)
    u /= np.linalg.norm(u)
    pos, neg = rng.normal(size=(64, 576)) + 2 * u, rng.normal(size=(64, 576)) - 2 * u
    t = time.perf_counter()
    r = M.logistic_probe(pos, neg)
    assert time.perf_counter() - t < 30
    assert r.accuracy == 1.0 and S.cosine(r.direction, u) > 0.5


def test_actadd_difference():
    a, b = np.arange(12.0).reshape(3, 4), np.ones((3, 4))
    assert np.array_equal(M.actadd_difference(a, b), (a - b).astype(np.float32))
    with pytest.raises(ValueError, match="equal length .* got 3 and 2"):
        M.actadd_difference(a, b[:2])


def test_method_errors():
    with pytest.raises(ValueError, match=r"2-D \(N, D\); got shapes \(4,\)"):
        M.mean_difference(np.ones(4), np.ones((2, 4)))
    with pytest.raises(ValueError, match="sizes differ"):
        M.mean_difference(np.ones((2, 4)), np.ones((2, 5)))
    with pytest.raises(ValueError, match="paired method"):
        M.pca_direction(np.ones((3, 4)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="NaN or inf"):
        M.mean_difference(np.full((2, 4), np.nan), np.ones((2, 4)))
    with pytest.raises(ValueError, match="at least 2 rows"):
        M.pca_direction(np.ones((1, 4)), np.ones((1, 4)))


def test_similarity_oracles():
    rng = np.random.default_rng(2)
    v = rng.normal(size=(5, 16))
    expected = np.array([[a @ b / np.linalg.norm(a) / np.linalg.norm(b) for b in v] for a in v])
    np.testing.assert_allclose(S.cosine_matrix(v), expected, atol=1e-12)
    u = rng.normal(size=16)
    u /= np.linalg.norm(u)
    stack = np.array([k * u for k in (1.0, 2.0, -0.5, 3.0)]) + 1e-3 * rng.normal(size=(4, 16))
    d, explained = S.top_singular_direction(stack)
    assert S.cosine(d, u) > 0.999 and explained > 0.999
    np.testing.assert_allclose(S.project(v, 3 * u), v @ u, atol=1e-12)
    assert abs(float(S.orthogonalize(v[0], v[1]) @ v[1])) < 1e-5
    with pytest.raises(ValueError, match="zero norm"):
        S.cosine_matrix(np.zeros((2, 3)))
    assert S.norm_profile({"a": 2.0}, {"a": 8.0}) == {"a": 0.25}
