"""A training objective (method) as one object: its head, its state, its loss on a batch of views, its update
after the gradient step, what it checkpoints and logs, what the export puts after the encoder, and how it merges
classes. The generic step (`training.step`) is forward -> `loss` -> gradients -> apply -> `update`; it names no
bank, Z or proximal term.

Lifecycle: `build(encoder, num_instances)` inside the strategy scope creates the variables; the step calls
`loss` inside its GradientTape and `update` right after the optimizer; the loop calls `start` on a fresh run,
`at_step` before each call of the step, `scalars` at log points and `merge_classes` at --merge_classes_at. The losses stay the pure functions of `losses`.
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Callable, NamedTuple

import keras
import numpy as np
import tensorflow as tf

from exemplar_tf.data import merging
from exemplar_tf.models.heads import ProjectionHead, SurrogateClassifier
from exemplar_tf.objectives import losses


@dataclasses.dataclass(frozen=True)
class Settings:
    """What an objective needs from the run's configuration (docs/method.md §4 for the NPID numbers)."""

    embedding_dim: int = 128
    head_hidden_dim: int = 0  # > 0: the projection head is an MLP with this hidden width
    tau: float = 0.07
    nce_m: int = 4096
    nce_noise: str = "per_example"
    nce_z_momentum: float = 0.99
    bank_momentum: float = 0.5
    bank_init: str = "random"
    bank_sharding: str = "replicated"  # sharded: each replica holds N/R bank rows (objectives/sharded_bank.py)
    proximal_lambda: float = 0.0
    momentum_encoder: float = 0.0  # > 0: a key encoder (EMA of the encoder) writes the bank; two views
    bn_groups: int = 1  # > 1 (momentum encoder only): BatchNorm groups per batch, keys shuffled across them
    merges_classes: bool = False  # --merge_to: keep a seed -> class map (`relabel`)
    neighbours: int = 0  # > 0 (exact softmax): k nearest bank rows join each example's positive ...
    neighbours_from_step: int = 0  # ... from this step on
    seed: int = 0


class Forward(NamedTuple):
    """What `loss` hands to `update` (a nest of tensors: it leaves the compiled forward pass): the classes of the
    batch int64 [B] (after a merge), the codes the objective writes into its state [B,D] (no gradient) and the
    objective's own tensors by name."""

    labels: tf.Tensor
    codes: tf.Tensor
    extras: dict = {}  # noqa: RUF012 (never mutated: objectives build a new dict)


class Objective(abc.ABC):
    """Base of every objective: the seed -> class map (--merge_to) and the defaults of the hooks."""

    name: str
    exports_head: bool = True  # the trained head gives the embedding (exported after the encoder, the kNN codes)
    views: int = 1  # augmented views of each instance a batch carries

    def __init__(self, settings: Settings):
        self.settings = settings
        self.head: keras.layers.Layer | None = None
        self.relabel: tf.Variable | None = None  # int64 [N] seed -> class (--merge_to; identity until the merge)

    # --- building -------------------------------------------------------------------------------------------------
    def build(self, encoder: keras.Model, num_instances: int, new_encoder: Callable[[], keras.Model]) -> None:
        """Creates the head(s) and the state for `num_instances` instances; `new_encoder()` builds another encoder
        like `encoder` (for objectives that keep a copy). Call inside `strategy.scope()`."""
        self.head = self.make_head(num_instances)
        self.head(encoder(tf.zeros([1, encoder.input_size, encoder.input_size, 3])))
        if self.settings.merges_classes:
            self.relabel = tf.Variable(tf.range(num_instances, dtype=tf.int64), trainable=False, name="relabel",
                                       aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

    @abc.abstractmethod
    def make_head(self, num_instances: int) -> keras.layers.Layer:
        """The head trained on the encoder's representation."""

    @property
    def trainable_layers(self) -> list[keras.layers.Layer]:
        """What the optimizer trains besides the encoder (and weight decay covers)."""
        return [self.head]

    @property
    def embedding_head(self) -> keras.layers.Layer | None:
        """What the export and the kNN monitor put after the encoder: the trained head, or None (the representation
        itself, L2-normalised) when the head is not an embedding."""
        return self.head if self.exports_head else None

    def checkpoint_parts(self) -> dict[str, tf.Module]:
        """The objective's part of the run's checkpoint (names kept from earlier releases: old runs resume)."""
        parts = {"head": self.head}
        if self.relabel is not None:
            parts["relabel"] = self.relabel
        return parts

    # --- the step ---------------------------------------------------------------------------------------------
    def classes(self, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor | None]:
        """(classes int64 [B], K int64 scalar or None): seed ids mapped through `relabel` after a merge, and how many
        classes are in use (None without --merge_to: all N)."""
        labels = tf.cast(labels, tf.int64)
        if self.relabel is None:
            return labels, None
        return tf.gather(self.relabel, labels), tf.reduce_max(self.relabel) + 1

    @abc.abstractmethod
    def loss(self, encoder: keras.Model, views: list[tf.Tensor], labels: tf.Tensor,
             noise_seed: tf.Tensor) -> tuple[tf.Tensor, Forward]:
        """(the replica's mean loss, what `update` needs) for `views` (this objective's `views` float32 images
        [B,P,P,3], view 0 the online one) of instances `labels` int [B]. Runs inside the step's GradientTape.
        `noise_seed` int64 [2] seeds any sampling (distinct per step and replica)."""

    @property
    def reports(self) -> tuple[str, ...]:
        """Names of the scalars `update` returns (TensorBoard tags)."""
        return ()

    @property
    def synchronizes_in_loss(self) -> bool:
        """Whether `loss` runs cross-replica collectives (the step then calls it outside a nested tf.function)."""
        return False

    def update(self, forward: Forward) -> dict[str, tf.Tensor]:
        """The state update after the gradient step (replica context: gather first, then apply the same update on
        every replica). Returns scalars to report (averaged over replicas by the step)."""
        return {}

    # --- the loop ---------------------------------------------------------------------------------------------
    def at_step(self, step: int) -> None:
        """Before each call of the compiled step, from `step` on (host, eager): set any phase of the objective that
        depends on the step (the call never crosses such a switch: `loop.steps_this_call`)."""

    def start(self, encoder: keras.Model, instances: Callable[[], tf.data.Dataset], progress: bool = False) -> str:
        """On a fresh run (step 0, nothing restored): initialise state from the encoder if the method asks for it.
        Returns a line for the user, or ""."""
        return ""

    def scalars(self, step: int) -> dict[str, float]:
        """Host-side TensorBoard scalars at log points (eager)."""
        return {}

    def projector_rows(self) -> np.ndarray | None:
        """float32 [n,D] rows for TensorBoard's projector when no kNN source is given (None: nothing to show)."""
        return None

    def fingerprint_parts(self) -> dict[str, list]:
        """Named variable lists for the run's bitwise state fingerprint."""
        return {"head": self.head.variables}

    @property
    def num_classes(self) -> int | None:
        """K, the classes training uses: N, or fewer after a merge; None without --merge_to. Eager only."""
        return None if self.relabel is None else int(tf.reduce_max(self.relabel)) + 1

    @property
    def merged(self) -> bool:
        """Whether the seeds have been merged into fewer classes (`relabel` is no longer the identity)."""
        return self.relabel is not None and self.num_classes < self.relabel.shape[0]

    def merge_classes(self, labels) -> None:
        """Stores the seed -> class map int64 [N] (`merging.merge_labels`) and adapts the state to the K classes."""
        self.relabel.assign(labels)


class Softmax(Objective):
    """Exemplar-CNN's parametric softmax over the N surrogate classes (no bank; the classifier is not exported)."""

    name = "softmax"
    exports_head = False

    def make_head(self, num_instances: int) -> keras.layers.Layer:
        return SurrogateClassifier(num_instances)

    def loss(self, encoder, views, labels, noise_seed):
        logits = self.head(encoder(views[0], training=True), training=True)
        classes, num_active = self.classes(labels)
        if num_active is not None:  # the N-way classifier used as a K-way one after a merge
            logits = losses.mask_inactive(logits, num_active)
        return losses.softmax_loss(logits, classes), Forward(classes, tf.zeros([0]))

    def merge_classes(self, labels) -> None:
        """Class c's classifier column starts from the mean of its members' columns (columns >= K are masked from
        now on); the optimizer's momentum for the classifier is left as it was (it decays within a few dozen
        steps)."""
        super().merge_classes(labels)
        for variable in self.head.trainable_variables:  # the SurrogateClassifier's kernel [F,N] and bias [N]
            variable.assign(merging.merged_columns(variable.numpy(), labels))

