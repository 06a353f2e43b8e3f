"""Direction-finding math against planted directions and independent numpy oracles."""

import dataclasses
import time

import numpy as np
import pytest

from mlx_steer.extraction import methods as M

D, N = 64, 64


def unit(v):
    return v / np.linalg.norm(v)


def cos(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture
def planted():
    """N pairs differing by 4u, both sides shifted by the same large offset."""
    rng = np.random.default_rng(0)
    u = unit(rng.normal(size=D))
    offset = 3 * rng.normal(size=D)
    pos = 0.1 * rng.normal(size=(N, D)) + 2 * u + offset
    neg = 0.1 * rng.normal(size=(N, D)) - 2 * u + offset
    return u, pos, neg


@pytest.mark.parametrize(
    "fn",
    [M.mean_difference, M.pca_direction, M.pca_center_direction, lambda p, n: M.logistic_probe(p, n).direction],
    ids=["mean_difference", "pca_direction", "pca_center_direction", "logistic_probe"],
)
def test_recovers_planted_direction(planted, fn):
    u, pos, neg = planted
    d = fn(pos, neg)
    assert d.shape == (D,) and d.dtype == np.float32
    assert cos(d, u) >= 0.99
    assert cos(fn(neg, pos), u) <= -0.99  # swapping the classes flips the direction


def test_centered_pca_recovers_direction_of_varying_strength():
    # centered PCA sees how the differences vary, so the concept's strength must vary per pair
    rng = np.random.default_rng(1)
    u = unit(rng.normal(size=D))
    a = rng.uniform(0.5, 3.5, size=(N, 1))
    pos = 0.1 * rng.normal(size=(N, D)) + a * u + 5.0
    neg = 0.1 * rng.normal(size=(N, D)) - a * u + 5.0
    d = M.pca_direction(pos, neg, center=True)
    assert cos(d, u) >= 0.98


# -- oracles -------------------------------------------------------------------------------------
def test_mean_difference_equals_numpy_means():
    rng = np.random.default_rng(2)
    pos, neg = rng.normal(size=(7, 5)).astype(np.float32), rng.normal(size=(4, 5)).astype(np.float32)
    expected = (pos.astype(np.float64).mean(0) - neg.astype(np.float64).mean(0)).astype(np.float32)
    assert np.array_equal(M.mean_difference(pos, neg), expected)
    assert np.array_equal(M.mean_difference([[1.0, 2.0]], [[0.5, 4.0], [1.5, 0.0]]), np.float32([0.0, 0.0]))


@pytest.mark.parametrize("center", [False, True])
def test_pca_direction_equals_first_right_singular_vector(center):
    rng = np.random.default_rng(3)
    pos, neg = rng.normal(size=(6, 5)) + [1, 0, 0, 0, 0], rng.normal(size=(6, 5))
    diffs = pos - neg
    x = diffs - diffs.mean(0) if center else diffs
    v = np.linalg.svd(x)[2][0]
    expected = v if diffs.mean(0) @ v > 0 else -v
    d = M.pca_direction(pos, neg, center=center)
    np.testing.assert_allclose(d, expected, atol=1e-6)
    assert abs(np.linalg.norm(d) - 1) < 1e-6 and float((diffs @ d).mean()) > 0


def test_pca_center_equals_uncentered_svd_of_differences():
    # the stacked midpoint-centered points are +-d_i/2, whose PCA is the uncentered SVD of the d_i
    rng = np.random.default_rng(4)
    pos, neg = rng.normal(size=(5, 8)) + 0.5, rng.normal(size=(5, 8))
    diffs = pos - neg
    v = np.linalg.svd(diffs)[2][0]
    expected = v if diffs.mean(0) @ v > 0 else -v
    np.testing.assert_allclose(M.pca_center_direction(pos, neg), expected, atol=1e-6)


def test_pca_sign_tie_makes_largest_coordinate_positive():
    pos = np.array([[0.0, 3.0, 0.0], [0.0, -3.0, 0.0]])  # differences +-3 e1: mean projection 0
    d = M.pca_direction(pos, np.zeros((2, 3)))
    np.testing.assert_allclose(d, [0.0, 1.0, 0.0], atol=1e-7)


def test_pca_degenerate_differences():
    pos = np.ones((4, 3)) + [1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match=r"centered differences of 4 pairs have no variance.*center=False"):
        M.pca_direction(pos, np.ones((4, 3)), center=True)
    np.testing.assert_allclose(M.pca_direction(pos, np.ones((4, 3))), [1.0, 0.0, 0.0], atol=1e-7)
    for fn in (M.pca_direction, M.pca_center_direction):
        with pytest.raises(ValueError, match="every pos - neg difference is zero"):
            fn(np.ones((3, 2)), np.ones((3, 2)))


# -- logistic probe ------------------------------------------------------------------------------
def assert_optimal(r, pos, neg, l2):
    """First-order optimality of sum log-loss + l2/2 |w|^2 (bias unpenalized), original space."""
    x = np.concatenate([pos, neg]).astype(np.float64)
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    p = 1 / (1 + np.exp(-(x @ r.weight + r.bias)))
    assert np.linalg.norm(x.T @ (p - y) + l2 * r.weight) < 1e-6
    assert abs(float(np.sum(p - y))) < 1e-6


@pytest.mark.parametrize(
    "n_pos,n_neg,d,l2", [(40, 30, 8, 1e-2), (40, 30, 8, 3.0), (20, 25, 300, 1e-2), (12, 12, 50, 0.5)]
)
def test_probe_satisfies_first_order_optimality(n_pos, n_neg, d, l2):
    rng = np.random.default_rng(5)
    pos, neg = rng.normal(size=(n_pos, d)) + 0.3, rng.normal(size=(n_neg, d)) * 2
    r = M.logistic_probe(pos, neg, l2=l2)
    assert_optimal(r, pos, neg, l2)
    assert r.weight.shape == (d,) and r.weight.dtype == np.float64
    np.testing.assert_allclose(r.direction, r.weight / np.linalg.norm(r.weight), rtol=1e-6, atol=1e-7)
    assert 1 <= r.n_iter <= 100


def test_probe_separates_separable_data_and_points_to_pos(planted):
    u, pos, neg = planted
    r = M.logistic_probe(pos, neg)
    assert_optimal(r, pos, neg, 1e-2)
    assert r.accuracy == 1.0
    assert np.all(r.logits(pos) > 0) and np.all(r.logits(neg) < 0)
    assert (pos @ r.direction).mean() > (neg @ r.direction).mean()


def test_probe_accuracy_on_overlapping_classes():
    rng = np.random.default_rng(6)
    pos, neg = rng.normal(size=(200, 3)) + [0.5, 0, 0], rng.normal(size=(200, 3))
    r = M.logistic_probe(pos, neg)
    z = np.concatenate([pos, neg]) @ r.weight + r.bias
    expected = np.mean((z > 0) == np.r_[np.ones(200), np.zeros(200)].astype(bool))
    assert r.accuracy == expected and 0.5 < r.accuracy < 1.0


def test_probe_high_dimensional_is_fast():
    # D >> N: a Newton solve on D x D would take many seconds here; the row-span solve takes ms
    rng = np.random.default_rng(7)
    u = unit(rng.normal(size=4096))
    pos, neg = rng.normal(size=(32, 4096)) + 3 * u, rng.normal(size=(32, 4096)) - 3 * u
    t = time.perf_counter()
    r = M.logistic_probe(pos, neg)
    assert time.perf_counter() - t < 2.0
    assert_optimal(r, pos, neg, 1e-2)
    assert r.accuracy == 1.0


def test_probe_result_is_frozen():
    r = M.logistic_probe(np.eye(3) + 1, -np.eye(3))
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.bias = 0.0
    with pytest.raises(ValueError, match=r"acts has shape \(2, 4\); expected \(\.\.\., 3\)"):
        r.logits(np.ones((2, 4)))


def test_probe_errors():
    pos, neg = np.eye(3) + 1, -np.eye(3)
    for bad in (0, -1.0, float("nan"), "x", True):
        with pytest.raises(ValueError, match=r"l2 must be a positive finite number, got"):
            M.logistic_probe(pos, neg, l2=bad)
    with pytest.raises(ValueError, match=r"tol must be a positive finite number, got 0"):
        M.logistic_probe(pos, neg, tol=0)
    for bad in (0, 2.5, None):
        with pytest.raises(ValueError, match=r"max_iter must be an int >= 1, got"):
            M.logistic_probe(pos, neg, max_iter=bad)
    with pytest.raises(RuntimeError, match=r"did not converge in max_iter=1 .*raise max_iter or l2"):
        M.logistic_probe(pos, neg, max_iter=1)
    with pytest.raises(ValueError, match="indistinguishable"):
        M.logistic_probe(np.ones((3, 4)), np.ones((2, 4)))
    with pytest.raises(ValueError, match=r"logistic_probe: neg has shape \(0, 3\); expected a non-empty 2-D"):
        M.logistic_probe(pos, np.zeros((0, 3)))


# -- ActAdd --------------------------------------------------------------------------------------
def test_actadd_difference():
    a, b = np.arange(12.0).reshape(3, 4), np.ones((3, 4))
    out = M.actadd_difference(a, b)
    assert out.dtype == np.float32 and np.array_equal(out, (a - b).astype(np.float32))
    with pytest.raises(ValueError, match=r"pos_seq has 3 positions and neg_seq has 2.*pad the shorter prompt"):
        M.actadd_difference(a, b[:2])
    with pytest.raises(ValueError, match=r"pos_seq \(3, 4\) and neg_seq \(3, 5\) have different hidden sizes"):
        M.actadd_difference(a, np.ones((3, 5)))
    with pytest.raises(ValueError, match=r"neg_seq has shape \(4,\)"):
        M.actadd_difference(a, np.ones(4))


# -- validation ----------------------------------------------------------------------------------
@pytest.mark.parametrize("fn", [M.mean_difference, M.pca_direction, M.pca_center_direction, M.logistic_probe])
def test_shape_and_value_errors(fn):
    ok = np.random.default_rng(8).normal(size=(3, 4))
    name = fn.__name__
    with pytest.raises(ValueError, match=rf"{name}: pos has shape \(4,\); expected a non-empty 2-D"):
        fn(np.ones(4), ok)
    with pytest.raises(ValueError, match=rf"{name}: neg has shape \(3, 4, 1\)"):
        fn(ok, ok[..., None])
    with pytest.raises(ValueError, match=r"pos \(3, 4\) and neg \(3, 5\) have different hidden sizes"):
        fn(ok, np.ones((3, 5)))
    bad = ok.copy()
    bad[1, 2], bad[2, 0] = np.nan, np.inf
    with pytest.raises(ValueError, match=r"neg \(3, 4\) has 2 non-finite values \(NaN or inf\), in rows \[1, 2\]"):
        fn(ok, bad)
    with pytest.raises(ValueError, match=r"pos must be a numeric array, got text \(<U1\)"):
        fn([["a", "b", "c", "d"]], ok)
    with pytest.raises(ValueError, match="pos must be real"):
        fn(ok + 1j, ok)


@pytest.mark.parametrize("fn", [M.pca_direction, M.pca_center_direction])
def test_pca_needs_pairs(fn):
    with pytest.raises(ValueError, match=r"needs paired rows; pos \(3, 4\) and neg \(2, 4\) differ in count"):
        fn(np.ones((3, 4)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"needs at least 2 pairs, got 1"):
        fn(np.ones((1, 4)), np.zeros((1, 4)))
