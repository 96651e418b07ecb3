"""Encoders (Exemplar-CNN small/medium/large, ResNet-18/50) in a registry, heads and the weight-decay loss."""
from __future__ import annotations

from typing import Sequence

from exemplar_tf.choices import ARCHS
from exemplar_tf.models import registry
from exemplar_tf.models.exemplar_cnn import ExemplarCNN
from exemplar_tf.models.heads import ProjectionHead, SurrogateClassifier
from exemplar_tf.models.layers import Encoder, MeanSubtraction, seed_generator_states, weight_decay_loss
from exemplar_tf.models.precision import PRECISIONS, dtype_policy, needs_loss_scaling
from exemplar_tf.models.registry import (ENCODERS, encoder_from_options, recorded_options, register_encoder,
                                         resolved_options)
from exemplar_tf.models.resnet import ResNet


def build_encoder(arch: str, *, input_size: int, mean_rgb: Sequence[float], dropout: float = 0.5,
                  batch_norm: bool = False, resnet_stem: str = "auto", resnet_width: int = 64,
                  precision: str = "float32") -> Encoder:
    """Creates the encoder `arch` and its variables (one forward pass on a zero batch at `input_size`).

    The keywords are every registered class's options; each class takes its own and ignores the others.
    `dropout` is the rate after the Exemplar-CNN fc layer; `batch_norm` adds BatchNormalization before every
    Exemplar-CNN ReLU (the ResNets always have it). `resnet_stem`: auto | cifar | imagenet (`ResNet`; auto = the
    CIFAR stem up to 64 px, the ImageNet stem above); `resnet_width`: the ResNet's base width (64 in the papers;
    stage s has width * 2^(s-1) channels). `precision` is the Keras dtype policy of its layers (`PRECISIONS`;
    variables stay float32), set for this construction only. `encoder_from_options(encoder.options())` builds
    the same architecture again.

    Call it inside `strategy.scope()` to get mirrored variables.
    """
    keywords = {"dropout": dropout, "batch_norm": batch_norm, "resnet_stem": resnet_stem,
                "resnet_width": resnet_width}
    cls = registry.encoder_class(arch)
    return registry.create(arch, input_size=input_size, mean_rgb=mean_rgb, precision=precision,
                           **{name: keywords[name] for name in cls.OPTIONS})


def float32_copy(encoder: Encoder) -> Encoder:
    """The same encoder computing in float32 (a new model, built from `encoder.options()`, holding a copy of the
    weights); `encoder` itself when it already computes in float32. Evaluation and export read mixed-precision
    encoders through it."""
    if encoder.compute_dtype == "float32":
        return encoder
    copy = encoder_from_options(encoder.options(), mean_rgb=encoder.mean_subtraction.mean_rgb)
    copy.set_weights(encoder.get_weights())
    return copy

__all__ = [
    "ARCHS",
    "ENCODERS",
    "Encoder",
    "ExemplarCNN",
    "MeanSubtraction",
    "PRECISIONS",
    "ProjectionHead",
    "ResNet",
    "SurrogateClassifier",
    "build_encoder",
    "dtype_policy",
    "encoder_from_options",
    "float32_copy",
    "needs_loss_scaling",
    "recorded_options",
    "register_encoder",
    "weight_decay_loss",
]
