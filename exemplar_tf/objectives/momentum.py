"""A momentum ("key") encoder that writes the memory bank (MoCo's fix for NPID's stale bank; docs/method.md §7).

With --momentum_encoder=m > 0 a bank objective keeps a copy of the encoder and projection head that is never
trained by gradients: after every step its weights move as theta_k <- m theta_k + (1 - m) theta_q. Each instance
comes in two views: the online encoder embeds view 0 (the query q, which gets the gradient), the key encoder
embeds view 1 (the key k, no gradient). The loss scores q against k as its positive and against bank rows as
negatives (NCE's noise rows, or every other row for the exact softmax), and the instance's bank row is written
with k (the bank's own momentum rule). The export stays the online encoder.

Shapes: B per-replica batch, D embedding size. Replicas: the online weights are equal on every replica after the
all-reduced update, so the same EMA on each keeps the key copies equal too.
"""
from __future__ import annotations

import tensorflow as tf

from exemplar_tf.objectives.bank import NCE, NonParametric


class KeyEncoder:
    """Mixin for a `BankObjective`: two views, the key encoder and head, their EMA after every step."""

    views = 2

    def build(self, encoder, num_instances, new_encoder):
        super().build(encoder, num_instances, new_encoder)
        self.key_encoder = new_encoder()  # trainable=False would also freeze its BatchNorm: kept out of the optimizer
        self.key_head = self.make_head(num_instances)
        self.key_head(self.key_encoder(tf.zeros([1, encoder.input_size, encoder.input_size, 3])))
        self.key_encoder.set_weights(encoder.get_weights())
        self.key_head.set_weights(self.head.get_weights())
        self.online_weights = encoder.trainable_variables + self.head.trainable_variables
        self.key_weights = self.key_encoder.trainable_variables + self.key_head.trainable_variables

    def loss(self, encoder, views, labels, noise_seed):
        queries = self.head(encoder(views[0], training=True), training=True)  # [B,D]
        keys = self.key_head(self.key_encoder(views[1], training=True), training=True)  # [B,D]
        return self.loss_on_codes(queries, labels, noise_seed, positives=tf.stop_gradient(keys))

    def update(self, forward):
        reports = super().update(forward)  # the bank rows take the keys
        momentum = self.settings.momentum_encoder
        for key, online in zip(self.key_weights, self.online_weights):
            key.assign(momentum * key + (1.0 - momentum) * online)
        return reports

    def checkpoint_parts(self):
        return {**super().checkpoint_parts(), "key_encoder": self.key_encoder, "key_head": self.key_head}

    def fingerprint_parts(self):
        return {**super().fingerprint_parts(), "key": self.key_encoder.variables + self.key_head.variables}


class MomentumNCE(KeyEncoder, NCE):
    """NCE against the bank, positives from the key encoder, bank rows written by it."""


class MomentumNonParametric(KeyEncoder, NonParametric):
    """The exact non-parametric softmax, positives from the key encoder, bank rows written by it."""
