"""MemoryBank: update formula, unit rows, duplicates, and replica consistency under MirroredStrategy."""
import numpy as np
import pytest
import tensorflow as tf

from exemplar_tf.objectives.memory_bank import MemoryBank

N, D, ETA = 10, 4, 0.5


def numpy_update(bank, indices, v, eta):
    """Reference: duplicates averaged, then w <- normalise(eta*w + (1-eta)*v)."""
    bank = bank.copy()
    for i in np.unique(indices):
        target = v[indices == i].mean(axis=0)
        row = eta * bank[i] + (1 - eta) * target
        bank[i] = row / np.linalg.norm(row)
    return bank


def unit_rows(rng, n, d):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_initial_rows_are_unit_and_seeded():
    a, b, c = MemoryBank(N, D, seed=1), MemoryBank(N, D, seed=1), MemoryBank(N, D, seed=2)
    np.testing.assert_allclose(np.linalg.norm(a().numpy(), axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(a().numpy(), b().numpy())
    assert not np.array_equal(a().numpy(), c().numpy())
    assert a.bank.path.endswith("memory_bank") and not a.bank.trainable
    assert a.trainable_weights == []


def test_call_with_indices_reads_rows():
    bank = MemoryBank(N, D)
    np.testing.assert_array_equal(bank(tf.constant([3, 0])).numpy(), bank().numpy()[[3, 0]])


def test_update_matches_numpy_and_keeps_unit_rows(rng):
    bank = MemoryBank(N, D, momentum=ETA)
    for _ in range(3):
        before = bank().numpy()
        indices = rng.choice(N, size=4, replace=False)
        v = unit_rows(rng, 4, D)
        bank.update(tf.constant(indices), tf.constant(v))
        np.testing.assert_allclose(bank().numpy(), numpy_update(before, indices, v, ETA), atol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(bank().numpy(), axis=1), 1.0, atol=1e-6)


def test_duplicate_indices_use_the_mean_of_their_rows(rng):
    bank = MemoryBank(N, D, momentum=0.3)
    before = bank().numpy()
    indices = np.array([2, 5, 2, 2])
    v = unit_rows(rng, 4, D)
    bank.update(tf.constant(indices), tf.constant(v))
    np.testing.assert_allclose(bank().numpy(), numpy_update(before, indices, v, 0.3), atol=1e-6)


def test_gather_and_update_without_strategy_is_update(rng):
    a, b = MemoryBank(N, D), MemoryBank(N, D)
    indices, v = tf.constant([1, 7]), tf.constant(unit_rows(rng, 2, D))
    a.update(indices, v)
    tf.function(b.gather_and_update)(indices, v)
    np.testing.assert_array_equal(a().numpy(), b().numpy())


@pytest.fixture
def mirrored(two_cpus):
    return two_cpus


def test_bank_is_mirrored_with_only_first_replica_aggregation(mirrored):
    with mirrored.scope():
        bank = MemoryBank(N, D)
    wrapped = bank.bank.value
    assert isinstance(wrapped, tf.distribute.DistributedValues)
    assert wrapped.aggregation == tf.VariableAggregation.ONLY_FIRST_REPLICA
    assert len(mirrored.experimental_local_results(wrapped)) == 2


def test_replicas_stay_identical_and_match_one_device_update(mirrored, rng):
    """Each replica sees different data; every copy must equal a 1-device update on the global batch."""
    steps, per_replica = 4, 3
    with mirrored.scope():
        bank = MemoryBank(N, D, momentum=ETA, seed=3)
    reference = MemoryBank(N, D, momentum=ETA, seed=3)
    all_indices = tf.constant(rng.integers(0, N, size=(steps, 2 * per_replica)))
    all_v = tf.constant(unit_rows(rng, steps * 2 * per_replica, D).reshape(steps, 2 * per_replica, D))

    @tf.function
    def distributed_step(indices, v):
        def replica_fn():
            start = tf.distribute.get_replica_context().replica_id_in_sync_group * per_replica
            bank.gather_and_update(indices[start : start + per_replica], v[start : start + per_replica])

        mirrored.run(replica_fn)

    for step in range(steps):
        distributed_step(all_indices[step], all_v[step])
        reference.update(all_indices[step], all_v[step])

    copies = [t.numpy() for t in mirrored.experimental_local_results(bank.bank.value)]
    assert len(copies) == 2
    np.testing.assert_array_equal(copies[0], copies[1])
    np.testing.assert_allclose(copies[0], reference().numpy(), atol=1e-6)
    assert not np.allclose(copies[0], MemoryBank(N, D, seed=3)().numpy())


def test_a_row_shared_by_both_replicas_moves_towards_the_mean_of_the_whole_global_batch(mirrored, rng):
    """After merging classes, examples on different replicas can share a bank row (their class): every copy gets
    one update with the mean of all of that row's codes in the global batch, as on one device."""
    with mirrored.scope():
        bank = MemoryBank(N, D, momentum=ETA, seed=4)
    before = MemoryBank(N, D, seed=4)().numpy()
    indices = np.array([3, 1, 3, 3, 6, 1])  # replica 0: 3, 1, 3; replica 1: 3, 6, 1
    v = unit_rows(rng, 6, D)

    @tf.function
    def distributed_step(indices, v):
        def replica_fn():
            start = tf.distribute.get_replica_context().replica_id_in_sync_group * 3
            bank.gather_and_update(indices[start:start + 3], v[start:start + 3])

        mirrored.run(replica_fn)

    distributed_step(tf.constant(indices), tf.constant(v))
    copies = [t.numpy() for t in mirrored.experimental_local_results(bank.bank.value)]
    np.testing.assert_array_equal(copies[0], copies[1])
    np.testing.assert_allclose(copies[0], numpy_update(before, indices, v, ETA), atol=1e-6)
    row = ETA * before[3] + (1 - ETA) * v[[0, 2, 3]].mean(axis=0)
    np.testing.assert_allclose(copies[0][3], row / np.linalg.norm(row), atol=1e-6)


def test_checkpoint_from_mirrored_restores_into_a_plain_bank(mirrored, tmp_path, rng):
    with mirrored.scope():
        bank = MemoryBank(N, D, seed=1)
    bank.update(tf.constant([1, 2]), tf.constant(unit_rows(rng, 2, D)))
    path = tf.train.Checkpoint(bank=bank).save(str(tmp_path / "bank"))
    restored = MemoryBank(N, D, seed=9)
    tf.train.Checkpoint(bank=restored).restore(path).assert_existing_objects_matched()
    np.testing.assert_array_equal(restored().numpy(), bank().numpy())
