"""The training step under tf.distribute on two logical CPUs: replicas stay identical, and two replicas
(all steps in one call) match one device (one step per call) on the same global batches."""
import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from exemplar_tf import models
from exemplar_tf.objectives import BankObjective
from exemplar_tf.training.config import TrainConfig
from exemplar_tf.training.step import build_state, make_train_step

NUM_INSTANCES, GLOBAL_BATCH, STEPS = 40, 8, 3


def _config(objective, **kw):
    return TrainConfig(run_dir="/tmp/unused", arch="small", objective=objective, num_seeds=NUM_INSTANCES,
                       nce_m=16, batch_size=GLOBAL_BATCH, steps=10, lr=0.05, tau=0.1, dropout=0.0, **kw)


def _batches():
    rng = np.random.default_rng(1)
    for _ in range(STEPS):
        images = rng.uniform(size=(GLOBAL_BATCH, 32, 32, 3)).astype(np.float32)
        labels = rng.choice(NUM_INSTANCES, size=GLOBAL_BATCH, replace=False).astype(np.int64)
        yield {"image": images, "label": labels}


def _distributed_iterator(strategy):
    """Each global batch of `_batches()` split in order over the replicas (replica r gets the r-th part)."""
    parts = strategy.num_replicas_in_sync
    size = GLOBAL_BATCH // parts
    pieces = [{k: v[r * size:(r + 1) * size] for k, v in batch.items()} for batch in _batches() for r in range(parts)]
    dataset = tf.data.Dataset.from_tensor_slices({k: np.stack([p[k] for p in pieces]) for k in pieces[0]})
    return iter(strategy.distribute_datasets_from_function(lambda context: dataset))


def _train(strategy, config, initial=None, steps_per_call=1):
    """Trains STEPS steps, `steps_per_call` per call; returns (state, the loss after each call)."""
    with strategy.scope():
        state = build_state(config, NUM_INSTANCES, np.full(3, 0.5, np.float32))
    if initial is not None:
        state.encoder.set_weights(initial.encoder.get_weights())
        state.objective.head.set_weights(initial.objective.head.get_weights())
        if isinstance(state.objective, BankObjective):
            state.objective.bank.bank.assign(initial.objective.bank.bank.value)
        if state.objective.relabel is not None:
            state.objective.relabel.assign(initial.objective.relabel.numpy())
    state.objective.at_step(config.steps - 1)  # past any step switch (--neighbours): its last phase
    train_steps = make_train_step(config, strategy, state)
    iterator = _distributed_iterator(strategy)
    losses = []
    for _ in range(STEPS // steps_per_call):
        out = train_steps(iterator, tf.constant(steps_per_call))
        assert int(out["steps"]) == steps_per_call and bool(out["finite"])
        losses.append(float(out["loss"]))
    return state, losses


def _local(variable, strategy):
    tf_variable = variable.value if isinstance(variable, keras.Variable) else variable
    return [np.asarray(v.numpy()) for v in strategy.experimental_local_results(tf_variable)]


@pytest.mark.parametrize("objective, noise", [("nonparametric", "per_example"), ("nce", "per_example"),
                                              ("nce", "shared")])
def test_bank_copies_are_bitwise_equal_on_every_replica(two_cpus, objective, noise):
    state, losses = _train(two_cpus, _config(objective, nce_noise=noise))
    copies = _local(state.objective.bank.bank, two_cpus)
    assert len(copies) == 2
    np.testing.assert_array_equal(copies[0], copies[1])
    assert all(np.isfinite(losses))
    if objective == "nce":
        z_copies = _local(state.objective.z, two_cpus)
        assert z_copies[0] == z_copies[1] and z_copies[0] > 0


@pytest.mark.parametrize("neighbours", [0, 2])
def test_two_replicas_match_one_device_on_the_same_global_batch(two_cpus, neighbours):
    config = _config("nonparametric", neighbours=neighbours)
    one_device = tf.distribute.OneDeviceStrategy("/cpu:0")
    with one_device.scope():
        initial = build_state(config, NUM_INSTANCES, np.full(3, 0.5, np.float32))
    reference, reference_losses = _train(one_device, config, initial)
    mirrored, mirrored_losses = _train(two_cpus, config, initial, steps_per_call=STEPS)  # all steps in one call
    np.testing.assert_allclose(mirrored_losses, reference_losses[-1:], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_local(mirrored.objective.bank.bank, two_cpus)[0], reference.objective.bank.bank.numpy(), atol=1e-5)
    for got, want in zip(mirrored.encoder.get_weights(), reference.encoder.get_weights()):
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert mirrored.step == reference.step == STEPS
    # Training moved the bank rows it saw and left the others alone.
    seen = np.unique(np.concatenate([b["label"] for b in _batches()]))
    unseen = np.setdiff1d(np.arange(NUM_INSTANCES), seen)
    initial_bank = initial.objective.bank.bank.numpy()
    assert not np.allclose(reference.objective.bank.bank.numpy()[seen], initial_bank[seen])
    np.testing.assert_array_equal(reference.objective.bank.bank.numpy()[unseen], initial_bank[unseen])


def _bank_consumers(config, num_instances):
    """Op types, in a traced objective + bank update as the training step runs them, that take the memory-bank
    variable as input."""
    state = build_state(config, num_instances, np.full(3, 0.5, np.float32))
    labels = tf.range(GLOBAL_BATCH, dtype=tf.int64)

    @tf.function
    def objective_and_update(outputs):
        loss, _ = state.objective.bank_loss(outputs, labels, None, tf.constant([0, 1], tf.int64), None)
        state.objective.bank.gather_and_update(labels, outputs)
        return loss

    outputs = tf.math.l2_normalize(tf.random.stateless_normal([GLOBAL_BATCH, config.embedding_dim], [1, 2]), -1)
    graph = objective_and_update.get_concrete_function(outputs).graph
    handles = [inner for outer, inner in graph.captures if outer is state.objective.bank.variable.handle]
    assert len(handles) == 1
    return {op.type for op in graph.get_operations() if any(x is handles[0] for x in op.inputs)}


@pytest.mark.parametrize("noise", ["per_example", "shared"])
def test_nce_step_reads_the_bank_in_place_unless_scores_are_dense(noise):
    """After a scatter, a whole read (ReadVariableOp) copies N x D values; gathers and the scatter do not."""
    config = _config("nce", nce_noise=noise)
    gathered = _bank_consumers(dataclasses.replace(config, nce_m=1), NUM_INSTANCES)  # N > 20 m: gather
    assert "ReadVariableOp" not in gathered and {"ResourceGather", "ResourceScatterUpdate"} <= gathered
    if noise == "per_example":  # N <= 20 m: dense scores read the bank whole
        assert "ReadVariableOp" in _bank_consumers(config, NUM_INSTANCES)


def test_merged_classes_under_two_replicas_match_one_device(two_cpus):
    # Seeds merged into 4 classes (seed % 4): both replicas gather labels through the same relabel map and mask
    # the same classifier columns, so their losses and weights follow the one-device run.
    config = _config("softmax", merge_classes_at=5, merge_to=4)
    one_device = tf.distribute.OneDeviceStrategy("/cpu:0")
    with one_device.scope():
        initial = build_state(config, NUM_INSTANCES, np.full(3, 0.5, np.float32))
    initial.objective.relabel.assign(np.arange(NUM_INSTANCES) % 4)
    reference, reference_losses = _train(one_device, config, initial)
    mirrored, mirrored_losses = _train(two_cpus, config, initial, steps_per_call=STEPS)
    first = next(_batches())  # step 1's loss: cross-entropy over the first 4 logits of the merged labels + decay
    logits = initial.objective.head(initial.encoder(first["image"], training=False))[:, :4]
    expected = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(first["label"] % 4, logits))
    expected += models.weight_decay_loss([initial.encoder, initial.objective.head], config.weight_decay)
    np.testing.assert_allclose(reference_losses[0], expected.numpy(), rtol=1e-5)
    np.testing.assert_allclose(mirrored_losses, reference_losses[-1:], rtol=1e-5, atol=1e-6)
    for got, want in zip(mirrored.objective.head.get_weights(), reference.objective.head.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    copies = _local(mirrored.objective.relabel, two_cpus)
    assert len(copies) == 2
    np.testing.assert_array_equal(copies[0], np.arange(NUM_INSTANCES) % 4)
    np.testing.assert_array_equal(copies[1], copies[0])


@pytest.mark.parametrize("objective", ["nonparametric", "nce"])
def test_merged_bank_under_two_replicas_stays_identical_and_writes_only_class_rows(two_cpus, objective):
    # Seeds merged into 20 classes (seed % 20, and the first batch's 5th seed put in the class of its 1st, so a
    # class is split over the two replicas): every replica updates row relabel[seed] with the global batch's mean
    # code per class, so the copies agree and rows >= 20 are never written. The exact softmax has no noise, so
    # it also follows the one-device run; NCE's noise is seeded per replica, so only its copies are compared.
    config = _config(objective, merge_classes_at=5, merge_to=20)
    first = next(_batches())["label"]
    relabel = np.arange(NUM_INSTANCES) % 20
    relabel[first[4]] = relabel[first[0]]
    one_device = tf.distribute.OneDeviceStrategy("/cpu:0")
    with one_device.scope():
        initial = build_state(config, NUM_INSTANCES, np.full(3, 0.5, np.float32))
    initial.objective.relabel.assign(relabel)
    mirrored, mirrored_losses = _train(two_cpus, config, initial, steps_per_call=STEPS)
    assert all(np.isfinite(mirrored_losses))
    copies = _local(mirrored.objective.bank.bank, two_cpus)
    assert len(copies) == 2
    np.testing.assert_array_equal(copies[0], copies[1])
    initial_bank = initial.objective.bank.bank.numpy()
    np.testing.assert_array_equal(copies[0][20:], initial_bank[20:])
    seen = np.unique(relabel[np.concatenate([b["label"] for b in _batches()])])
    assert not np.allclose(copies[0][seen], initial_bank[seen])
    if objective == "nce":
        z_copies = _local(mirrored.objective.z, two_cpus)
        assert z_copies[0] == z_copies[1] and z_copies[0] > 0
        return
    reference, reference_losses = _train(one_device, config, initial)
    np.testing.assert_allclose(mirrored_losses, reference_losses[-1:], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(copies[0], reference.objective.bank.bank.numpy(), atol=1e-5)


def test_npid_device_augmentation_under_two_replicas_keeps_the_banks_equal(two_cpus):
    # --method=npid --augment_on=device: each replica gets whole uint8 images and its own batch seed and runs
    # NPID's batched augmentation inside the step.
    from exemplar_tf.training.inputs import npid_batch_augment
    from exemplar_tf.training.views import device_views

    config = _config("nce", method="npid", augment_on="device", image_size=32, batch_norm=True)
    rng = np.random.default_rng(2)
    per_replica = GLOBAL_BATCH // 2
    elements = {"source_image": rng.integers(0, 256, (2 * STEPS, per_replica, 40, 40, 3), dtype=np.uint8),
                "label": np.stack([rng.choice(NUM_INSTANCES, per_replica, replace=False) for _ in range(2 * STEPS)]),
                "aug_seed": np.stack([np.zeros(2 * STEPS), np.arange(2 * STEPS)], axis=1).astype(np.int32)}
    dataset = tf.data.Dataset.from_tensor_slices(elements)
    with two_cpus.scope():
        state = build_state(config, NUM_INSTANCES, np.full(3, 0.5, np.float32),
                            device_views(npid_batch_augment(32), 1))
    initial = _local(state.objective.bank.bank, two_cpus)[0]
    train_steps = make_train_step(config, two_cpus, state)
    out = train_steps(iter(two_cpus.distribute_datasets_from_function(lambda context: dataset)), tf.constant(STEPS))
    assert int(out["steps"]) == STEPS and bool(out["finite"]) and np.isfinite(float(out["loss"]))
    first, second = _local(state.objective.bank.bank, two_cpus)
    np.testing.assert_array_equal(first, second)
    seen = np.isin(np.arange(NUM_INSTANCES), elements["label"])
    assert np.all(np.abs(first - initial).max(axis=1)[seen] > 0)  # every batch row of both replicas updated
    np.testing.assert_array_equal(first[~seen], initial[~seen])
