"""A momentum ("key") encoder that writes the memory bank (MoCo's fix for NPID's stale bank; docs/method.md §7).

With --momentum_encoder=m > 0 a bank objective keeps a copy of the encoder and projection head that is never
trained by gradients: after every step its weights move as theta_k <- m theta_k + (1 - m) theta_q. Each instance
comes in two views: the online encoder embeds view 0 (the query q, which gets the gradient), the key encoder
embeds view 1 (the key k, no gradient). The loss scores q against k as its positive and against bank rows as
negatives (NCE's noise rows, or every other row for the exact softmax), and the instance's bank row is written
with k (the bank's own momentum rule). The export stays the online encoder.

With --bn_groups=G > 1, MoCo's "shuffling BN" on one device: BatchNorm over a batch that holds both an
instance's query and its key lets the batch statistics tell which key belongs to which query. So the queries run
through the online network in G contiguous groups of B/G (BatchNorm statistics per group), and the keys are
permuted by a random permutation of the batch, run through the key network in G groups and put back in order:
query group j and key group j then hold (mostly) different instances (`grouped_forward`, `shuffled_grouped_forward`).

Shapes: B per-replica batch, D embedding size. Replicas: the online weights are equal on every replica after the
all-reduced update, so the same EMA on each keeps the key copies equal too.
"""
from __future__ import annotations

import tensorflow as tf

from exemplar_tf.objectives.bank import NCE, NonParametric

SHUFFLE_STREAM = 2  # folded into the step's noise seed for the key permutation (apart from the NCE noise draw)


def grouped_forward(forward, x: tf.Tensor, groups: int) -> tf.Tensor:
    """`forward` (a network in training mode, [b,...] -> [b,...]) applied to `x` [B,...] in `groups` contiguous
    groups of B/groups, the outputs concatenated in order: BatchNorm normalises each group by its own statistics
    (and updates its moving statistics once per group). groups=1: `forward(x)` itself. B must be a multiple of
    `groups`."""
    if groups == 1:
        return forward(x)
    batch = x.shape[0]
    if batch is not None and batch % groups:
        raise ValueError(f"--bn_groups={groups} must divide the per-replica batch size, {batch}")
    return tf.concat([forward(part) for part in tf.split(x, groups)], axis=0)


def embedder(network, head):
    """The training-mode forward of `network` then `head`: images [b,H,W,3] -> codes [b,D]."""
    return lambda x: head(network(x, training=True), training=True)


def batch_permutation(batch_size, seed: tf.Tensor) -> tf.Tensor:
    """A random permutation int32 [B] of range(B), stateless from `seed` int [2]: the same seed, the same one."""
    return tf.argsort(tf.random.stateless_uniform([batch_size], seed))


def shuffled_grouped_forward(forward, x: tf.Tensor, groups: int, seed: tf.Tensor) -> tf.Tensor:
    """`grouped_forward` of `x` [B,...] in the order of `batch_permutation(B, seed)`, the outputs put back in the
    order of `x`: row i is instance i's output, computed in the group the permutation put it in. groups=1:
    `forward(x)` itself."""
    if groups == 1:
        return forward(x)
    permutation = batch_permutation(tf.shape(x)[0], seed)
    shuffled = grouped_forward(forward, tf.gather(x, permutation), groups)
    return tf.gather(shuffled, tf.math.invert_permutation(permutation))


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
        groups = self.settings.bn_groups
        queries = grouped_forward(embedder(encoder, self.head), views[0], groups)  # [B,D]
        keys = shuffled_grouped_forward(embedder(self.key_encoder, self.key_head), views[1], groups,
                                        tf.random.experimental.stateless_fold_in(noise_seed, SHUFFLE_STREAM))  # [B,D]
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
