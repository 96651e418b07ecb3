"""Heads on top of an encoder's representation [B,F]: NPID's projection (linear or MLP) and Exemplar-CNN's classifier.

Both create their variables on first call (or `head.build((None, F))`); `weight_decay_multipliers()` needs them.
"""
from __future__ import annotations

import keras
import tensorflow as tf

# Exemplar-CNN release: the softmax classifier's weight decay is 4x the base rate.
CLASSIFIER_DECAY_MULTIPLIER = 4.0


class ProjectionHead(keras.layers.Layer):
    """NPID's head: linear layer (with bias) to `dim`, then L2 normalisation. [B,F] -> float32 [B,dim] unit rows.

    With `hidden_dim` > 0 it is MoCo v2's / SimCLR's MLP instead: Dense(hidden_dim) -> ReLU -> Dense(dim) -> L2
    (docs/method.md §4); the encoder's representation below it is then the better feature (the export's
    `representation` output).
    """

    def __init__(self, dim: int = 128, hidden_dim: int = 0, **kwargs):
        super().__init__(name=kwargs.pop("name", "projection_head"), **kwargs)
        self.dim = dim
        self.hidden_dim = hidden_dim
        self.hidden = keras.layers.Dense(hidden_dim, activation="relu", name="hidden") if hidden_dim else None
        self.linear = keras.layers.Dense(dim, name="linear")

    def build(self, input_shape):
        if self.hidden is not None:
            self.hidden.build(input_shape)
            input_shape = (*input_shape[:-1], self.hidden_dim)
        self.linear.build(input_shape)

    def call(self, features):
        hidden = self.hidden(features) if self.hidden is not None else features
        return tf.math.l2_normalize(tf.cast(self.linear(hidden), tf.float32), axis=-1)

    def weight_decay_multipliers(self):
        """kernels 1, biases 0."""
        layers = [self.linear] + ([self.hidden] if self.hidden is not None else [])
        return {path: rate for layer in layers for path, rate in ((layer.kernel.path, 1.0), (layer.bias.path, 0.0))}

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "hidden_dim": self.hidden_dim}


class SurrogateClassifier(keras.layers.Layer):
    """Exemplar-CNN's N-way classifier over surrogate classes: [B,F] -> float32 logits [B,num_classes]."""

    def __init__(self, num_classes: int, **kwargs):
        super().__init__(name=kwargs.pop("name", "surrogate_classifier"), **kwargs)
        self.num_classes = num_classes
        self.logits = keras.layers.Dense(num_classes, name="logits")

    def build(self, input_shape):
        self.logits.build(input_shape)

    def call(self, features):
        return tf.cast(self.logits(features), tf.float32)

    def weight_decay_multipliers(self):
        """kernel 4 (the release's classifier multiplier), bias 0."""
        return {self.logits.kernel.path: CLASSIFIER_DECAY_MULTIPLIER, self.logits.bias.path: 0.0}

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}
