"""Merging similar surrogate classes: spherical k-means puts planted near-duplicates together, the classifier's
merged columns are their members' means, masked columns get no probability, and the state's relabelling."""
import numpy as np
import pytest
import tensorflow as tf

from exemplar_tf.data import merging
from exemplar_tf.objectives import losses
from exemplar_tf.training.config import TrainConfig
from exemplar_tf.training.step import build_state, merge_classes

GROUPS, COPIES = 6, 3


def _planted_codes(rng, dim=16, noise=0.02, scale_spread=True):
    """GROUPS random directions, COPIES noisy copies of each (rows scaled differently: only the direction
    counts), shuffled. Returns (codes [GROUPS*COPIES, dim], group of each row)."""
    centres = rng.normal(size=(GROUPS, dim))
    group = rng.permutation(np.repeat(np.arange(GROUPS), COPIES))
    codes = centres[group] + noise * rng.normal(size=(len(group), dim))
    if scale_spread:
        codes *= rng.uniform(0.1, 10.0, size=(len(group), 1))
    return codes.astype(np.float32), group


def _same_partition(labels, group):
    """Every group has one label and no two groups share one."""
    pairs = set(zip(group.tolist(), labels.tolist()))
    return len(pairs) == len(set(group.tolist())) == len(set(labels.tolist()))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_near_duplicates_are_merged_into_one_class_each(seed):
    codes, group = _planted_codes(np.random.default_rng(seed))
    labels = merging.merge_labels(codes, GROUPS, seed=seed)
    assert labels.dtype == np.int64 and labels.shape == (GROUPS * COPIES,)
    assert _same_partition(labels, group)
    assert sorted(set(labels.tolist())) == list(range(GROUPS))
    _, first = np.unique(labels, return_index=True)
    assert list(first) == sorted(first)  # classes numbered in order of their first seed


def test_clusters_follow_the_direction_not_the_length():
    # Two directions; each has a short and a long copy. Euclidean k-means on the raw codes would pair by length.
    codes = np.array([[1.0, 0.0], [100.0, 1.0], [0.0, 1.0], [1.0, 100.0]], np.float32)
    assert merging.merge_labels(codes, 2).tolist() == [0, 0, 1, 1]


def test_k_equal_to_n_keeps_every_seed_apart_and_bad_k_is_refused():
    codes, _ = _planted_codes(np.random.default_rng(0))
    assert len(set(merging.merge_labels(codes, len(codes)).tolist())) == len(codes)
    with pytest.raises(ValueError, match="1 <= k <= N"):
        merging.merge_labels(codes, len(codes) + 1)


def test_merged_columns_are_the_members_means_and_the_rest_stay():
    kernel = np.arange(2 * 5, dtype=np.float32).reshape(2, 5)  # [F=2, N=5]
    labels = np.array([1, 0, 1, 0, 2])
    merged = merging.merged_columns(kernel, labels)
    np.testing.assert_allclose(merged[:, 0], (kernel[:, 1] + kernel[:, 3]) / 2)
    np.testing.assert_allclose(merged[:, 1], (kernel[:, 0] + kernel[:, 2]) / 2)
    np.testing.assert_allclose(merged[:, 2], kernel[:, 4])
    np.testing.assert_array_equal(merged[:, 3:], kernel[:, 3:])
    bias = np.array([1.0, 2.0, 3.0, 4.0, 5.0], np.float32)
    np.testing.assert_allclose(merging.merged_columns(bias, labels), [3.0, 2.0, 5.0, 4.0, 5.0])


def test_merged_bank_rows_are_the_normalised_member_means_and_the_rest_stay(rng):
    rows = rng.normal(size=(6, 3)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    labels = np.array([1, 0, 1, 2, 0, 1])
    merged = merging.merged_bank_rows(rows, labels)
    assert merged.dtype == np.float32 and merged.shape == rows.shape
    for c, members in enumerate([[1, 4], [0, 2, 5], [3]]):
        mean = rows[members].mean(axis=0)
        np.testing.assert_allclose(merged[c], mean / np.linalg.norm(mean), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(merged[3:], rows[3:])  # inactive rows as they were
    cancelling = merging.merged_bank_rows(np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]], np.float32),
                                          np.array([0, 0, 1]))
    np.testing.assert_array_equal(cancelling[0], [0.0, 0.0])  # a mean of exactly 0 stays 0, not NaN


def test_masked_columns_get_no_probability_and_no_gradient():
    logits = tf.Variable(tf.random.stateless_normal([4, 6], seed=[0, 1]))
    with tf.GradientTape() as tape:
        masked = losses.mask_inactive(logits, tf.constant(3, tf.int64))
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=[0, 1, 2, 1], logits=masked))
    grad = tape.gradient(loss, logits).numpy()
    probabilities = tf.nn.softmax(masked).numpy()
    assert np.isfinite(loss.numpy())
    np.testing.assert_array_equal(probabilities[:, 3:], 0.0)
    np.testing.assert_array_equal(grad[:, 3:], 0.0)
    np.testing.assert_allclose(probabilities[:, :3], tf.nn.softmax(logits[:, :3]).numpy(), rtol=1e-6)
    assert np.all(grad[:, :3] != 0)
    jitted = tf.function(losses.mask_inactive, jit_compile=True)(logits, tf.constant(3, tf.int64))
    np.testing.assert_array_equal(jitted.numpy(), masked.numpy())


def _planted_seed_patches():
    """GROUPS random patches, each seeded COPIES times with +-1/255 noise: (instances dataset, group of each)."""
    rng = np.random.default_rng(0)
    base = rng.uniform(size=(GROUPS, 32, 32, 3))
    group = rng.permutation(np.repeat(np.arange(GROUPS), COPIES))
    images = np.clip(base[group] + rng.uniform(-1, 1, size=(len(group), 32, 32, 3)) / 255, 0, 1).astype(np.float32)
    instances = tf.data.Dataset.from_tensor_slices({"image": images, "index": np.arange(len(group), dtype=np.int64)})
    return instances, group


def _merging_state(strategy=None, objective="softmax"):
    config = TrainConfig(run_dir="/tmp/unused", arch="small", num_seeds=GROUPS * COPIES, merge_classes_at=1,
                         merge_to=GROUPS, steps=2, objective=objective, nce_m=4)
    with (strategy or tf.distribute.get_strategy()).scope():
        return build_state(config, GROUPS * COPIES, np.full(3, 0.5, np.float32))


def test_merge_classes_on_planted_near_duplicate_seed_patches():
    # The random encoder's representations of a group's copies are nearly equal, so the merge makes each group
    # one class.
    instances, group = _planted_seed_patches()
    state = _merging_state()
    np.testing.assert_array_equal(state.objective.relabel.numpy(), np.arange(len(group)))
    assert not state.objective.merged
    kernel_before = state.objective.head.logits.kernel.numpy()
    labels = merge_classes(state, instances.shuffle(100, seed=0), GROUPS, seed=0)
    assert _same_partition(labels, group)
    assert state.objective.merged and state.objective.relabel.dtype == tf.int64
    np.testing.assert_array_equal(state.objective.relabel.numpy(), labels)
    members = np.flatnonzero(labels == 0)
    np.testing.assert_allclose(state.objective.head.logits.kernel.numpy()[:, 0], kernel_before[:, members].mean(axis=1),
                               rtol=1e-5, atol=1e-7)
    assert state.checkpoint().relabel is state.objective.relabel


def test_merge_under_mirrored_strategy_writes_the_same_map_and_columns_on_every_replica(two_cpus):
    instances, group = _planted_seed_patches()
    state = _merging_state(two_cpus)
    labels = merge_classes(state, instances, GROUPS, seed=0)
    assert _same_partition(labels, group) and state.objective.merged
    for variable in (state.objective.relabel, state.objective.head.logits.kernel.value, state.objective.head.logits.bias.value):
        copies = [v.numpy() for v in two_cpus.experimental_local_results(variable)]
        assert len(copies) == 2
        np.testing.assert_array_equal(copies[0], copies[1])
    np.testing.assert_array_equal(two_cpus.experimental_local_results(state.objective.relabel)[1].numpy(), labels)


@pytest.mark.parametrize("objective", ["nonparametric", "nce"])
def test_merge_classes_with_a_bank_makes_k_unit_rows_of_the_member_means(objective):
    instances, group = _planted_seed_patches()
    state = _merging_state(objective=objective)
    if objective == "nce":
        state.objective.z.assign(5.0)  # as if NCE had estimated Z over the N rows
    bank_before = state.objective.bank().numpy()
    head_before = [w.numpy() for w in state.objective.head.weights]
    labels = merge_classes(state, instances.shuffle(100, seed=0), GROUPS, seed=0)
    assert _same_partition(labels, group) and state.objective.merged
    bank = state.objective.bank().numpy()
    for c in range(GROUPS):
        mean = bank_before[labels == c].mean(axis=0)
        np.testing.assert_allclose(bank[c], mean / np.linalg.norm(mean), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(bank[:GROUPS], axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(bank[GROUPS:], bank_before[GROUPS:])  # inactive from now on
    np.testing.assert_array_equal(state.objective.rows_in_use().numpy(), bank[:GROUPS])
    for got, want in zip(state.objective.head.weights, head_before):  # the projection head is not merged
        np.testing.assert_array_equal(got.numpy(), want)
    if objective == "nce":
        assert float(state.objective.z.numpy()) == -1.0  # NCE's Z: re-estimated over the K rows


def test_merged_bank_under_mirrored_strategy_is_the_same_on_every_replica(two_cpus):
    instances, group = _planted_seed_patches()
    state = _merging_state(two_cpus, objective="nce")
    labels = merge_classes(state, instances, GROUPS, seed=0)
    assert _same_partition(labels, group)
    for variable in (state.objective.bank.variable, state.objective.z, state.objective.relabel):
        copies = [v.numpy() for v in two_cpus.experimental_local_results(variable)]
        assert len(copies) == 2
        np.testing.assert_array_equal(copies[0], copies[1])
    bank = two_cpus.experimental_local_results(state.objective.bank.variable)[1].numpy()
    np.testing.assert_allclose(np.linalg.norm(bank[:GROUPS], axis=1), 1.0, rtol=1e-6)
