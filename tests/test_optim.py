"""optim.schedules: step decay (training and fine-tuning, and the checkpoint layout each gets) and cosine decay."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from exemplar_tf.optim.drops import drop_steps
from exemplar_tf.optim.schedules import cosine_decay, step_decay


def test_step_decay_drops_at_each_fraction_in_order():
    schedule = step_decay(0.1, 100, (0.8, 0.5), 0.1)
    rates = [float(schedule(step)) for step in (0, 50, 51, 80, 81, 1000)]
    np.testing.assert_allclose(rates, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)


@pytest.mark.parametrize("steps,decay_at,expected", [(100, (0.8, 0.5), [50, 80]), (57, (0.29, 0.6, 0.8), [16, 34, 45]),
                                                     (14000, (0.6, 0.8), [8400, 11200]), (9, (0.5,), [4])])
def test_drop_steps_are_the_last_iterations_before_each_drop_of_the_keras_schedule(steps, decay_at, expected):
    from exemplar_tf.training.config import TrainConfig

    schedule = step_decay(1.0, steps, decay_at, 0.5)
    rates = np.array([float(schedule(i)) for i in range(steps + 1)])
    assert drop_steps(steps, decay_at) == expected  # int(fraction * steps), as docs/flags.md says
    assert list(np.flatnonzero(rates[1:] < rates[:-1])) == expected
    assert TrainConfig(run_dir="/tmp/unused", steps=steps, lr_decay_at=decay_at).lr_drop_steps == expected
    cosine = TrainConfig(run_dir="/tmp/unused", steps=steps, lr_decay_at=decay_at, lr_schedule="cosine")
    assert cosine.lr_drop_steps == []  # --lr_decay_at is unused there


@pytest.mark.parametrize("constant_as_float", [False, True])
def test_a_constant_rate_is_a_schedule_or_a_float_with_its_own_checkpoint_layout(constant_as_float):
    rate = step_decay(0.05, 10, (), 0.1, constant_as_float=constant_as_float)
    assert (rate == 0.05) if constant_as_float else float(rate(7)) == pytest.approx(0.05)
    optimizer = keras.optimizers.SGD(rate, momentum=0.9)
    optimizer.build([tf.Variable([1.0, 2.0])])
    names = [v.path.split("/")[-1] for v in optimizer.variables]
    # Training checkpoints (schedule) hold no learning-rate variable; fine-tuning ones (float) do.
    assert ("learning_rate" in names) == constant_as_float


def test_cosine_decay_warms_up_linearly_then_follows_half_a_cosine_to_zero():
    schedule = cosine_decay(0.2, 110, warmup_steps=10)
    rates = [float(schedule(step)) for step in (0, 5, 10, 60, 110)]
    # warm-up 0 -> 0.2 over 10 steps; then 0.2 * (1 + cos(pi * t / 100)) / 2 for t = step - 10
    np.testing.assert_allclose(rates, [0.0, 0.1, 0.2, 0.1, 0.0], atol=1e-7)
    plain = cosine_decay(0.2, 100)
    np.testing.assert_allclose([float(plain(s)) for s in (0, 25, 100)], [0.2, 0.2 * (1 + np.sqrt(0.5)) / 2, 0.0],
                               atol=1e-7)
    with pytest.raises(ValueError, match="warmup_steps must be in"):
        cosine_decay(0.2, 100, warmup_steps=100)


def test_the_training_config_refuses_a_warm_up_it_would_not_use():
    from exemplar_tf.errors import InputError
    from exemplar_tf.training.config import TrainConfig, validate

    with pytest.raises(InputError, match="--lr_warmup_steps applies to --lr_schedule=cosine"):
        validate(TrainConfig(run_dir="/tmp/unused", lr_warmup_steps=5))
    with pytest.raises(InputError, match="--lr_warmup_steps=100 must be fewer than --steps=100"):
        validate(TrainConfig(run_dir="/tmp/unused", lr_schedule="cosine", lr_warmup_steps=100, steps=100))
    validate(TrainConfig(run_dir="/tmp/unused", lr_schedule="cosine", lr_warmup_steps=10, steps=100))


def test_the_training_step_follows_the_configured_schedule():
    from exemplar_tf.training.config import TrainConfig
    from exemplar_tf.training.step import build_state

    config = TrainConfig(run_dir="/tmp/unused", lr=0.2, steps=110, lr_schedule="cosine", lr_warmup_steps=10)
    state = build_state(config, 16, np.full(3, 0.5, np.float32))
    rate = state.optimizer.learning_rate  # read at the optimizer's iteration 0
    assert float(rate) == 0.0
    state.optimizer.iterations.assign(60)
    assert float(state.optimizer.learning_rate) == pytest.approx(0.1, abs=1e-6)
