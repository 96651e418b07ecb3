"""A memory bank split over the replicas of a MirroredStrategy (--bank_sharding=sharded): each replica holds N/R rows.

Rows. Replica r owns the contiguous block [r*S, (r+1)*S) of the bank, S = ceil(N/R): N is padded up to R*S and
the padded rows are never drawn, scored or written. Storage: one `tf.Variable` [S,D] with ON_READ
synchronization. Under a MirroredStrategy its per-replica components are separate [S,D] variables on their
devices and nothing mirrors them, so they hold different rows (`strategy.experimental_local_results` lists them);
a replica reads and writes its own component (`ShardedMemoryBank.local_shard`). `whole()` and `assign_whole()`
read and write all N rows (eager or cross-replica: the export, kNN, statistics, --bank_init=features, merging).

The step. Shapes: b per-replica batch, B = R*b the global batch (replica order), m noise rows, D code size.
1. Every replica gathers the global batch's codes [B,D] and classes [B] (`memory_bank.gather_batch`: one
   all-reduce SUM; TF's `ReplicaContext.all_reduce` SUM has a gradient, the all-reduce SUM of the gradients, so
   each code gets the gradient of every replica's loss through it).
2. NCE: every replica draws every replica's noise with that replica's seed, so all hold the same [B,m] (or [R,m]
   shared sets), the indices the replicated bank's replicas draw for their own examples. Each scores the global
   batch against the rows it owns (zeros elsewhere) and one all-reduce SUM of the [B,1+m] masked scores (own row,
   then noise; exactly one shard owns each row) gives every replica the full scores; it takes the loss of its
   own b examples. The exact softmax all-gathers each shard's log-sum-exp [B,R] and sums the own-row logits [B]
   instead, and combines the log-sum-exps.
3. Each replica writes only its own rows, from the gathered global batch (the replicated bank's update rule).
Collectives per step: the gather (B*(D+1) floats, twice: loss and update), the scores (B*(1+m) floats, or
B*(R+1) for the exact softmax; + B*D with the proximal term's rows), all in float32.

Results equal the replicated bank's up to float rounding (tests/test_sharded_bank.py: losses within 3e-7
relative, gradients within 1e-6, the first step's rows bitwise): the noise indices, the own rows and the update
rule are the same, but the noise dot products run in other kernels (an elementwise product and sum over the owned
(example, row) pairs instead of a batched matmul) and the exact softmax's log-sum-exp is split over shards.

Checkpoints hold the whole bank [N,D] under the replicated bank's key (`bank/bank/.ATTRIBUTES/VARIABLE_VALUE`,
`checkpoint_node`), so they restore across modes and replica counts.
"""
from __future__ import annotations

import math

import tensorflow as tf

from exemplar_tf.objectives.memory_bank import (MAX_INSTANCES, average_duplicates, blend_rows, gather_batch,
                                                random_unit_rows)

HOST = "/cpu:0"  # where the whole bank is assembled (initial rows, checkpoints, merging, statistics)
# Stands for -inf in a shard's logits (rows not in use): a shard whose rows are all out of use gets a finite
# log-sum-exp (exp of it is exactly 0 beside any real logit), where -inf would give NaN gradients.
MASKED_LOGIT = -1e30


def owned_rows(rows, shard: int, rows_per_shard: int):
    """Which global bank rows `rows` (int [...]) shard `shard` holds: (local row int64 [...], 0 where not owned;
    owned bool [...])."""
    local = tf.cast(rows, tf.int64) - shard * rows_per_shard
    owned = tf.logical_and(local >= 0, local < rows_per_shard)
    return tf.where(owned, local, tf.zeros_like(local)), owned


def pair_scores(codes, shard_rows, columns, shard: int, rows_per_shard: int):
    """codes float32 [B,D], shard_rows [S,D] (variable or tensor), columns int [B,k] global bank rows ->
    float32 [B,k]: codes[i] . row columns[i,j] where this shard owns that row, 0 elsewhere. Gathers only the owned
    rows (about B*k/R of them); no gradient into the bank."""
    local, owned = owned_rows(columns, shard, rows_per_shard)
    pairs = tf.where(owned)  # [K,2] (example, column)
    rows = tf.stop_gradient(tf.gather(shard_rows, tf.gather_nd(local, pairs)))  # [K,D]
    scores = tf.reduce_sum(tf.gather(codes, pairs[:, 0]) * rows, axis=-1)
    return tf.scatter_nd(pairs, scores, tf.shape(columns, out_type=tf.int64))


def shared_noise_scores(codes, shard_rows, noise_sets, shard: int, rows_per_shard: int):
    """codes float32 [B,D] (R blocks of b examples, replica order), noise_sets int [R,m] (replica s's shared noise)
    -> float32 [B,m]: each example's scores against its replica's set where this shard owns the row, else 0."""
    local, owned = owned_rows(noise_sets, shard, rows_per_shard)
    rows = tf.stop_gradient(tf.gather(shard_rows, local))  # [R,m,D]
    blocks = tf.reshape(codes, [tf.shape(noise_sets)[0], -1, tf.shape(codes)[-1]])  # [R,b,D]
    scores = tf.where(owned[:, tf.newaxis, :], tf.einsum("rbd,rmd->rbm", blocks, rows), 0.0)
    return tf.reshape(scores, [tf.shape(codes)[0], -1])


def own_rows(shard_rows, classes, shard: int, rows_per_shard: int):
    """Rows classes [B] of the bank where this shard owns them, zeros elsewhere -> float32 [B,D] (no gradient)."""
    local, owned = owned_rows(classes, shard, rows_per_shard)
    rows = tf.stop_gradient(tf.gather(shard_rows, local))
    return tf.where(owned[:, tf.newaxis], rows, 0.0)


def shard_log_sum_exps(codes, shard_rows, classes, shard: int, rows_per_shard: int, num_rows, tau,
                       leave_out_own: bool):
    """The exact softmax's part on one shard. codes float32 [B,D], classes int [B] (each example's own row),
    num_rows: rows [0, num_rows) are in use (N, or K after a merge). Returns (log-sum-exp of codes . row / tau over
    this shard's rows in use, own row left out when `leave_out_own` (a key encoder's positive replaces it) ->
    float32 [B]; the own row's logit where this shard owns it, else 0 -> float32 [B])."""
    logits = tf.matmul(codes, tf.stop_gradient(tf.convert_to_tensor(shard_rows)), transpose_b=True) / tau  # [B,S]
    columns = shard * rows_per_shard + tf.range(rows_per_shard, dtype=tf.int64)
    in_use = (columns < tf.cast(num_rows, tf.int64))[tf.newaxis, :]
    if leave_out_own:
        in_use = tf.logical_and(in_use, tf.not_equal(columns[tf.newaxis, :], tf.cast(classes, tf.int64)[:, tf.newaxis]))
    log_sum_exps = tf.reduce_logsumexp(tf.where(in_use, logits, MASKED_LOGIT), axis=1)
    local, owned = owned_rows(classes, shard, rows_per_shard)
    return log_sum_exps, tf.where(owned, tf.gather(logits, local, batch_dims=1), 0.0)


def all_reduce_sum(context: tf.distribute.ReplicaContext, tensors: list) -> list:
    """One all-reduce SUM of several float32 tensors (flattened and concatenated) -> the summed tensors, same
    shapes."""
    flat = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.concat([tf.reshape(t, [-1]) for t in tensors], 0))
    parts = tf.split(flat, [tf.size(t) for t in tensors])
    return [tf.reshape(part, tf.shape(t)) for part, t in zip(parts, tensors)]


def own_block(x, num_replicas: int, replica: int):
    """Replica `replica`'s examples of a global-batch tensor x [R*b,...] -> [b,...]."""
    return tf.reshape(x, tf.concat([[num_replicas, -1], tf.shape(x)[1:]], 0))[replica]


class _WholeBankValue(tf.__internal__.tracking.Trackable):
    """Saves the whole bank [N,D] as a variable value would be saved ("VARIABLE_VALUE") and restores it."""

    def __init__(self, bank: "ShardedMemoryBank"):
        self._bank = bank

    def _serialize_to_tensors(self):
        return {"VARIABLE_VALUE": self._bank.whole()}

    def _restore_from_tensors(self, restored_tensors):
        return self._bank.assign_whole(restored_tensors["VARIABLE_VALUE"])


class ShardedMemoryBank:
    """The bank [N,D] split into R shards [S,D], one per replica of `strategy` (a MirroredStrategy, R > 1); the
    same initial rows and update rule as `MemoryBank`. Create it inside `strategy.scope()`."""

    sharded = True

    def __init__(self, num_instances: int, dim: int, momentum: float, seed: int, strategy: tf.distribute.Strategy):
        if not 0 < num_instances <= MAX_INSTANCES:
            raise ValueError(f"num_instances must be in [1, {MAX_INSTANCES}], got {num_instances}")
        if not isinstance(strategy, tf.distribute.MirroredStrategy) or strategy.num_replicas_in_sync < 2:
            raise ValueError(f"a sharded memory bank needs a MirroredStrategy with several replicas, got "
                             f"{type(strategy).__name__} with {strategy.num_replicas_in_sync}")
        self.num_instances, self.dim, self.momentum, self.seed = num_instances, dim, momentum, seed
        self.strategy = strategy
        self.num_shards = strategy.num_replicas_in_sync
        self.rows_per_shard = math.ceil(num_instances / self.num_shards)
        self.variable = tf.Variable(lambda: tf.zeros([self.rows_per_shard, dim]), trainable=False,
                                    name="memory_bank_shard", synchronization=tf.VariableSynchronization.ON_READ,
                                    aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        with tf.device(HOST):  # the whole initial bank never sits on one accelerator
            self.assign_whole(random_unit_rows(seed)((num_instances, dim)))
        self.checkpoint_node = tf.Module()  # what a checkpoint holds as "bank": its "bank" is the whole bank
        self.checkpoint_node.bank = _WholeBankValue(self)

    def shards(self) -> list[tf.Variable]:
        """The R per-replica components [S,D], replica order."""
        return list(self.strategy.experimental_local_results(self.variable))

    def local_shard(self, context: tf.distribute.ReplicaContext) -> tf.Variable:
        """The calling replica's component [S,D] (replica context)."""
        return self.shards()[self.replica(context)]

    @staticmethod
    def replica(context: tf.distribute.ReplicaContext) -> int:
        """The calling replica's id, a Python int (MirroredStrategy traces each replica on its own)."""
        return int(tf.get_static_value(context.replica_id_in_sync_group))

    def whole(self) -> tf.Tensor:
        """The bank [N,D] (eager or cross-replica context), assembled in host memory."""
        with tf.device(HOST):
            return tf.concat([shard.read_value() for shard in self.shards()], axis=0)[:self.num_instances]

    def assign_whole(self, rows):
        """Sets the bank to `rows` float [N,D]: each shard takes its block (the padding rows are zeros; no padded
        copy of the whole bank is made)."""
        rows, size = tf.cast(rows, tf.float32), self.rows_per_shard
        assigned = []
        for i, shard in enumerate(self.shards()):
            block = rows[i * size:(i + 1) * size]
            assigned.append(shard.assign(tf.pad(block, [[0, size - tf.shape(block)[0]], [0, 0]])))
        return tf.group(assigned)

    def gather_and_update(self, indices, v):
        """`MemoryBank.gather_and_update` in a replica context: gathers the global batch's `indices` [b] and `v`
        [b,D] and applies to the rows this replica owns the update the replicated bank applies to them."""
        context = tf.distribute.get_replica_context()
        indices, v = gather_batch(context, indices, v)
        unique, targets = average_duplicates(indices, v)
        local, owned = owned_rows(unique, self.replica(context), self.rows_per_shard)
        shard = self.local_shard(context)
        # All K rows blended in one [K,D] op as the replicated bank blends them (bitwise the same rows); the rows of
        # other shards (read as local row 0) are dropped.
        rows = blend_rows(tf.gather(shard, local), targets, self.momentum)
        shard.scatter_update(tf.IndexedSlices(tf.boolean_mask(rows, owned), tf.boolean_mask(local, owned)))
