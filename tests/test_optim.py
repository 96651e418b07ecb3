"""optim.schedules.step_decay: the learning rate of training and fine-tuning, and the checkpoint layout each gets."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from exemplar_tf.optim.schedules import step_decay


def test_step_decay_drops_at_each_fraction_in_order():
    schedule = step_decay(0.1, 100, (0.8, 0.5), 0.1)
    rates = [float(schedule(step)) for step in (0, 50, 51, 80, 81, 1000)]
    np.testing.assert_allclose(rates, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)


@pytest.mark.parametrize("constant_as_float", [False, True])
def test_a_constant_rate_is_a_schedule_or_a_float_with_its_own_checkpoint_layout(constant_as_float):
    rate = step_decay(0.05, 10, (), 0.1, constant_as_float=constant_as_float)
    assert (rate == 0.05) if constant_as_float else float(rate(7)) == pytest.approx(0.05)
    optimizer = keras.optimizers.SGD(rate, momentum=0.9)
    optimizer.build([tf.Variable([1.0, 2.0])])
    names = [v.path.split("/")[-1] for v in optimizer.variables]
    # Training checkpoints (schedule) hold no learning-rate variable; fine-tuning ones (float) do.
    assert ("learning_rate" in names) == constant_as_float
