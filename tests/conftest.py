"""Shared test set-up: quiet TensorFlow, two logical CPU devices for tf.distribute tests."""
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)


@pytest.fixture(scope="session")
def two_cpus():
    """One MirroredStrategy over the two logical CPUs for the whole test process.

    Every MirroredStrategy over the same devices numbers its collective ops from the same keys, and TF caches
    a collective's shape by key, so a second strategy in one process fails with "Shape mismatch in the
    collective instance". Tests share this one instead of creating their own.
    """
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


@pytest.fixture
def rng():
    import numpy as np

    return np.random.default_rng(0)
