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
