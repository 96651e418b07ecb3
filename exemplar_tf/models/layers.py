"""Pieces shared by every encoder: mean subtraction, the `Encoder` interface and the weight-decay loss."""
from __future__ import annotations

from typing import Any, ClassVar, Iterable, Sequence

import keras
import tensorflow as tf


class MeanSubtraction(keras.layers.Layer):
    """x -> x - mean_rgb, for images float [B,H,W,3] in [0,1].

    The mean is a non-trainable weight, so it travels with checkpoints and exports (exported models take raw
    [0,1] images). The Exemplar-CNN release subtracts the mean of 0..255 pixels and scales by 1/256; [0,1]
    input already has that scale (up to 255/256), so nothing else is done.
    """

    def __init__(self, mean_rgb: Sequence[float], **kwargs):
        super().__init__(**kwargs)
        self.mean_rgb = [float(c) for c in mean_rgb]
        if len(self.mean_rgb) != 3:
            raise ValueError(f"mean_rgb needs 3 values, got {self.mean_rgb}")
        self.mean = self.add_weight(
            shape=(3,),
            initializer=keras.initializers.Constant(self.mean_rgb),
            trainable=False,
            name="mean_rgb",
        )
        self.built = True

    def call(self, images):
        return images - keras.ops.cast(self.mean, images.dtype)

    def get_config(self):
        return {**super().get_config(), "mean_rgb": self.mean_rgb}


class FusedBatchNormalization(keras.layers.BatchNormalization):
    """Keras' BatchNormalization with its training pass in one fused kernel (TensorFlow's FusedBatchNormV3:
    oneDNN's on CPU, cuDNN's on GPU) and its gradient in one more, for NHWC inputs [B,H,W,C] normalised over C.

    Keras 3 computes training-mode batch norm as moments plus elementwise ops in float32 (inputs cast up from
    bfloat16): on a 2-core CPU those ops cost ~40 % as much op time as all of ResNet-18's convolutions
    (BUILD_NOTES.md, step profile). Same variables, same outputs, the same moving-average update (the population
    variance, as Keras); inference, masks and other ranks take Keras' own path.
    """

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable) or mask is not None or len(inputs.shape) != 4 or \
                self.axis not in (-1, 3) or self.renorm or self.synchronized:
            return super().call(inputs, training=training, mask=mask)
        channels = inputs.shape[-1]
        scale = self.gamma if self.scale else tf.ones([channels])
        offset = self.beta if self.center else tf.zeros([channels])
        outputs, mean, corrected_variance = tf.compat.v1.nn.fused_batch_norm(
            inputs, tf.cast(scale, tf.float32), tf.cast(offset, tf.float32), epsilon=self.epsilon,
            data_format="NHWC", is_training=True)
        count = tf.cast(tf.reduce_prod(tf.shape(inputs)[:3]), tf.float32)
        variance = corrected_variance * (count - 1.0) / count  # the kernel returns the unbiased (n - 1) variance
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        return tf.cast(outputs, self.compute_dtype)


SMALL_MAP_OUTPUTS = 16  # output positions (H x W) up to which SmallMapConv2D takes the kernel gradient by matmul
MATMUL_GRADIENT_DTYPES = ("bfloat16",)  # compute dtypes where that pays (float32 is slower by matmul: BUILD_NOTES)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's "SAME" padding of one spatial axis: (before, after), the extra pixel after."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def kernel_gradient_by_matmul(inputs, output_gradient, kernel_size: int, stride: int):
    """dLoss/dkernel of a "SAME", undilated NHWC convolution as one matmul over its stacked input taps.

    inputs [B,H,W,Cin], output_gradient [B,Ho,Wo,Cout] -> [k,k,Cin,Cout] (the kernel's layout): tap (i, j) of
    the padded input, strided like the convolution, is [B*Ho*Wo, Cin]; the k*k taps side by side times the
    output gradient is the sum over batch and positions of every tap's outer product with it."""
    height, width, channels = inputs.shape[1], inputs.shape[2], inputs.shape[3]
    out_height, out_width, filters = output_gradient.shape[1], output_gradient.shape[2], output_gradient.shape[3]
    padded = tf.pad(inputs, [[0, 0], same_padding(height, kernel_size, stride),
                             same_padding(width, kernel_size, stride), [0, 0]])
    taps = [padded[:, i:i + (out_height - 1) * stride + 1:stride, j:j + (out_width - 1) * stride + 1:stride, :]
            for i in range(kernel_size) for j in range(kernel_size)]
    columns = tf.reshape(tf.concat(taps, axis=-1), [-1, kernel_size * kernel_size * channels])
    gradient = tf.matmul(columns, tf.reshape(output_gradient, [-1, filters]), transpose_a=True)
    return tf.reshape(gradient, [kernel_size, kernel_size, channels, filters])


def gpu_visible() -> bool:
    """Whether TensorFlow sees a GPU (where SmallMapConv2D leaves the kernel gradient to TensorFlow)."""
    return bool(tf.config.list_physical_devices("GPU"))


@keras.saving.register_keras_serializable(package="exemplar_tf")
class SmallMapConv2D(keras.layers.Conv2D):
    """Keras' Conv2D whose kernel gradient, for a stride-1 convolution computing in bfloat16 whose output map
    has at most SMALL_MAP_OUTPUTS positions, is `kernel_gradient_by_matmul` instead of TensorFlow's
    Conv2DBackpropFilter; everything else is Keras'.

    On a CPU, oneDNN's bfloat16 weight-gradient kernel as TensorFlow calls it runs a deep layer on a 4x4 map
    ~4x slower than the same layer's forward pass; one matmul over the stacked taps does the same sums in half
    the time (BUILD_NOTES.md, "The convolutions' kernel gradient on small maps": where it pays and where not).
    Same variables, outputs and input gradient. Keras' path is kept where a GPU is visible (measured on CPUs
    only) and for anything but square kernels, stride 1, "same" padding, no dilation, channels last and static
    input sides. Under XLA (`--jit_compile`, not measured with this layer) the kernel gradient is rounded to the
    compute dtype, as TensorFlow's own kernel does without XLA."""

    def convolution_op(self, inputs, kernel):
        if not self.takes_matmul_gradient(inputs.shape):
            return super().convolution_op(inputs, kernel)
        kernel_size = self.kernel_size[0]

        @tf.custom_gradient
        def convolve(images, weights):
            def gradient(output_gradient):
                images_gradient = tf.raw_ops.Conv2DBackpropInput(
                    input_sizes=tf.shape(images), filter=weights, out_backprop=output_gradient,
                    strides=[1, 1, 1, 1], padding="SAME")
                return images_gradient, kernel_gradient_by_matmul(images, output_gradient, kernel_size, 1)
            return tf.nn.conv2d(images, weights, 1, "SAME"), gradient

        return convolve(inputs, tf.convert_to_tensor(kernel))

    def takes_matmul_gradient(self, input_shape) -> bool:
        """Whether this call takes the kernel gradient by matmul (see the class docstring)."""
        (kernel_height, kernel_width), (height, width) = self.kernel_size, input_shape[1:3]
        if (gpu_visible() or self.compute_dtype not in MATMUL_GRADIENT_DTYPES or self.padding != "same"
                or self.data_format != "channels_last" or self.groups != 1 or set(self.dilation_rate) != {1}
                or set(self.strides) != {1} or kernel_height != kernel_width or None in input_shape[1:]):
            return False
        return height * width <= SMALL_MAP_OUTPUTS


class Encoder(keras.Model):
    """Image encoder: float32 [B,H,W,3] in [0,1] -> representation [B,F] (mean subtraction inside).

    Subclasses set the layers and implement `call`, `feature_maps` and `weight_decay_multipliers`; they register
    their archs (`models.registry.register_encoder`) and declare their options. Attributes: `arch` (name passed to
    `build_encoder`), `input_size` (training resolution), `representation_dim` (F).
    """

    # The `build_encoder` keywords this class takes, with their defaults; `options()` records their values.
    OPTIONS: ClassVar[dict[str, Any]] = {}
    # Values to try, in order, for options that exports written before the options were recorded lack
    # (`models.registry.recorded_options`); an option not listed takes its default.
    UNRECORDED_GUESSES: ClassVar[dict[str, tuple]] = {}

    @classmethod
    def from_options(cls, arch: str, *, input_size: int, mean_rgb: Sequence[float], **options) -> "Encoder":
        """The encoder of `arch` with `options` (every name in OPTIONS); classes whose constructor names them
        differently override this."""
        return cls(arch, input_size=input_size, mean_rgb=mean_rgb, **options)

    def __init__(self, *, arch: str, input_size: int, mean_rgb: Sequence[float], representation_dim: int, **kwargs):
        super().__init__(name=kwargs.pop("name", arch), **kwargs)
        self.arch = arch
        self.input_size = input_size
        self.representation_dim = representation_dim
        self.mean_subtraction = MeanSubtraction(mean_rgb, name="mean_subtraction")

    def feature_maps(self, images, training=False) -> list:
        """Intermediate activations [[B,h,w,C], ...] for any input H,W >= input_size."""
        raise NotImplementedError

    def evaluation_maps(self, images) -> list:
        """The inference `feature_maps` that exports pool into evaluation features; encoders with a faster
        equal computation override it (ExemplarCNN: DFT convs on large maps)."""
        return self.feature_maps(images, training=False)

    def weight_decay_multipliers(self) -> dict[str, float]:
        """{variable.path: multiplier} for every trainable variable (see `weight_decay_loss`)."""
        raise NotImplementedError

    def options(self) -> dict:
        """{"arch", "input_size", every OPTIONS name: its value here} as JSON values: what
        `models.encoder_from_options` rebuilds this architecture from (the same variables, the same layout)."""
        return {"arch": self.arch, "input_size": int(self.input_size), **self._own_options()}

    @classmethod
    def resolve_options(cls, options: dict) -> dict:
        """`options` (`options()` form) with each "auto" choice as what an encoder built from them chooses, without
        building one (nothing to resolve by default)."""
        return dict(options)

    def _own_options(self) -> dict:
        """{name: value} for every name in OPTIONS (resolved, e.g. an "auto" choice as what it chose)."""
        return {}

    def get_config(self):
        return {"arch": self.arch, "input_size": self.input_size, "mean_rgb": self.mean_subtraction.mean_rgb}


def set_layers(owner: keras.layers.Layer, names: Sequence[str], layers: Sequence) -> None:
    """Assigns each layer to its own attribute of `owner`.

    Keras tracks layers held in Python lists, but `tf.train.Checkpoint` does not follow those lists, so
    checkpoints would silently miss their variables; one attribute per layer is saved and restored by both.
    """
    for name, layer in zip(names, layers, strict=True):
        setattr(owner, name, layer)


def seed_generator_states(layers: Iterable[keras.layers.Layer]) -> dict[str, tf.Variable]:
    """{"seed_generator_<i>": state} for every Keras random seed generator in `layers` and their sublayers (the
    dropout masks'), in layer order. Keras layers do not put these into a `tf.train.Checkpoint` themselves, so a
    checkpoint that resumes exactly adds them under these names."""
    states = [v.value for layer in layers for v in layer.variables if "seed_generator_state" in v.path]
    return {f"seed_generator_{i}": state for i, state in enumerate(states)}


def weight_decay_loss(model_parts: Iterable, base_decay: float):
    """L2 penalty in Caffe's convention: base_decay * sum over parameters of multiplier * 0.5 * ||w||^2.

    Its gradient, base_decay * multiplier * w, is exactly what Caffe adds to each parameter's gradient, so the
    Exemplar-CNN recipe (0.004 with per-layer multipliers) carries over. `model_parts` are objects with
    `trainable_variables` and `weight_decay_multipliers()` (encoders and heads); every trainable variable must
    have a multiplier. Returns a float32 scalar. In a tf.distribute loop whose replica gradients are summed
    (losses scaled by `tf.nn.compute_average_loss`), pass it through `tf.nn.scale_regularization_loss` so it
    is counted once, not once per replica.
    """
    terms = []
    for part in model_parts:
        multipliers = part.weight_decay_multipliers()
        for variable in part.trainable_variables:
            multiplier = multipliers[variable.path]
            if multiplier:
                terms.append(multiplier * 0.5 * tf.reduce_sum(tf.square(tf.cast(variable, tf.float32))))
    return base_decay * tf.add_n(terms) if terms else tf.constant(0.0)
