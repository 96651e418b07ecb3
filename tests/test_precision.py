"""--precision: each dtype policy trains a tiny fixed problem, the policy does not leak, and a mixed-precision
run exports float32 serving functions equal to the float32 reading of its weights."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from exemplar_tf import models
from exemplar_tf.serving import runs
from exemplar_tf.training.config import TrainConfig
from exemplar_tf.training.step import build_state, make_train_step

COMPUTE_DTYPE = {"float32": "float32", "mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}


def _fixed_batches(num_instances=16):
    rng = np.random.default_rng(0)
    batch = {"image": rng.uniform(size=(num_instances, 32, 32, 3)).astype(np.float32),
             "label": np.arange(num_instances, dtype=np.int64)}
    return tf.data.Dataset.from_tensors(batch).repeat()


@pytest.mark.parametrize("precision", models.PRECISIONS)
def test_each_precision_lowers_the_loss_of_a_fixed_batch_with_finite_float32_weights(precision):
    config = TrainConfig(run_dir="/tmp/unused", arch="small", objective="softmax", num_seeds=16, batch_size=16,
                         dropout=0.0, lr=0.01, lr_decay_at=(), weight_decay=0.0, precision=precision)
    strategy = tf.distribute.get_strategy()
    state = build_state(config, 16, np.full(3, 0.5, np.float32))
    assert keras.config.dtype_policy().name == "float32"  # set for the construction only
    assert state.encoder.compute_dtype == COMPUTE_DTYPE[precision]
    assert state.objective.head.compute_dtype == "float32"
    assert all(v.dtype == "float32" for v in state.encoder.weights)
    assert isinstance(state.optimizer, keras.optimizers.LossScaleOptimizer) == (precision == "mixed_float16")
    train_steps = make_train_step(config, strategy, state)
    iterator = iter(strategy.distribute_datasets_from_function(lambda context: _fixed_batches()))
    first = train_steps(iterator, tf.constant(1))
    last = train_steps(iterator, tf.constant(10))
    assert bool(last["finite"]) and int(last["steps"]) == 10
    assert float(last["loss"]) < 0.8 * float(first["loss"])
    assert state.step > 5  # loss scaling may skip (and not count) a few overflowing float16 steps, not most
    assert all(np.isfinite(w).all() for w in state.encoder.get_weights() + state.objective.head.get_weights())


def test_float32_copy_computes_in_float32_with_the_same_weights():
    encoder = models.build_encoder("medium", input_size=32, mean_rgb=(0.4, 0.5, 0.6), precision="mixed_bfloat16",
                                   batch_norm=True)
    copy = models.float32_copy(encoder)
    assert copy.compute_dtype == "float32" and copy is not encoder
    for got, want in zip(copy.get_weights(), encoder.get_weights()):
        np.testing.assert_array_equal(got, want)
    images = tf.random.stateless_uniform([4, 32, 32, 3], [1, 2])
    exact, rounded = copy(images).numpy(), tf.cast(encoder(images), tf.float32).numpy()
    assert exact.dtype == np.float32
    np.testing.assert_allclose(rounded, exact, rtol=0.05, atol=0.05 * np.abs(exact).max())
    assert models.float32_copy(copy) is copy


def test_a_bfloat16_run_exports_float32_serving_equal_to_the_float32_reading_of_its_checkpoint(tmp_path):
    config = TrainConfig(run_dir=str(tmp_path / "run"), name="bf16", source="demo", arch="small", objective="nce",
                         num_seeds=64,
                         seeds_per_image=8, nce_m=32, batch_size=16, steps=3, log_every=3, checkpoint_every=3,
                         batch_norm=True, precision="mixed_bfloat16", export_base=str(tmp_path / "sm"),
                         progress=False)
    result = runs.train(config)
    encoder = models.build_encoder("small", input_size=32, mean_rgb=(0.0, 0.0, 0.0), batch_norm=True)
    head = models.ProjectionHead(128)
    head.build((None, encoder.representation_dim))
    tf.train.Checkpoint(encoder=encoder, head=head).restore(
        tf.train.latest_checkpoint(result.checkpoint_dir)).expect_partial().assert_existing_objects_matched()
    images = np.random.default_rng(0).integers(0, 256, size=(6, 32, 32, 3), dtype=np.uint8)
    served = tf.saved_model.load(result.export_dir).signatures["serving_default"](images=tf.constant(images))
    assert served["embedding"].dtype == tf.float32 and served["features"].dtype == tf.float32
    x = tf.image.resize(tf.cast(images, tf.float32) / 255.0, (32, 32), method="bilinear", antialias=True)
    want = tf.math.l2_normalize(head(encoder(x, training=False)), axis=-1).numpy()
    np.testing.assert_allclose(served["embedding"].numpy(), want, atol=1e-5)
