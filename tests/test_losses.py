"""Objectives against NumPy references written from the formulas (docs/method.md §4), plus sampling and descent."""
import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from exemplar_tf.objectives import losses

B, N, D, M = 3, 7, 4, 5
TAU = 0.1


def unit_rows(rng, n, d):
    x = rng.normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def problem(rng):
    v = unit_rows(rng, B, D)
    bank = unit_rows(rng, N, D)
    indices = np.array([0, 4, 6])
    noise = np.array([[1, 2, 3, 1, 5], [0, 1, 2, 3, 6], [5, 5, 0, 1, 2]])
    return v, bank, indices, noise


def softmax_reference(logits, labels):
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return -np.mean(np.log(p[np.arange(len(labels)), labels]))


def nce_reference(v, bank, indices, noise, tau, z):
    """Probability form, straight from the paper: P = exp(w.v/tau)/Z, Pn = 1/N."""
    n, m = len(bank), noise.shape[1]
    p_pos = np.exp(np.sum(bank[indices] * v, axis=1) / tau) / z
    p_neg = np.exp(np.einsum("bd,bmd->bm", v, bank[noise]) / tau) / z
    m_pn = m / n
    per_example = -np.log(p_pos / (p_pos + m_pn)) - np.sum(np.log(m_pn / (p_neg + m_pn)), axis=1)
    z_estimate = n * np.mean(np.exp(np.einsum("bd,bmd->bm", v, bank[noise]) / tau))
    return per_example.mean(), z_estimate


def test_softmax_loss_matches_numpy(rng):
    logits = rng.normal(size=(B, N)) * 3
    labels = np.array([2, 0, 6])
    got = losses.softmax_loss(tf.constant(logits, tf.float32), tf.constant(labels))
    np.testing.assert_allclose(got.numpy(), softmax_reference(logits, labels), rtol=1e-5, atol=1e-5)


def test_nonparametric_softmax_loss_matches_numpy(problem):
    v, bank, indices, _ = problem
    got = losses.nonparametric_softmax_loss(
        tf.constant(v, tf.float32), tf.constant(bank, tf.float32), tf.constant(indices), TAU
    )
    np.testing.assert_allclose(got.numpy(), softmax_reference(v @ bank.T / TAU, indices), rtol=1e-5, atol=1e-5)


def test_bank_neighbours_are_the_nearest_other_rows_nearest_first(rng):
    bank = unit_rows(rng, N, D)
    indices = np.array([0, 4, 6, 4])
    got = losses.bank_neighbours(tf.Variable(bank, dtype=tf.float32), tf.constant(indices), 3).numpy()
    similarity = bank[indices] @ bank.T
    similarity[np.arange(len(indices)), indices] = -np.inf
    np.testing.assert_array_equal(got, np.argsort(-similarity, axis=1)[:, :3])
    assert not (got == indices[:, None]).any()


def test_bank_neighbours_of_a_bank_with_duplicate_rows_find_the_duplicate():
    bank = np.eye(4, dtype=np.float32)[[0, 1, 2, 3, 2]]  # row 4 equals row 2
    got = losses.bank_neighbours(tf.constant(bank), tf.constant([2, 4]), 1).numpy()
    np.testing.assert_array_equal(got, [[4], [2]])


def test_neighbourhood_softmax_loss_matches_numpy(problem):
    v, bank, indices, _ = problem
    neighbours = np.array([[1, 2], [0, 5], [3, 3]])
    got = losses.neighbourhood_softmax_loss(tf.constant(v, tf.float32), tf.constant(bank, tf.float32),
                                            tf.constant(indices), tf.constant(neighbours), TAU)
    p = np.exp(v @ bank.T / TAU)
    p /= p.sum(axis=1, keepdims=True)
    members = np.concatenate([indices[:, None], neighbours], axis=1)
    expected = -np.mean(np.log(np.take_along_axis(p, members, axis=1).sum(axis=1)))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_neighbourhood_softmax_loss_without_neighbours_is_the_nonparametric_softmax(problem):
    v, bank, indices, _ = problem
    args = tf.constant(v, tf.float32), tf.constant(bank, tf.float32), tf.constant(indices)
    got = losses.neighbourhood_softmax_loss(*args, tf.zeros([B, 0], tf.int32), TAU)
    np.testing.assert_allclose(got.numpy(), losses.nonparametric_softmax_loss(*args, TAU).numpy(), rtol=1e-6)


def test_nonparametric_softmax_over_k_active_rows_is_a_k_way_softmax():
    # v = e0, tau = 1: active rows e0, e1, -e0 score 1, 0, -1; the inactive row e0 (score 1) must not count.
    v = tf.constant([[1.0, 0.0], [0.0, 1.0]])
    bank = tf.constant([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [1.0, 0.0]])
    labels = tf.constant([0, 2])  # second example: v = e1 scores 0, 1, 0 (inactive 0)
    got = losses.nonparametric_softmax_loss(v, bank, labels, 1.0, num_active=tf.constant(3, tf.int64))
    first = -np.log(np.e / (np.e + 1 + 1 / np.e))
    second = -np.log(1 / (1 + np.e + 1))
    np.testing.assert_allclose(got.numpy(), (first + second) / 2, rtol=1e-6)
    everything = losses.nonparametric_softmax_loss(v, bank, labels, 1.0)
    assert float(everything) > float(got)  # the fourth row adds to the denominators without the mask


def test_nonparametric_and_nce_losses_over_k_active_rows_equal_those_on_a_k_row_bank(problem):
    v, bank, indices, noise = problem  # indices and noise < 7 = N; take K = 7 of a 10-row bank
    padded = np.concatenate([bank, unit_rows(np.random.default_rng(5), 3, D)])
    k = tf.constant(N, tf.int64)
    args = (tf.constant(v, tf.float32), tf.constant(indices))
    np.testing.assert_allclose(
        losses.nonparametric_softmax_loss(args[0], tf.constant(padded, tf.float32), args[1], TAU, k).numpy(),
        softmax_reference(v @ bank.T / TAU, indices), rtol=1e-5)
    loss, z_estimate = losses.nce_loss(args[0], tf.constant(padded, tf.float32), args[1], tf.constant(noise), TAU,
                                       3.0, num_active=k)
    want_loss, want_z = nce_reference(v, bank, indices, noise, TAU, 3.0)  # Pn = 1/K and Z = K * mean exp
    np.testing.assert_allclose(loss.numpy(), want_loss, rtol=1e-5)
    np.testing.assert_allclose(z_estimate.numpy(), want_z, rtol=1e-5)


@pytest.mark.parametrize("z", [3.0, 250.0])
def test_nce_loss_matches_numpy(problem, z):
    v, bank, indices, noise = problem
    loss, z_estimate = losses.nce_loss(
        tf.constant(v, tf.float32), tf.constant(bank, tf.float32), tf.constant(indices), tf.constant(noise), TAU, z
    )
    want_loss, want_z = nce_reference(v, bank, indices, noise, TAU, z)
    np.testing.assert_allclose(loss.numpy(), want_loss, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(z_estimate.numpy(), want_z, rtol=1e-5)


def test_nce_loss_with_shared_noise_equals_broadcast_per_example_noise(problem):
    v, bank, indices, noise = problem
    args = (tf.constant(v, tf.float32), tf.constant(bank, tf.float32), tf.constant(indices))
    shared = losses.nce_loss(*args, tf.constant(noise[0]), TAU, 5.0)
    broadcast = losses.nce_loss(*args, tf.constant(np.tile(noise[0], (B, 1))), TAU, 5.0)
    np.testing.assert_allclose(shared, broadcast, rtol=1e-6)


def test_nce_loss_is_finite_for_extreme_scores():
    """exp(1/0.01) overflows float32; the log-space loss must not (Z itself is then beyond float32)."""
    v = tf.constant([[1.0, 0.0]])
    bank = tf.constant([[1.0, 0.0], [-1.0, 0.0], [1.0, 0.0]])
    for z in (1e-3, 1e30):
        loss, _ = losses.nce_loss(v, bank, tf.constant([0]), tf.constant([[1, 2]]), 0.01, z)
        assert np.isfinite(loss.numpy())


def test_sample_noise_excludes_positive_and_is_uniform():
    num_instances, m = 7, 4000
    indices = tf.constant(np.arange(num_instances))
    noise = losses.sample_noise(indices, num_instances, m, tf.constant([1, 2], tf.int32)).numpy()
    assert noise.shape == (num_instances, m) and noise.dtype == np.int64
    for positive, row in enumerate(noise):
        assert positive not in row
        others = [i for i in range(num_instances) if i != positive]
        counts = np.array([np.sum(row == i) for i in others])
        assert counts.sum() == m
        assert stats.chisquare(counts).pvalue > 1e-3


def test_sample_noise_is_deterministic_in_seed():
    indices = tf.constant([3, 1])
    a = losses.sample_noise(indices, 100, 16, tf.constant([5, 6], tf.int32))
    b = losses.sample_noise(indices, 100, 16, tf.constant([5, 6], tf.int32))
    c = losses.sample_noise(indices, 100, 16, tf.constant([5, 7], tf.int32))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_sample_shared_noise_excludes_batch_and_is_uniform():
    num_instances, m = 12, 9000
    indices = tf.constant([7, 2, 7, 11, 0])
    noise = losses.sample_shared_noise(indices, num_instances, m, tf.constant([3, 4], tf.int32)).numpy()
    allowed = sorted(set(range(num_instances)) - {0, 2, 7, 11})
    assert noise.shape == (m,) and set(noise.tolist()) == set(allowed)
    counts = np.array([np.sum(noise == i) for i in allowed])
    assert stats.chisquare(counts).pvalue > 1e-3


def test_update_z():
    assert losses.update_z(7.0, 3.0, 0.9, True).numpy() == pytest.approx(3.0)
    assert losses.update_z(7.0, 3.0, 0.0, False).numpy() == pytest.approx(7.0)
    assert losses.update_z(7.0, 3.0, 0.9, False).numpy() == pytest.approx(0.9 * 7.0 + 0.1 * 3.0)


def descend(loss_of_weights, weights, steps=20, lr=0.5):
    """Plain SGD on one variable; returns (first loss, last loss)."""
    history = []
    for _ in range(steps):
        with tf.GradientTape() as tape:
            loss = loss_of_weights(weights)
        history.append(float(loss))
        weights.assign_sub(lr * tape.gradient(loss, weights))
    return history[0], history[-1]


@pytest.fixture
def tiny_encoder_problem(rng):
    """8 inputs, a linear 'encoder' [6,D] to learn, a fixed random bank with one row per input."""
    x = tf.constant(rng.normal(size=(8, 6)), tf.float32)
    weights = tf.Variable(rng.normal(size=(6, D)) * 0.1, dtype=tf.float32)
    bank = tf.constant(unit_rows(rng, 8, D), tf.float32)
    return x, weights, bank, tf.range(8)


def test_sgd_lowers_softmax_loss(tiny_encoder_problem):
    x, weights, _, labels = tiny_encoder_problem
    first, last = descend(lambda w: losses.softmax_loss(x @ tf.pad(w, [[0, 0], [0, 4]]), labels), weights)
    assert last < first


def test_sgd_lowers_nonparametric_softmax_loss(tiny_encoder_problem):
    x, weights, bank, indices = tiny_encoder_problem
    loss = lambda w: losses.nonparametric_softmax_loss(tf.math.l2_normalize(x @ w, axis=1), bank, indices, TAU)
    first, last = descend(loss, weights)
    assert last < first


def test_sgd_lowers_nce_loss(tiny_encoder_problem):
    x, weights, bank, indices = tiny_encoder_problem
    noise = losses.sample_noise(indices, 8, M, tf.constant([0, 1], tf.int32))

    def loss(w):
        return losses.nce_loss(tf.math.l2_normalize(x @ w, axis=1), bank, indices, noise, TAU, 8.0)[0]

    first, last = descend(loss, weights, lr=0.05)
    assert last < first


def test_uses_dense_scores_rule_and_overrides():
    limit = losses.DENSE_SCORES_MAX_N_PER_NOISE
    assert losses.uses_dense_scores(limit * 100, 100)
    assert not losses.uses_dense_scores(limit * 100 + 1, 100)
    assert not losses.uses_dense_scores(None, 100)
    assert losses.uses_dense_scores(10**7, 1, "dense")
    assert not losses.uses_dense_scores(10, 100, "gather")
    with pytest.raises(ValueError, match="scores='rows'"):
        losses.uses_dense_scores(10, 100, "rows")


def _score_ops(scores, v, bank, noise):
    """Output shapes of the score ops in a traced noise_scores: MatMul [B,N] (dense) / gathered rows [B,m,D]."""
    graph = tf.function(lambda: losses.noise_scores(v, bank, noise, scores)).get_concrete_function().graph
    return {(op.type, tuple(op.outputs[0].shape)) for op in graph.get_operations() if op.outputs}


@pytest.mark.parametrize("as_variable", [False, True])
def test_dense_and_gather_scores_give_the_same_loss_gradient_and_z(rng, as_variable):
    b, n, d, m = 6, 300, 16, 40
    v = tf.constant(unit_rows(rng, b, d), tf.float32)
    bank_rows = unit_rows(rng, n, d).astype(np.float32)
    bank = tf.Variable(bank_rows, trainable=False) if as_variable else tf.constant(bank_rows)
    indices = tf.constant(rng.integers(0, n, b))
    noise = losses.sample_noise(indices, n, m, tf.constant([1, 2]))
    # The two paths really differ: dense multiplies v by the whole bank, gather copies B*m rows.
    dense_ops, gather_ops = _score_ops("dense", v, bank, noise), _score_ops("gather", v, bank, noise)
    assert ("MatMul", (b, n)) in dense_ops and not any(shape == (b, m, d) for _, shape in dense_ops)
    assert any(shape == (b, m, d) for _, shape in gather_ops) and ("MatMul", (b, n)) not in gather_ops
    results = {}
    for scores in ("dense", "gather"):
        with tf.GradientTape() as tape:
            tape.watch(v)
            loss, z_estimate = losses.nce_loss(v, bank, indices, noise, TAU, 40.0, scores=scores)
        results[scores] = (loss.numpy(), z_estimate.numpy(), tape.gradient(loss, v).numpy())
    want_loss, want_z = nce_reference(v.numpy(), bank_rows, indices.numpy(), noise.numpy(), TAU, 40.0)
    np.testing.assert_allclose(results["dense"][0], want_loss, rtol=1e-5)
    for got, want in zip(results["dense"], results["gather"]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert np.abs(results["dense"][2]).max() > 1e-3  # a real gradient, not zeros on both sides


@pytest.mark.parametrize("strength", [0.0, 0.7, 50.0])
def test_proximal_loss_matches_numpy(problem, strength):
    v, bank, indices, _ = problem
    expected = strength * np.mean(np.sum((v - bank[indices]) ** 2, axis=1))
    got = losses.proximal_loss(tf.constant(v, tf.float32), tf.constant(bank, tf.float32), indices, strength)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-7)


def test_proximal_loss_pulls_v_towards_the_old_row_and_leaves_the_bank_alone(problem):
    v, bank, indices, _ = problem
    v_var = tf.Variable(v, dtype=tf.float32)
    bank_var = tf.Variable(bank, dtype=tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        loss = losses.proximal_loss(v_var, bank_var, indices, 3.0)
    np.testing.assert_allclose(tape.gradient(loss, v_var).numpy(), 3.0 * 2 * (v - bank[indices]) / B,
                               rtol=1e-5, atol=1e-6)
    assert tape.gradient(loss, bank_var) is None
