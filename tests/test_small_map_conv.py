"""SmallMapConv2D is Keras' Conv2D with the kernel gradient of small stride-1 output maps in bfloat16 taken by one
matmul: the same outputs and gradients as Keras' layer (float32 to rounding with the path opened to float32,
bfloat16 to its precision), eagerly and compiled, and the matmul path only where it applies."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from exemplar_tf.models import build_encoder, layers
from exemplar_tf.models.layers import SMALL_MAP_OUTPUTS, SmallMapConv2D, kernel_gradient_by_matmul, same_padding

MIXED = keras.DTypePolicy("mixed_bfloat16")


@pytest.fixture(autouse=True)
def no_gpu(monkeypatch):
    """The matmul path is taken where no GPU is visible; every test here but the GPU one is about that path."""
    monkeypatch.setattr(layers, "gpu_visible", lambda: False)


@pytest.fixture
def float32_path(monkeypatch):
    """The matmul path opened to float32 layers too, to compare it with Keras' to float32 rounding."""
    monkeypatch.setattr(layers, "MATMUL_GRADIENT_DTYPES", ("bfloat16", "float32"))


@pytest.mark.parametrize("size, kernel, stride, expected", [
    (4, 3, 1, (1, 1)), (8, 3, 2, (0, 1)), (8, 1, 2, (0, 0)), (5, 3, 2, (1, 1)), (7, 4, 1, (1, 2))])
def test_same_padding_is_tensorflows(size, kernel, stride, expected):
    assert same_padding(size, kernel, stride) == expected


@pytest.mark.parametrize("size, kernel, stride", [(4, 3, 1), (8, 3, 2), (8, 1, 2), (5, 3, 2), (3, 3, 1), (6, 1, 1)])
def test_kernel_gradient_by_matmul_equals_conv2d_backprop_filter(size, kernel, stride):
    rng = np.random.default_rng(size * 10 + kernel + stride)
    out = -(-size // stride)
    images = tf.constant(rng.normal(size=(3, size, size, 5)).astype(np.float32))
    output_gradient = tf.constant(rng.normal(size=(3, out, out, 7)).astype(np.float32))
    expected = tf.raw_ops.Conv2DBackpropFilter(input=images, filter_sizes=[kernel, kernel, 5, 7],
                                               out_backprop=output_gradient, strides=[1, stride, stride, 1],
                                               padding="SAME")
    np.testing.assert_allclose(kernel_gradient_by_matmul(images, output_gradient, kernel, stride), expected,
                               rtol=1e-5, atol=1e-5)


def _pair(dtype="float32", **options):
    """(Keras' Conv2D, SmallMapConv2D) with equal weights."""
    pair = [keras.layers.Conv2D(dtype=dtype, padding="same", use_bias=False, **options),
            SmallMapConv2D(dtype=dtype, padding="same", use_bias=False, **options)]
    return pair


def _forward_backward(layer, x, upstream, compiled):
    def run(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            total = tf.reduce_sum(tf.cast(y, tf.float32) * upstream)
        return y, tape.gradient(total, [x, layer.kernel])
    return tf.function(run)(x) if compiled else run(x)


def _build_equal(pair, input_shape):
    rng = np.random.default_rng(0)
    pair[0].build(input_shape)
    pair[1].build(input_shape)
    kernel = rng.normal(size=pair[0].kernel.shape).astype(np.float32)
    for layer in pair:
        layer.kernel.assign(kernel)


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("height, width, kernel", [(4, 4, 3), (4, 4, 1), (3, 3, 3), (4, 2, 3), (2, 5, 3), (1, 1, 3)])
def test_outputs_and_gradients_match_keras_conv2d_in_float32(height, width, kernel, compiled, float32_path):
    pair = _pair(filters=6, kernel_size=kernel, strides=1)
    _build_equal(pair, (None, height, width, 4))
    assert pair[1].takes_matmul_gradient((None, height, width, 4))  # the matmul path, not Keras' against Keras'
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(size=(2, height, width, 4)).astype(np.float32))
    upstream = tf.constant(rng.normal(size=(2, height, width, 6)).astype(np.float32))
    (y_keras, g_keras), (y_small, g_small) = [_forward_backward(layer, x, upstream, compiled) for layer in pair]
    np.testing.assert_allclose(y_small, y_keras, rtol=1e-5, atol=1e-5)
    for a, b in zip(g_small, g_keras):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_mixed_bfloat16_gradients_are_keras_exact_or_bfloat16_close_to_float32():
    """Outputs and input gradients equal Keras' bit for bit; the kernel gradient is within a few bfloat16 steps of
    the float32 gradient of the same bf16-rounded inputs. Measured against float32, not against Keras' bf16
    gradient: on a CPU without native bfloat16 (AVX2) Keras' own is 0.019 of the largest entry off float32 and
    SmallMapConv2D's 0.004, so the two differ by more than either differs from the truth."""
    pair = _pair(dtype=MIXED, filters=16, kernel_size=3, strides=1)
    _build_equal(pair, (None, 4, 4, 16))
    assert pair[1].takes_matmul_gradient((None, 4, 4, 16))
    rng = np.random.default_rng(2)
    x = tf.cast(rng.normal(size=(8, 4, 4, 16)).astype(np.float32), tf.bfloat16)
    upstream = tf.constant(rng.normal(size=(8, 4, 4, 16)).astype(np.float32))
    (y_keras, g_keras), (y_small, g_small) = [_forward_backward(layer, x, upstream, True) for layer in pair]
    assert y_small.dtype == tf.bfloat16 and g_small[1].dtype == tf.float32  # the variable's gradient
    np.testing.assert_array_equal(tf.cast(y_small, tf.float32), tf.cast(y_keras, tf.float32))
    exact = _pair(filters=16, kernel_size=3, strides=1)[0]  # float32 Keras, the same weights
    exact.build((None, 4, 4, 16))
    exact.kernel.assign(pair[0].kernel)
    rounded_upstream = tf.cast(tf.cast(upstream, tf.bfloat16), tf.float32)  # what the bf16 backward pass sees
    _, g_exact = _forward_backward(exact, tf.cast(x, tf.float32), rounded_upstream, True)
    scale = float(tf.reduce_max(tf.abs(g_exact[1])))
    np.testing.assert_allclose(g_small[1] / scale, g_exact[1] / scale, atol=2e-2)
    np.testing.assert_array_equal(tf.cast(g_small[0], tf.float32), tf.cast(g_keras[0], tf.float32))


def _gradient_ops(size, stride, batch=2, known_sides=True, dtype=MIXED):
    """Op types in the compiled gradient of a SmallMapConv2D traced for [batch,size,size,4] inputs (None for an
    unknown batch; known_sides=False: unknown height and width)."""
    layer = SmallMapConv2D(filters=6, kernel_size=3, strides=stride, padding="same", use_bias=False, dtype=dtype)
    layer.build((None, size, size, 4))

    @tf.function
    def kernel_gradient(x):
        with tf.GradientTape() as tape:
            y = layer(x)
        return tape.gradient(y, layer.kernel)
    spatial = [size, size] if known_sides else [None, None]
    graph = kernel_gradient.get_concrete_function(tf.TensorSpec([batch, *spatial, 4])).graph
    return {op.type for op in graph.get_operations()}


def test_the_matmul_path_is_taken_up_to_the_small_map_limit_and_only_there():
    side = int(SMALL_MAP_OUTPUTS ** 0.5)
    small = _gradient_ops(side, 1)  # side x side outputs: the limit
    assert "MatMul" in small and "Conv2DBackpropFilter" not in small
    assert "Conv2DBackpropFilter" in _gradient_ops(side + 1, 1)  # more outputs: TensorFlow's kernel
    assert "Conv2DBackpropFilter" in _gradient_ops(2 * side, 2)  # strided: TensorFlow's kernel (faster there)
    assert "Conv2DBackpropFilter" in _gradient_ops(side, 2)  # ... also on an input as small as the limit
    assert "Conv2DBackpropFilter" in _gradient_ops(side, 1, dtype="float32")  # float32: TensorFlow's (faster)


def test_the_limit_is_what_the_layer_reads(monkeypatch):
    monkeypatch.setattr(layers, "SMALL_MAP_OUTPUTS", 0)
    assert "Conv2DBackpropFilter" in _gradient_ops(2, 1)


def test_keras_kernel_gradient_where_a_gpu_is_visible(monkeypatch):
    monkeypatch.setattr(layers, "gpu_visible", lambda: True)
    assert "Conv2DBackpropFilter" in _gradient_ops(2, 1)


def test_an_unknown_batch_takes_the_matmul_path_and_unknown_sides_keras_path():
    assert "Conv2DBackpropFilter" not in _gradient_ops(4, 1, batch=None)
    assert "Conv2DBackpropFilter" in _gradient_ops(4, 1, known_sides=False)


def test_a_checkpoint_of_keras_conv2d_restores_into_small_map_conv2d(tmp_path):
    keras_conv, small = _pair(filters=6, kernel_size=3, strides=1)
    keras_conv.build((None, 4, 4, 4))
    small.build((None, 4, 4, 4))
    path = tf.train.Checkpoint(conv=keras_conv).write(str(tmp_path / "ckpt"))
    tf.train.Checkpoint(conv=small).read(path).assert_consumed()
    np.testing.assert_array_equal(small.kernel, keras_conv.kernel)


def test_resnet18_in_bfloat16_takes_the_matmul_for_stage_4s_three_stride_1_convolutions():
    encoder = build_encoder("resnet18", input_size=32, mean_rgb=[0.5] * 3, resnet_width=8, precision="mixed_bfloat16")

    @tf.function
    def gradients(images):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.cast(encoder(images, training=True), tf.float32))
        return tape.gradient(loss, encoder.trainable_variables)
    graph = gradients.get_concrete_function(tf.TensorSpec([2, 32, 32, 3])).graph
    op_types = [op.type for op in graph.get_operations()]
    # 20 convolutions (stem, 16 in blocks, 3 shortcuts); stage 4's 4x4 maps: conv2 of block 1, both of block 2
    assert op_types.count("Conv2D") == 20 and op_types.count("Conv2DBackpropFilter") == 17
