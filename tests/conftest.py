"""Shared test set-up: quiet TensorFlow, four logical CPU devices for tf.distribute tests."""
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(_cpus[0], [tf.config.LogicalDeviceConfiguration()] * 4)


@pytest.fixture(scope="session")
def two_cpus():
    """One MirroredStrategy over the two logical CPUs for the whole test process.

    Every MirroredStrategy over the same devices numbers its collective ops from the same keys, and TF caches
    a collective's shape by key, so a second strategy in one process fails with "Shape mismatch in the
    collective instance". Tests share this one instead of creating their own.
    """
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


@pytest.fixture(scope="session")
def four_cpus():
    """A MirroredStrategy over four logical CPUs that reduces through copies to one device instead of collective
    ops: collectives of a second strategy in the process would reuse `two_cpus`'s group key with another group
    size ("joining a group with size 4, but that group has size 2")."""
    return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(4)],
                                          cross_device_ops=tf.distribute.ReductionToOneDevice())


@pytest.fixture(autouse=True)
def float32_by_default(monkeypatch):
    """In-process tests train in float32 on every machine: `--precision=auto` would pick mixed_bfloat16 for ResNets on
    CPUs with AVX-512-BF16 only, and the suite must mean the same on the CI's machines. tests/test_machine_precision.py tests
    the rule itself; programs started as subprocesses resolve auto for real."""
    from exemplar_tf.training import machine

    monkeypatch.setattr(machine, "this_machines_precision", lambda arch: "float32")


@pytest.fixture
def rng():
    import numpy as np

    return np.random.default_rng(0)


# The settings of a tiny demo run most training tests share: 64 seed classes from the demo photographs, the small
# network with the parametric softmax (no bank: no --batch_norm needed), a few steps, no kNN, no progress bar.
TINY_RUN = dict(name="tiny", source="demo", method="exemplar", arch="small", objective="softmax", num_seeds=64,
                seeds_per_image=8, nce_m=32, batch_size=16, steps=4, log_every=2, checkpoint_every=2, knn_source="",
                progress=False)


@pytest.fixture
def tiny_config():
    """make(run_dir, **overrides) -> TrainConfig of a tiny demo run (TINY_RUN), its export beside run_dir
    (<parent>/savedmodels); overrides replace any setting. Not validated (tests of bad settings use it too)."""
    from exemplar_tf.training.config import TrainConfig

    def make(run_dir, **overrides) -> TrainConfig:
        run_dir = str(run_dir)
        export_base = os.path.join(os.path.dirname(os.path.abspath(run_dir)), "savedmodels")
        return TrainConfig(run_dir=run_dir, **{**TINY_RUN, "export_base": export_base, **overrides})

    return make
