"""The training step under tf.distribute on two logical CPUs: replicas stay identical, and two replicas
match one device on the same global batch."""
import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

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


def _split(strategy, batch):
    half = GLOBAL_BATCH // strategy.num_replicas_in_sync

    def per_replica(ctx):
        start = ctx.replica_id_in_sync_group * half
        return {k: tf.constant(v[start:start + half]) for k, v in batch.items()}

    return strategy.experimental_distribute_values_from_function(per_replica)


def _train(strategy, config, initial=None):
    with strategy.scope():
        state = build_state(config, NUM_INSTANCES, np.full(3, 0.5, np.float32))
    if initial is not None:
        state.encoder.set_weights(initial.encoder.get_weights())
        state.head.set_weights(initial.head.get_weights())
        if state.bank is not None:
            state.bank.bank.assign(initial.bank.bank.value)
    step = make_train_step(config, strategy, state)
    losses = [float(step(_split(strategy, batch))["loss"]) for batch in _batches()]
    return state, losses


def _local(variable, strategy):
    tf_variable = variable.value if isinstance(variable, keras.Variable) else variable
    return [np.asarray(v.numpy()) for v in strategy.experimental_local_results(tf_variable)]


@pytest.mark.parametrize("objective, noise", [("nonparametric", "per_example"), ("nce", "per_example"),
                                              ("nce", "shared")])
def test_bank_copies_are_bitwise_equal_on_every_replica(two_cpus, objective, noise):
    state, losses = _train(two_cpus, _config(objective, nce_noise=noise))
    copies = _local(state.bank.bank, two_cpus)
    assert len(copies) == 2
    np.testing.assert_array_equal(copies[0], copies[1])
    assert all(np.isfinite(losses))
    if objective == "nce":
        z_copies = _local(state.z, two_cpus)
        assert z_copies[0] == z_copies[1] and z_copies[0] > 0


def test_two_replicas_match_one_device_on_the_same_global_batch(two_cpus):
    config = _config("nonparametric")
    one_device = tf.distribute.OneDeviceStrategy("/cpu:0")
    with one_device.scope():
        initial = build_state(config, NUM_INSTANCES, np.full(3, 0.5, np.float32))
    reference, reference_losses = _train(one_device, config, initial)
    mirrored, mirrored_losses = _train(two_cpus, config, initial)
    np.testing.assert_allclose(mirrored_losses, reference_losses, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_local(mirrored.bank.bank, two_cpus)[0], reference.bank.bank.numpy(), atol=1e-5)
    for got, want in zip(mirrored.encoder.get_weights(), reference.encoder.get_weights()):
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert mirrored.step == reference.step == STEPS
    # Training moved the bank rows it saw and left the others alone.
    seen = np.unique(np.concatenate([b["label"] for b in _batches()]))
    unseen = np.setdiff1d(np.arange(NUM_INSTANCES), seen)
    initial_bank = initial.bank.bank.numpy()
    assert not np.allclose(reference.bank.bank.numpy()[seen], initial_bank[seen])
    np.testing.assert_array_equal(reference.bank.bank.numpy()[unseen], initial_bank[unseen])


def _bank_consumers(config, num_instances):
    """Op types in the traced training step (outer graph) that take the memory-bank variable as input."""
    strategy = tf.distribute.get_strategy()
    state = build_state(config, num_instances, np.full(3, 0.5, np.float32))
    step = make_train_step(config, strategy, state)
    batch = {"image": tf.zeros([GLOBAL_BATCH, 32, 32, 3]), "label": tf.range(GLOBAL_BATCH, dtype=tf.int64)}
    graph = step.get_concrete_function(batch).graph
    handles = [inner for outer, inner in graph.captures if outer is state.bank.variable.handle]
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
