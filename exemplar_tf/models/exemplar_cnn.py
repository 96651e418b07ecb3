"""Exemplar-CNN encoders (Dosovitskiy et al.): small 64c5-64c5-128f, medium 64c5-128c5-256c5-512f,
large 92c5-256c5-512c5-1024f.

Every conv is 5x5, stride 1, 'same', ReLU. A 3x3 stride-2 max-pool ('same', so 32 -> 16 -> 8) follows the
first two convs; for the medium and large nets that is "every conv but the last". The small net has only two
convs and both are pooled too, as in the paper (pooling after the first and second conv layer), so its fc
also sees an 8x8 map.
The fully connected layer is a 'valid' conv whose kernel covers the whole last map at the training input size,
followed by ReLU and dropout 0.5, so the network runs fully convolutionally on larger images.

`batch_norm=True` (not in the 2014 paper) puts a BatchNormalization between every conv/fc and its ReLU (the convs
then have no bias). The bank objectives need it: without it their large gradients (scaled by 1/tau) kill the
fc ReLUs within a hundred steps and every image gets the same code (BUILD_NOTES.md).
"""
from __future__ import annotations

import math
from typing import Sequence

import keras
import tensorflow as tf

from exemplar_tf.models import dft_conv
from exemplar_tf.models.layers import Encoder, FusedBatchNormalization, set_layers
from exemplar_tf.models.registry import register_encoder

# arch -> (conv widths, fc width)
ARCHITECTURES = {
    "small": ((64, 64), 128),
    "medium": ((64, 128, 256), 512),
    "large": ((92, 256, 512), 1024),
}
NUM_POOLED_CONVS = 2
# Exemplar-CNN release: weight-decay multipliers by conv position, then the fc layer. Biases are not decayed.
CONV_DECAY_MULTIPLIERS = (0.0, 0.0, 0.25)
FC_DECAY_MULTIPLIER = 1.0


def pooled_size(input_size: int) -> int:
    """Side of the map the fc layer sees: each 'same' stride-2 pool takes ceil(side / 2)."""
    side = input_size
    for _ in range(NUM_POOLED_CONVS):
        side = math.ceil(side / 2)
    return side


@register_encoder(*ARCHITECTURES)
class ExemplarCNN(Encoder):
    """Exemplar-CNN encoder; representation = fc activation [B, fc width].

    `call(x)` global-max-pools the fc map: at the training size that map is 1x1 (so this is just a flatten);
    on larger images it is the strongest response of the fc filters anywhere in the image.
    Dropout (`dropout`, 0.5 in the paper) acts on that vector when `training=True`. `feature_maps(x)` returns
    the post-ReLU maps [conv1, conv2, (conv3), fc] (convs before pooling), never with dropout;
    `evaluation_maps(x)` the same maps with the large convs computed through DFTs (`models.dft_conv`).
    Options: `dropout`, `batch_norm` (exports written before options were recorded do not say whether they have
    batch norm: both layouts are tried).
    """

    OPTIONS = {"dropout": 0.5, "batch_norm": False}
    UNRECORDED_GUESSES = {"batch_norm": (False, True)}

    def __init__(self, arch: str, *, input_size: int, mean_rgb: Sequence[float], dropout: float = 0.5,
                 batch_norm: bool = False, **kwargs):
        if arch not in ARCHITECTURES:
            raise ValueError(f"unknown Exemplar-CNN arch {arch!r}; use one of {sorted(ARCHITECTURES)}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        conv_widths, fc_width = ARCHITECTURES[arch]
        super().__init__(arch=arch, input_size=input_size, mean_rgb=mean_rgb, representation_dim=fc_width, **kwargs)
        self.batch_norm = batch_norm
        self.conv_names = tuple(f"conv{i + 1}" for i in range(len(conv_widths)))
        set_layers(self, self.conv_names, [
            keras.layers.Conv2D(width, 5, padding="same", use_bias=not batch_norm, kernel_initializer="he_normal",
                                name=name)
            for name, width in zip(self.conv_names, conv_widths)
        ])
        self.pools = [keras.layers.MaxPooling2D(3, strides=2, padding="same") for _ in range(NUM_POOLED_CONVS)]
        fc_kernel = pooled_size(input_size)
        self.fc = keras.layers.Conv2D(fc_width, fc_kernel, padding="valid", use_bias=not batch_norm,
                                      kernel_initializer="he_normal", name="fc")
        # One BatchNormalization per conv and the fc, in that order (none without batch_norm).
        self.norm_names = tuple(f"{name}_bn" for name in (*self.conv_names, "fc")) if batch_norm else ()
        set_layers(self, self.norm_names, [FusedBatchNormalization(name=name) for name in self.norm_names])
        self.dropout = keras.layers.Dropout(dropout)

    @property
    def convs(self) -> list:
        """The conv layers in order (each also an attribute conv1, conv2, ...)."""
        return [getattr(self, name) for name in self.conv_names]

    def _activate(self, x, position: int, training):
        """ReLU of a conv/fc output (position 0.. over convs then fc), batch-normalised first with batch_norm."""
        if self.batch_norm:
            x = getattr(self, self.norm_names[position])(x, training=training)
        return keras.ops.relu(x)

    def feature_maps(self, images, training=False, dft=False):
        """images float [B,H,W,3] in [0,1], H,W >= input_size -> [conv1, conv2, (conv3), fc] maps [B,h,w,C].
        dft=True computes each conv and the fc through `dft_conv.conv2d_dft` where `dft_conv.dft_pays_off` at the
        run-time map size (equal up to float32 round-off; float32 layers only)."""
        apply = self._dft_or_direct if dft else (lambda layer, x: layer(x))
        x = self.mean_subtraction(images)
        maps = []
        for position, conv in enumerate(self.convs):
            x = self._activate(apply(conv, x), position, training)
            maps.append(x)
            if position < NUM_POOLED_CONVS:
                x = self.pools[position](x)
        maps.append(self._activate(apply(self.fc, x), len(self.convs), training))
        return maps

    def evaluation_maps(self, images):
        """`feature_maps(images)` at inference, with the DFT convs: what the export pools into features. At the
        training size nothing changes (the DFT does not pay off on 32 px maps); at 96 px the fc and conv2/conv3
        go through the DFT (BUILD_NOTES.md, "Where the time goes")."""
        return self.feature_maps(images, training=False, dft=True)

    @staticmethod
    def _dft_or_direct(layer, x):
        """layer(x) for a stride-1 Conv2D, through the DFT when that pays off at x's run-time size."""
        if layer.compute_dtype != "float32":
            return layer(x)
        kernel_height, kernel_width = layer.kernel_size

        def by_dft():
            y = dft_conv.conv2d_dft(x, layer.kernel, layer.padding)
            return y + layer.bias if layer.use_bias else y

        pays_off = dft_conv.dft_pays_off(tf.shape(x)[1], tf.shape(x)[2], kernel_height, kernel_width,
                                         int(x.shape[-1]), layer.filters, layer.padding)
        return tf.cond(pays_off, by_dft, lambda: layer(x))

    def call(self, images, training=False):
        """images float [B,H,W,3] -> [B, fc width]."""
        fc_map = self.feature_maps(images, training=training)[-1]
        return self.dropout(tf.reduce_max(fc_map, axis=[1, 2]), training=training)

    def weight_decay_multipliers(self):
        """conv kernels by position 0, 0, 0.25; fc kernel 1; biases and batch-norm scales/offsets 0."""
        multipliers = {variable.path: 0.0 for variable in self.trainable_variables}
        for position, conv in enumerate(self.convs):
            multipliers[conv.kernel.path] = CONV_DECAY_MULTIPLIERS[position]
        multipliers[self.fc.kernel.path] = FC_DECAY_MULTIPLIER
        return multipliers

    def _own_options(self):
        return {"dropout": float(self.dropout.rate), "batch_norm": bool(self.batch_norm)}

    def get_config(self):
        return {**super().get_config(), "batch_norm": self.batch_norm}
