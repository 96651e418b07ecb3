"""ResNet-18 (basic blocks, CIFAR stem) and ResNet-50 (bottleneck blocks) encoders, as used by NPID.

Stems: `stem="auto"` picks the CIFAR stem (3x3 conv, stride 1, no max-pool) for inputs of at most
CIFAR_STEM_MAX_SIZE (64) pixels, so a 32x32 input still reaches the last stage as a 4x4 map instead of 1x1, and the
ImageNet stem (7x7 conv stride 2 + 3x3 stride-2 max-pool, 16x fewer positions after it) above that, as NPID's
ImageNet ResNets; `stem="cifar" | "imagenet"` forces one.
Convs have no bias and are followed by BatchNorm (momentum 0.9, epsilon 1e-5: PyTorch's defaults, which the
NPID release trained with). The stride of a downsampling bottleneck is on its 3x3 conv. The representation is
the global average of the last stage: [B,512] / [B,2048] at the papers' base width 64. `width` scales every
layer (stem and stage 1 get `width` channels, stage s gets width * 2^(s-1)): width 32 costs about a quarter of the
multiply-adds, for CPU budgets.
"""
from __future__ import annotations

from typing import Sequence

import keras
import tensorflow as tf

from exemplar_tf.choices import RESNET_STEMS
from exemplar_tf.models.layers import Encoder, FusedBatchNormalization, SmallMapConv2D, set_layers
from exemplar_tf.models.registry import register_encoder

# arch -> (block kind, blocks per stage); stage widths are w, 2w, 4w, 8w for base width w (64 in the papers;
# x4 at the output of a bottleneck)
ARCHITECTURES = {"resnet18": ("basic", (2, 2, 2, 2)), "resnet50": ("bottleneck", (3, 4, 6, 3))}
DEFAULT_WIDTH = 64
STAGE_MULTIPLIERS = (1, 2, 4, 8)
BOTTLENECK_EXPANSION = 4
CIFAR_STEM_MAX_SIZE = 64
STEMS = RESNET_STEMS  # auto picks by input size (choices)


def conv(filters: int, size: int, stride: int = 1, name: str | None = None):
    return SmallMapConv2D(filters, size, strides=stride, padding="same", use_bias=False,
                          kernel_initializer="he_normal", name=name)


def batch_norm(name: str | None = None):
    return FusedBatchNormalization(momentum=0.9, epsilon=1e-5, name=name)


class ResidualBlock(keras.layers.Layer):
    """Basic (3x3, 3x3) or bottleneck (1x1, 3x3, 1x1 x4) residual block; projection shortcut when the shape
    changes. [B,H,W,Cin] -> [B,H/stride,W/stride,Cout]."""

    def __init__(self, kind: str, width: int, stride: int, in_channels: int, **kwargs):
        super().__init__(**kwargs)
        if kind == "basic":
            out_channels = width
            shapes = [(width, 3, stride), (width, 3, 1)]
        else:
            out_channels = width * BOTTLENECK_EXPANSION
            shapes = [(width, 1, 1), (width, 3, stride), (out_channels, 1, 1)]
        self.out_channels = out_channels
        self.depth = len(shapes)
        set_layers(self, [f"conv{i + 1}" for i in range(self.depth)],
                   [conv(f, k, s, name=f"conv{i + 1}") for i, (f, k, s) in enumerate(shapes)])
        set_layers(self, [f"bn{i + 1}" for i in range(self.depth)],
                   [batch_norm(name=f"bn{i + 1}") for i in range(self.depth)])
        self.projection = None
        if stride != 1 or in_channels != out_channels:
            self.projection = conv(out_channels, 1, stride, name="shortcut_conv")
            self.projection_norm = batch_norm(name="shortcut_bn")

    @property
    def convs(self) -> list:
        return [getattr(self, f"conv{i + 1}") for i in range(self.depth)]

    @property
    def norms(self) -> list:
        return [getattr(self, f"bn{i + 1}") for i in range(self.depth)]

    def call(self, x, training=False):
        shortcut = x
        if self.projection is not None:
            shortcut = self.projection_norm(self.projection(x), training=training)
        for position, (layer, norm) in enumerate(zip(self.convs, self.norms)):
            x = norm(layer(x), training=training)
            if position < len(self.convs) - 1:
                x = tf.nn.relu(x)
        return tf.nn.relu(x + shortcut)


def resolved_stem(stem: str, input_size: int) -> str:
    """The stem a ResNet on `input_size`-pixel inputs builds for `stem`: "auto" is "cifar" up to
    CIFAR_STEM_MAX_SIZE pixels and "imagenet" above."""
    if stem != "auto":
        return stem
    return "imagenet" if input_size > CIFAR_STEM_MAX_SIZE else "cifar"


@register_encoder(*ARCHITECTURES)
class ResNet(Encoder):
    """ResNet encoder. `call(x)` -> [B, 8 * width (x4 for bottlenecks)] global average pool of the last stage;
    `feature_maps(x)` -> the four stage outputs [B,h,w,C]. Options: `resnet_stem` (recorded as the stem it
    resolved to, "cifar" | "imagenet") and `resnet_width`."""

    OPTIONS = {"resnet_stem": "auto", "resnet_width": DEFAULT_WIDTH}

    @classmethod
    def from_options(cls, arch, *, input_size, mean_rgb, resnet_stem, resnet_width):
        return cls(arch, input_size=input_size, mean_rgb=mean_rgb, stem=resnet_stem, width=resnet_width)

    def __init__(self, arch: str, *, input_size: int, mean_rgb: Sequence[float], stem: str = "auto",
                 width: int = DEFAULT_WIDTH, **kwargs):
        if arch not in ARCHITECTURES:
            raise ValueError(f"unknown ResNet arch {arch!r}; use one of {sorted(ARCHITECTURES)}")
        if stem not in STEMS:
            raise ValueError(f"unknown ResNet stem {stem!r}; use one of {STEMS}")
        if width < 1:
            raise ValueError(f"ResNet width must be a positive number of channels, got {width}")
        kind, depths = ARCHITECTURES[arch]
        expansion = 1 if kind == "basic" else BOTTLENECK_EXPANSION
        stage_widths = [width * multiplier for multiplier in STAGE_MULTIPLIERS]
        super().__init__(arch=arch, input_size=input_size, mean_rgb=mean_rgb,
                         representation_dim=stage_widths[-1] * expansion, **kwargs)
        self.width = width
        self.imagenet_stem = resolved_stem(stem, input_size) == "imagenet"
        self.stem_conv = (conv(width, 7, 2, name="stem_conv") if self.imagenet_stem
                          else conv(width, 3, name="stem_conv"))
        self.stem_norm = batch_norm(name="stem_bn")
        block_names = []  # [stage][block] attribute names
        channels = width
        for stage, (stage_width, depth) in enumerate(zip(stage_widths, depths)):
            names = [f"stage{stage + 1}_block{index + 1}" for index in range(depth)]
            blocks = []
            for index, name in enumerate(names):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(ResidualBlock(kind, stage_width, stride, channels, name=name))
                channels = blocks[-1].out_channels
            set_layers(self, names, blocks)
            block_names.append(tuple(names))
        self.block_names = tuple(block_names)

    @property
    def stages(self) -> list:
        """Residual blocks per stage, [[block, ...] x 4] (each also an attribute stageS_blockB)."""
        return [[getattr(self, name) for name in names] for names in self.block_names]

    def feature_maps(self, images, training=False):
        """images float [B,H,W,3] in [0,1] -> outputs of stages 1..4, [B,h,w,C] each."""
        x = tf.nn.relu(self.stem_norm(self.stem_conv(self.mean_subtraction(images)), training=training))
        if self.imagenet_stem:
            x = tf.nn.max_pool2d(x, 3, 2, padding="SAME")
        maps = []
        for blocks in self.stages:
            for block in blocks:
                x = block(x, training=training)
            maps.append(x)
        return maps

    def call(self, images, training=False):
        """images float [B,H,W,3] -> [B, representation_dim]."""
        return tf.reduce_mean(self.feature_maps(images, training=training)[-1], axis=[1, 2])

    def weight_decay_multipliers(self):
        """1 for conv kernels, 0 for BatchNorm scales and offsets."""
        return {v.path: 1.0 if v.path.endswith("kernel") else 0.0 for v in self.trainable_variables}

    @classmethod
    def resolve_options(cls, options):
        return {**options, "resnet_stem": resolved_stem(options["resnet_stem"], int(options["input_size"]))}

    def _own_options(self):
        return {"resnet_stem": "imagenet" if self.imagenet_stem else "cifar", "resnet_width": int(self.width)}
