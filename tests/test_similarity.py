"""Similarity math against explicit loops and hand-built cases."""

import numpy as np
import pytest

from mlx_steer.vectors import similarity as S


def unit(v):
    return v / np.linalg.norm(v)


def test_cosine_matrix_equals_explicit_loop():
    v = np.random.default_rng(0).normal(size=(5, 16))
    expected = np.array([[a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) for b in v] for a in v])
    m = S.cosine_matrix(v)
    assert m.shape == (5, 5) and m.dtype == np.float64
    np.testing.assert_allclose(m, expected, atol=1e-12)
    np.testing.assert_allclose(S.cosine_matrix(v * [[1.0], [2.0], [0.1], [7.0], [3.0]]), expected, atol=1e-12)


def test_cosine():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=8), rng.normal(size=8)
    assert S.cosine(a, b) == pytest.approx(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)), abs=1e-12)
    assert S.cosine(a, -3 * a) == pytest.approx(-1.0, abs=1e-12)
    assert S.cosine([1.0, 0.0], [0.0, 2.0]) == 0.0


def test_top_singular_direction_recovers_signed_direction():
    rng = np.random.default_rng(2)
    u = unit(rng.normal(size=32))
    scales = np.array([3.0, -1.0, 2.0, -0.5, 1.5])  # mean projection along u is positive
    stack = scales[:, None] * u + 1e-4 * rng.normal(size=(5, 32))
    d, explained = S.top_singular_direction(stack)
    assert d.shape == (32,) and d.dtype == np.float32
    assert float(d @ u) > 0.9999 and explained > 0.9999
    d_neg, _ = S.top_singular_direction(-stack)  # sign follows the mean projection, not the SVD
    assert float(d_neg @ u) < -0.9999


def test_top_singular_direction_oracle_and_tie():
    v = np.random.default_rng(3).normal(size=(4, 6))
    _, s, vt = np.linalg.svd(v)
    d, explained = S.top_singular_direction(v)
    expected = vt[0] if v.mean(0) @ vt[0] > 0 else -vt[0]
    np.testing.assert_allclose(d, expected, atol=1e-6)
    assert explained == pytest.approx(s[0] ** 2 / np.sum(s**2), rel=1e-12)
    d, explained = S.top_singular_direction([[0.0, -2.0, 0.0], [0.0, 2.0, 0.0]])  # mean projection 0
    np.testing.assert_allclose(d, [0.0, 1.0, 0.0], atol=1e-7)
    assert explained == pytest.approx(1.0)


def test_project():
    rng = np.random.default_rng(4)
    acts, direction = rng.normal(size=(2, 3, 10)), rng.normal(size=10)
    out = S.project(acts, 5 * direction)
    expected = np.array([[a @ direction / np.linalg.norm(direction) for a in row] for row in acts])
    assert out.shape == (2, 3)
    np.testing.assert_allclose(out, expected, atol=1e-12)
    assert S.project(np.array([3.0, 4.0]), [0.0, 2.0]) == pytest.approx(4.0)


def test_orthogonalize_against_one_vector():
    rng = np.random.default_rng(5)
    v, a = rng.normal(size=12), rng.normal(size=12)
    out = S.orthogonalize(v, a)
    assert out.dtype == np.float32
    assert abs(float(out @ unit(a))) < 1e-6
    removed = v - out
    assert abs(abs(float(unit(removed) @ unit(a))) - 1) < 1e-5  # only the a-component was removed
    e = np.eye(4)
    np.testing.assert_array_equal(S.orthogonalize(e[0] + 2 * e[1], e[1]), np.float32([1, 0, 0, 0]))


def test_orthogonalize_against_a_dependent_set():
    rng = np.random.default_rng(6)
    basis = rng.normal(size=(2, 12))
    against = np.vstack([basis, basis[0] - 3 * basis[1]])  # rank 2
    v = rng.normal(size=12)
    out = S.orthogonalize(v, against)
    assert np.max(np.abs(against @ out)) < 1e-5
    q = np.linalg.qr(basis.T)[0]
    np.testing.assert_allclose(out, v - q @ (q.T @ v), atol=1e-6)


def test_norm_ratios():
    out = S.norm_ratios({"b": 2.0, "a": 0.0}, {"a": 4.0, "b": 8.0, "c": 1.0})
    assert out == {"b": 0.25, "a": 0.0} and list(out) == ["b", "a"]


def test_zero_vector_errors():
    with pytest.raises(ValueError, match=r"vectors \(3, 2\) has zero vectors at rows \[0, 2\]"):
        S.cosine_matrix([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    with pytest.raises(ValueError, match="b is a zero vector"):
        S.cosine([1.0, 2.0], [0.0, 0.0])
    with pytest.raises(ValueError, match=r"vectors \(2, 3\) are all zero"):
        S.top_singular_direction(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="direction is a zero vector"):
        S.project(np.ones((2, 3)), np.zeros(3))
    with pytest.raises(ValueError, match=r"against \(2, 3\) has zero vectors at rows \[1\]"):
        S.orthogonalize(np.ones(3), [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])


def test_shape_and_value_errors():
    with pytest.raises(ValueError, match=r"vectors has shape \(4,\); expected a non-empty 2-D \(K, D\)"):
        S.cosine_matrix(np.ones(4))
    with pytest.raises(ValueError, match=r"vectors has shape \(0, 4\)"):
        S.top_singular_direction(np.ones((0, 4)))
    with pytest.raises(ValueError, match=r"a \(3,\) and b \(4,\) have different sizes"):
        S.cosine(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match=r"a has shape \(2, 2\); expected a non-empty 1-D"):
        S.cosine(np.ones((2, 2)), np.ones(4))
    with pytest.raises(ValueError, match=r"acts has shape \(2, 3\); expected \(\.\.\., 4\)"):
        S.project(np.ones((2, 3)), np.ones(4))
    with pytest.raises(ValueError, match=r"against has shape \(2, 5\); expected \(4,\) or \(K, 4\)"):
        S.orthogonalize(np.ones(4), np.ones((2, 5)))
    with pytest.raises(ValueError, match=r"vectors \(2, 2\) has 1 non-finite values"):
        S.cosine_matrix([[1.0, np.nan], [1.0, 2.0]])


def test_norm_ratios_errors():
    with pytest.raises(ValueError, match=r"no residual norm for sites \['x'\]; residual_norms has \['a'\]"):
        S.norm_ratios({"a": 1.0, "x": 1.0}, {"a": 2.0})
    with pytest.raises(ValueError, match=r"residual norm at 'a' must be finite and > 0, got 0"):
        S.norm_ratios({"a": 1.0}, {"a": 0})
    with pytest.raises(ValueError, match=r"vector norm at 'a' must be finite and >= 0, got -1"):
        S.norm_ratios({"a": -1.0}, {"a": 2.0})
