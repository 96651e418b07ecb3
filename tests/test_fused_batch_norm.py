"""FusedBatchNormalization is Keras' BatchNormalization with a fused training kernel: same outputs, gradients and
moving statistics (float32 to rounding, bfloat16 to bfloat16's precision), same inference path."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from exemplar_tf.models.layers import FusedBatchNormalization


def _pair(dtype="float32", **options):
    """(Keras' layer, the fused one) built on [.,6,5,8] inputs with equal, non-trivial weights."""
    layers = [keras.layers.BatchNormalization(dtype=dtype, **options), FusedBatchNormalization(dtype=dtype, **options)]
    rng = np.random.default_rng(0)
    weights = None
    for layer in layers:
        layer.build((None, 6, 5, 8))
        weights = weights or [rng.normal(size=w.shape).astype(np.float32) ** 2 + 0.5 for w in layer.weights]
        layer.set_weights(weights)
    return layers


def _train_pass(layer, x, upstream):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
        total = tf.reduce_sum(tf.cast(y, tf.float32) * upstream)
    grads = tape.gradient(total, [x, *layer.trainable_weights])
    return y, grads


@pytest.mark.parametrize("batch", [1, 4])
def test_training_pass_matches_keras_in_float32(batch):
    keras_bn, fused = _pair(momentum=0.9, epsilon=1e-5)
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(3.0, 2.0, size=(batch, 6, 5, 8)).astype(np.float32))
    upstream = tf.constant(rng.normal(size=(batch, 6, 5, 8)).astype(np.float32))
    (y_keras, g_keras), (y_fused, g_fused) = _train_pass(keras_bn, x, upstream), _train_pass(fused, x, upstream)
    np.testing.assert_allclose(y_fused, y_keras, rtol=1e-4, atol=1e-4)
    for a, b in zip(g_fused, g_keras):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    for a, b in zip(fused.non_trainable_weights, keras_bn.non_trainable_weights):  # moving mean and variance
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not np.allclose(fused.moving_mean, 0.0)  # the update happened


def test_inference_pass_is_keras_own():
    keras_bn, fused = _pair()
    x = tf.constant(np.random.default_rng(2).normal(size=(3, 6, 5, 8)).astype(np.float32))
    np.testing.assert_array_equal(fused(x, training=False), keras_bn(x, training=False))


def test_bfloat16_inputs_give_bfloat16_outputs_close_to_float32():
    keras_bn, fused = _pair(dtype=keras.DTypePolicy("mixed_bfloat16"))
    x = tf.constant(np.random.default_rng(3).normal(1.0, 2.0, size=(4, 6, 5, 8)).astype(np.float32))
    y_fused = fused(tf.cast(x, tf.bfloat16), training=True)
    y_keras = keras_bn(tf.cast(x, tf.bfloat16), training=True)
    assert y_fused.dtype == tf.bfloat16
    np.testing.assert_allclose(tf.cast(y_fused, tf.float32), tf.cast(y_keras, tf.float32), rtol=2e-2, atol=2e-2)
    np.testing.assert_allclose(fused.moving_variance, keras_bn.moving_variance, rtol=1e-2)


def test_the_training_pass_is_one_fused_op_inside_tf_function():
    keras_bn, fused = _pair()
    x = tf.constant(np.random.default_rng(4).normal(size=(2, 6, 5, 8)).astype(np.float32))
    graph_y = tf.function(lambda images: fused(images, training=True))(x)
    np.testing.assert_allclose(graph_y, keras_bn(x, training=True), rtol=1e-4, atol=1e-4)
    ops = tf.function(lambda images: fused(images, training=True)).get_concrete_function(x).graph.get_operations()
    assert any(op.type.startswith("FusedBatchNorm") for op in ops)  # not Keras' moments path
