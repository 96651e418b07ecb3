"""NPID's memory bank: one unit-norm row per training instance, updated by a moving average, no gradient.

Distribution. The bank is created with `aggregation="only_first_replica"`. Keras 3 passes that through to the
`tf.Variable` it wraps, so under a `tf.distribute` strategy scope the variable is a `MirroredVariable` with
`tf.VariableAggregation.ONLY_FIRST_REPLICA` (tests/test_memory_bank.py checks the wrapped variable). An update
made in replica context then goes through a merge call that broadcasts replica 0's value to every copy. That
keeps the copies bitwise equal, but it is only *correct* if every replica computed the same update, so
`gather_and_update` first gathers `(indices, v)` from all replicas and every replica applies the whole
global batch. The gather is an all-reduce SUM of zero-padded blocks (`all_gather_by_sum`), not
`ReplicaContext.all_gather`: under MultiWorkerMirroredStrategy with two CPU workers TF 2.21's all_gather fails
with "ValueError: destinations can not be empty" (see BUILD_NOTES.md); adding exact zeros is bitwise exact.
"""
from __future__ import annotations

import keras
import tensorflow as tf


MAX_INSTANCES = 2**24  # indices travel as float32 through the cross-replica gather


def random_unit_rows(seed: int):
    """Keras initializer: rows drawn from an isotropic normal (stateless, `seed`) and L2-normalised."""

    def initializer(shape, dtype=None):
        rows = tf.random.stateless_normal(shape, seed=[seed, 0], dtype=dtype or tf.float32)
        return tf.math.l2_normalize(rows, axis=-1)

    return initializer


def blend_rows(old_rows, new_rows, momentum):
    """normalise(momentum * old + (1 - momentum) * new), row-wise. old_rows, new_rows: [K,D] -> [K,D]."""
    return tf.math.l2_normalize(momentum * old_rows + (1.0 - momentum) * new_rows, axis=-1)


def average_duplicates(indices, v):
    """Collapses repeated indices: returns (unique indices int64 [K], mean of their v rows [K,D])."""
    unique, slot = tf.unique(tf.cast(indices, tf.int64))
    means = tf.math.unsorted_segment_mean(tf.cast(v, tf.float32), slot, tf.size(unique))
    return unique, means


def all_gather_by_sum(context: tf.distribute.ReplicaContext, x):
    """Concatenates every replica's x [B,...] along axis 0 in replica order -> [R*B,...] (same B everywhere).

    Each replica writes its block into zeros [R,B,...] at its replica id and the blocks are summed across
    replicas; every other block adds exact zeros, so the result equals the concatenation bit for bit.
    """
    replicas = context.num_replicas_in_sync
    blocks = tf.scatter_nd([[context.replica_id_in_sync_group]], x[tf.newaxis],
                           tf.concat([[replicas], tf.shape(x)], axis=0))
    summed = context.all_reduce(tf.distribute.ReduceOp.SUM, blocks)
    return tf.reshape(summed, tf.concat([[-1], tf.shape(x)[1:]], axis=0))


def gather_batch(context: tf.distribute.ReplicaContext, indices, v):
    """Every replica's `indices` int [B] and `v` float [B,D], concatenated in replica order (one float32 all-reduce:
    indices < 2**24 are exact in float32) -> (int64 [R*B], float32 [R*B,D]). Differentiable in `v` (the gradient
    of an all-reduce SUM is the all-reduce SUM of the gradients)."""
    packed = tf.concat([tf.cast(v, tf.float32), tf.cast(indices, tf.float32)[:, tf.newaxis]], axis=1)
    packed = all_gather_by_sum(context, packed)
    return tf.cast(packed[:, -1], tf.int64), packed[:, :-1]


class MemoryBank(keras.layers.Layer):
    """Holds the non-trainable bank `[num_instances, dim]` (variable name "memory_bank").

    `bank()` reads the whole bank `[N,D]`; `bank(indices)` reads rows `[B,D]`; `variable` is the bank variable
    itself, for losses that only gather rows (a gather reads it in place; after the first `update`, every whole
    read copies all N x D values, so the training step passes `variable`).
    `update(indices, v)` applies w_i <- normalise(momentum * w_i + (1 - momentum) * v_i) to the given rows.
    An index repeated within one batch gets one update with the mean of its v rows (deterministic, unlike a
    scatter with duplicate indices, whose winner is unspecified).
    """

    def __init__(self, num_instances: int, dim: int = 128, momentum: float = 0.5, seed: int = 0, **kwargs):
        kwargs.pop("dtype", None)  # the bank is always float32, whatever the global dtype policy
        super().__init__(dtype="float32", **kwargs)
        if not 0 < num_instances <= MAX_INSTANCES:
            raise ValueError(f"num_instances must be in [1, {MAX_INSTANCES}], got {num_instances}")
        self.num_instances = num_instances
        self.dim = dim
        self.momentum = momentum
        self.seed = seed
        self.bank = self.add_weight(
            shape=(num_instances, dim),
            initializer=random_unit_rows(seed),
            trainable=False,
            autocast=False,
            aggregation="only_first_replica",
            name="memory_bank",
        )
        self.built = True

    @property
    def variable(self) -> tf.Variable:
        """The bank's tf.Variable [N,D] (a MirroredVariable under a strategy); `tf.gather` on it reads in place."""
        return self.bank.value

    sharded = False  # every replica holds all N rows (sharded_bank.ShardedMemoryBank: N/R each)

    def whole(self) -> tf.Tensor:
        """The bank [N,D] (eager or cross-replica context)."""
        return tf.convert_to_tensor(self.bank.value)

    def assign_whole(self, rows):
        """Sets the bank to `rows` float [N,D]."""
        return self.bank.assign(rows)

    def call(self, indices=None):
        """Returns the bank [N,D], or the rows at `indices` (int [B]) as [B,D]."""
        if indices is None:
            return tf.convert_to_tensor(self.bank.value)
        return tf.gather(self.bank.value, indices)

    def update(self, indices, v):
        """Moves rows `indices` (int [B]) towards `v` (float [B,D], unit rows) and renormalises them."""
        unique, targets = average_duplicates(indices, v)
        rows = blend_rows(tf.gather(self.bank.value, unique), targets, self.momentum)
        self.bank.value.scatter_update(tf.IndexedSlices(rows, unique))

    def gather_and_update(self, indices, v):
        """`update` with the global batch: in a replica context (inside `strategy.run`) it first gathers
        `indices` [B] and `v` [B,D] along axis 0 (replica order), so every replica applies the same update.
        Elsewhere (no strategy, or cross-replica context) it updates with what it is given."""
        context = tf.distribute.get_replica_context()
        if tf.distribute.has_strategy() and context is not None:
            indices, v = gather_batch(context, indices, v)  # indices < 2**24: checked in __init__
        self.update(indices, v)

    def get_config(self):
        config = super().get_config()
        config.update(num_instances=self.num_instances, dim=self.dim, momentum=self.momentum, seed=self.seed)
        return config
