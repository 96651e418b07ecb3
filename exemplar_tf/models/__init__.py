"""Encoders (Exemplar-CNN small/medium/large, ResNet-18/50), heads and the weight-decay loss."""
from __future__ import annotations

from typing import Sequence

import keras

from exemplar_tf.models.exemplar_cnn import ExemplarCNN
from exemplar_tf.models.heads import ProjectionHead, SurrogateClassifier
from exemplar_tf.models.layers import Encoder, MeanSubtraction, weight_decay_loss
from exemplar_tf.models.resnet import ResNet

ARCHS = ("small", "medium", "large", "resnet18", "resnet50")


def build_encoder(arch: str, *, input_size: int, mean_rgb: Sequence[float], dropout: float = 0.5,
                  batch_norm: bool = False, resnet_stem: str = "auto") -> Encoder:
    """Creates the encoder `arch` and its variables (one forward pass on a zero batch at `input_size`).

    `dropout` is the rate after the Exemplar-CNN fc layer; `batch_norm` adds BatchNormalization before every
    Exemplar-CNN ReLU (the ResNets always have it; they ignore both). `resnet_stem`: auto | cifar | imagenet
    (`ResNet`; auto = the CIFAR stem up to 64 px, the ImageNet stem above).

    Call it inside `strategy.scope()` to get mirrored variables.
    """
    if arch in ("resnet18", "resnet50"):
        encoder = ResNet(arch, input_size=input_size, mean_rgb=mean_rgb, stem=resnet_stem)
    elif arch in ("small", "medium", "large"):
        encoder = ExemplarCNN(arch, input_size=input_size, mean_rgb=mean_rgb, dropout=dropout, batch_norm=batch_norm)
    else:
        raise ValueError(f"unknown arch {arch!r}; use one of {ARCHS}")
    encoder(keras.ops.zeros((1, input_size, input_size, 3)))
    return encoder


__all__ = [
    "ARCHS",
    "Encoder",
    "ExemplarCNN",
    "MeanSubtraction",
    "ProjectionHead",
    "ResNet",
    "SurrogateClassifier",
    "build_encoder",
    "weight_decay_loss",
]
