"""--proximal_lambda inside the training step: the term uses the bank rows from before the step's update."""
import numpy as np
import pytest
import tensorflow as tf

from exemplar_tf.training.config import TrainConfig, validate
from exemplar_tf.training.step import build_state, make_train_step

NUM_INSTANCES, BATCH = 20, 6


def _state_and_step(strength, objective="nce"):
    config = TrainConfig(run_dir="/tmp/unused", arch="small", objective=objective, num_seeds=NUM_INSTANCES,
                         nce_m=8, batch_size=BATCH, steps=10, lr=0.05, tau=0.1, dropout=0.0, weight_decay=0.0,
                         proximal_lambda=strength)
    tf.keras.utils.set_random_seed(3)
    state = build_state(config, NUM_INSTANCES, np.full(3, 0.5, np.float32))
    return state, make_train_step(config, tf.distribute.get_strategy(), state)


def _batch():
    rng = np.random.default_rng(0)
    return {"image": tf.constant(rng.uniform(size=(BATCH, 32, 32, 3)), tf.float32),
            "label": tf.constant(rng.choice(NUM_INSTANCES, BATCH, replace=False), tf.int64)}


def _run_one_step(step, batch):
    """One training step on `batch` through the step's iterator interface."""
    return step(iter(tf.data.Dataset.from_tensors(batch).repeat()), tf.constant(1))


@pytest.mark.parametrize("objective", ["nce", "nonparametric"])
def test_step_reports_lambda_times_distance_to_the_pre_update_rows(objective):
    state, step = _state_and_step(30.0, objective)
    batch = _batch()
    v = state.objective.head(state.encoder(batch["image"], training=True), training=True).numpy()
    before = state.objective.bank().numpy()[batch["label"].numpy()]
    out = _run_one_step(step, batch)
    expected = 30.0 * np.mean(np.sum((v - before) ** 2, axis=1))
    np.testing.assert_allclose(float(out["proximal_loss"]), expected, rtol=1e-4)
    after = state.objective.bank().numpy()[batch["label"].numpy()]
    assert np.abs(after - before).max() > 0.1  # the bank did move, so the post-update rows would give another value


def test_lambda_changes_the_update_and_zero_leaves_it_as_before():
    batch = _batch()
    weights = {}
    for strength in (0.0, 30.0):
        state, step = _state_and_step(strength)
        out = _run_one_step(step, batch)
        weights[strength] = state.encoder.get_weights()
        if strength == 0.0:
            assert "proximal_loss" not in out  # no term, nothing reported
    assert max(np.abs(a - b).max() for a, b in zip(weights[0.0], weights[30.0])) > 1e-6


def test_proximal_needs_a_bank_and_a_non_negative_lambda():
    with pytest.raises(ValueError, match="--proximal_lambda needs a memory bank"):
        validate(TrainConfig(run_dir="r", objective="softmax", proximal_lambda=1.0))
    with pytest.raises(ValueError, match="--proximal_lambda must be >= 0"):
        validate(TrainConfig(run_dir="r", objective="nce", nce_m=16, proximal_lambda=-1.0))
