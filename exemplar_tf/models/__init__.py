"""Encoders (Exemplar-CNN small/medium/large, ResNet-18/50), heads and the weight-decay loss."""
from __future__ import annotations

from typing import Sequence

import keras

from exemplar_tf.choices import ARCHS, EXEMPLAR_ARCHS, RESNET_ARCHS
from exemplar_tf.models.exemplar_cnn import ExemplarCNN
from exemplar_tf.models.heads import ProjectionHead, SurrogateClassifier
from exemplar_tf.models.layers import Encoder, MeanSubtraction, weight_decay_loss
from exemplar_tf.models.precision import PRECISIONS, dtype_policy, needs_loss_scaling
from exemplar_tf.models.resnet import ResNet, resnet_options


def build_encoder(arch: str, *, input_size: int, mean_rgb: Sequence[float], dropout: float = 0.5,
                  batch_norm: bool = False, resnet_stem: str = "auto", resnet_width: int = 64,
                  precision: str = "float32") -> Encoder:
    """Creates the encoder `arch` and its variables (one forward pass on a zero batch at `input_size`).

    `dropout` is the rate after the Exemplar-CNN fc layer; `batch_norm` adds BatchNormalization before every
    Exemplar-CNN ReLU (the ResNets always have it; they ignore both). `resnet_stem`: auto | cifar | imagenet
    (`ResNet`; auto = the CIFAR stem up to 64 px, the ImageNet stem above); `resnet_width`: the ResNet's base
    width (64 in the papers; stage s has width * 2^(s-1) channels). `precision` is the Keras dtype policy of
    its layers (`PRECISIONS`; variables stay float32), set for this construction only.

    Call it inside `strategy.scope()` to get mirrored variables.
    """
    with dtype_policy(precision):
        if arch in RESNET_ARCHS:
            encoder = ResNet(arch, input_size=input_size, mean_rgb=mean_rgb, stem=resnet_stem, width=resnet_width)
        elif arch in EXEMPLAR_ARCHS:
            encoder = ExemplarCNN(arch, input_size=input_size, mean_rgb=mean_rgb, dropout=dropout,
                                  batch_norm=batch_norm)
        else:
            raise ValueError(f"unknown arch {arch!r}; use one of {ARCHS}")
    encoder(keras.ops.zeros((1, input_size, input_size, 3)))
    return encoder


def float32_copy(encoder: Encoder) -> Encoder:
    """The same encoder computing in float32 (a new model holding a copy of the weights); `encoder` itself when
    it already computes in float32. Evaluation and export read mixed-precision encoders through it."""
    if encoder.compute_dtype == "float32":
        return encoder
    dropout = encoder.dropout.rate if isinstance(encoder, ExemplarCNN) else 0.0
    copy = build_encoder(encoder.arch, input_size=encoder.input_size, mean_rgb=encoder.mean_subtraction.mean_rgb,
                         dropout=dropout, batch_norm=getattr(encoder, "batch_norm", False),
                         **resnet_options(encoder))
    copy.set_weights(encoder.get_weights())
    return copy


__all__ = [
    "ARCHS",
    "Encoder",
    "ExemplarCNN",
    "MeanSubtraction",
    "PRECISIONS",
    "ProjectionHead",
    "ResNet",
    "SurrogateClassifier",
    "build_encoder",
    "dtype_policy",
    "float32_copy",
    "needs_loss_scaling",
    "resnet_options",
    "weight_decay_loss",
]
