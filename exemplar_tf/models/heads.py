"""Heads on top of an encoder's representation [B,F]: NPID's projection and Exemplar-CNN's classifier.

Both create their variables on first call (or `head.build((None, F))`); `weight_decay_multipliers()` needs them.
"""
from __future__ import annotations

import keras
import tensorflow as tf

# Exemplar-CNN release: the softmax classifier's weight decay is 4x the base rate.
CLASSIFIER_DECAY_MULTIPLIER = 4.0


class ProjectionHead(keras.layers.Layer):
    """NPID's head: linear layer (with bias) to `dim`, then L2 normalisation. [B,F] -> float32 [B,dim] unit rows."""

    def __init__(self, dim: int = 128, **kwargs):
        super().__init__(name=kwargs.pop("name", "projection_head"), **kwargs)
        self.dim = dim
        self.linear = keras.layers.Dense(dim, name="linear")

    def build(self, input_shape):
        self.linear.build(input_shape)

    def call(self, features):
        return tf.math.l2_normalize(tf.cast(self.linear(features), tf.float32), axis=-1)

    def weight_decay_multipliers(self):
        """kernel 1, bias 0."""
        return {self.linear.kernel.path: 1.0, self.linear.bias.path: 0.0}

    def get_config(self):
        return {**super().get_config(), "dim": self.dim}


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
