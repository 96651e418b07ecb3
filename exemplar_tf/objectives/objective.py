"""One `Objective` per training objective: its head, its loss on a replica's batch, whether it keeps a memory
bank, whether it estimates NCE's Z, and which head the export (and the kNN monitor) reads codes from.

The training step, the loop and the run export ask the objective instead of switching on its name; the losses
themselves stay the pure functions of `losses`, which the objectives only join to their inputs.
"""
from __future__ import annotations

import abc

import keras
import tensorflow as tf

from exemplar_tf.choices import BANK_OBJECTIVES, OBJECTIVES
from exemplar_tf.models.heads import ProjectionHead, SurrogateClassifier
from exemplar_tf.objectives import losses
from exemplar_tf.objectives.memory_bank import MemoryBank


class Objective(abc.ABC):
    """The settings of one objective (embedding size, temperature, NCE noise) and what it does with them."""

    name: str
    exports_head: bool  # the trained head gives the embedding (exported with the encoder, the kNN codes)
    estimates_z: bool = False  # keeps NCE's normaliser Z (moving average over the batches' estimates)

    def __init__(self, *, embedding_dim: int = 128, tau: float = 0.07, nce_m: int = 4096,
                 nce_noise: str = "per_example"):
        self.embedding_dim, self.tau, self.nce_m, self.nce_noise = embedding_dim, tau, nce_m, nce_noise

    @property
    def uses_bank(self) -> bool:
        """A MemoryBank of `embedding_dim` rows, one per instance, updated with every batch's codes."""
        return self.name in BANK_OBJECTIVES

    def head(self, num_instances: int = 0) -> keras.layers.Layer:
        """The head trained on the encoder's representation (`num_instances`: the classifier's width)."""
        return ProjectionHead(self.embedding_dim)

    def embedding_head(self, head: keras.layers.Layer) -> keras.layers.Layer | None:
        """What the export and the kNN monitor put after the encoder: the trained head, or None (the representation
        itself, L2-normalised) when the head is not an embedding."""
        return head if self.exports_head else None

    @abc.abstractmethod
    def loss(self, outputs: tf.Tensor, labels: tf.Tensor, bank: MemoryBank | None, z: tf.Variable,
             noise_seed: tf.Tensor, num_active: tf.Tensor | None = None) -> tuple[tf.Tensor, tf.Tensor]:
        """(the replica's mean loss, NCE's Monte-Carlo Z estimate or 0) for head outputs [B,*] of instances
        `labels` [B]; `noise_seed` int64 [2] seeds NCE's noise. `num_active` (int scalar K, --merge_to): only
        classifier columns / bank rows [0, K) are in use, the rest are masked (softmax, exact non-parametric
        softmax) or never drawn (NCE); None: all of them."""


class Softmax(Objective):
    """Exemplar-CNN's parametric softmax over the N surrogate classes (no bank; the classifier is not exported)."""

    name = "softmax"
    exports_head = False

    def head(self, num_instances: int = 0) -> keras.layers.Layer:
        return SurrogateClassifier(num_instances)

    def loss(self, outputs, labels, bank, z, noise_seed, num_active=None):
        if num_active is not None:  # the N-way classifier used as a K-way one after a merge
            outputs = losses.mask_inactive(outputs, num_active)
        return losses.softmax_loss(outputs, labels), tf.constant(0.0)


class NonParametric(Objective):
    """NPID's exact non-parametric softmax over every bank row (reads the bank whole)."""

    name = "nonparametric"
    exports_head = True

    def loss(self, outputs, labels, bank, z, noise_seed, num_active=None):
        loss = losses.nonparametric_softmax_loss(outputs, bank.variable, labels, self.tau, num_active)
        return loss, tf.constant(0.0)


class NCE(Objective):
    """NPID's NCE with `nce_m` noise rows per example (or one shared set per batch) and the estimated Z.

    It passes the bank variable itself: its gathers read it in place, and only dense scores
    (`losses.uses_dense_scores`) read it whole, once per step. After a merge into K classes the noise, Pn = 1/K
    and the Z estimate K * mean exp(noise score / tau) use the K active rows (the N - K others never enter).
    """

    name = "nce"
    exports_head = True
    estimates_z = True

    def noise(self, labels, num_rows, noise_seed):
        """Noise rows, uniform over [0, num_rows) minus the positives `labels` [B]: int64 [B, nce_m] per example,
        or [nce_m] shared by the batch (--nce_noise). `num_rows`: N, or K after a merge."""
        sample = losses.sample_shared_noise if self.nce_noise == "shared" else losses.sample_noise
        return sample(labels, num_rows, self.nce_m, noise_seed)

    def loss(self, outputs, labels, bank, z, noise_seed, num_active=None):
        num_rows = bank.num_instances if num_active is None else num_active
        noise = self.noise(labels, num_rows, noise_seed)
        first_estimate = lambda: tf.cast(num_rows, tf.float32) * tf.reduce_mean(  # noqa: E731
            tf.exp(tf.stop_gradient(losses.noise_scores(outputs, bank.variable, noise)) / self.tau))
        z_now = tf.cond(z > 0, lambda: tf.identity(z), first_estimate)
        return losses.nce_loss(outputs, bank.variable, labels, noise, self.tau, z_now, num_active=num_active)


BY_NAME = {objective.name: objective for objective in (Softmax, NonParametric, NCE)}  # keys: choices.OBJECTIVES


def make(name: str, **settings) -> Objective:
    """The objective `name` (one of choices.OBJECTIVES) with `settings` (embedding_dim, tau, nce_m, nce_noise)."""
    if name not in BY_NAME:
        raise ValueError(f"objective {name!r} is not one of {', '.join(OBJECTIVES)}")
    return BY_NAME[name](**settings)
