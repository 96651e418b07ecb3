"""NPID's memory-bank objectives: the exact non-parametric softmax and NCE (docs/method.md §4).

A bank objective owns a `MemoryBank` (one unit row per instance), a `ProjectionHead` whose codes are the
embedding, NPID's optional proximal term and, for NCE, the normaliser Z. After each gradient step every replica
gathers the global batch's (class, code) pairs and applies the same bank update, so the copies stay bitwise
equal (memory_bank.py); Z moves by the replicas' mean estimate. With --bank_sharding=sharded each replica holds
N/R rows instead and the losses combine the shards' scores (sharded_bank.py).
"""
from __future__ import annotations

import abc

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from exemplar_tf.data import merging
from exemplar_tf.models.heads import ProjectionHead
from exemplar_tf.objectives import losses
from exemplar_tf.objectives.memory_bank import MemoryBank, gather_batch
from exemplar_tf.objectives.sharded_bank import (ShardedMemoryBank, all_reduce_sum, own_block, own_rows, pair_scores,
                                                 shard_log_sum_exps, shared_noise_scores)
from exemplar_tf.objectives.objective import Forward, Objective


def distinct_pair_cosines(rows: tf.Tensor) -> tf.Tensor:
    """Cosines between all distinct pairs of rows [n,D] -> [n(n-1)/2]."""
    unit = tf.math.l2_normalize(tf.cast(rows, tf.float32), axis=-1)
    upper = tf.linalg.band_part(tf.ones([tf.shape(unit)[0]] * 2), 0, -1) - tf.eye(tf.shape(unit)[0])
    return tf.boolean_mask(tf.matmul(unit, unit, transpose_b=True), upper > 0)


def bank_statistics(bank: tf.Tensor, sample: int = 1024, seed: int = 0) -> dict[str, float]:
    """Health of the memory bank [N,D]: mean row norm and the mean / max cosine between random distinct rows.

    A collapsing bank shows mean cosine drifting towards 1; a healthy one stays near 0.
    """
    rng = np.random.default_rng(seed)
    n = int(bank.shape[0])
    rows = tf.gather(bank, rng.choice(n, size=min(sample, n), replace=False))
    cosines = distinct_pair_cosines(rows)
    return {
        "bank/mean_norm": float(tf.reduce_mean(tf.norm(rows, axis=-1))),
        "bank/mean_cosine": float(tf.reduce_mean(cosines)),
        "bank/max_cosine": float(tf.reduce_max(cosines)),
    }


def encoder_bank_rows(encoder: keras.Model, head: keras.layers.Layer, bank: MemoryBank, instances: tf.data.Dataset,
                      batch_size: int = 256, progress: bool = False) -> np.ndarray:
    """Bank rows float32 [N,D] from the current encoder: row i = normalise(head(encoder(image of index i))).

    The forward pass runs in training mode, like the training step that produces v (BatchNorm on batch
    statistics); the encoder's and head's non-trainable variables (BatchNorm moving statistics) are put back
    afterwards, so only the bank changes. `instances`: unbatched {"image": float32 [P,P,3], "index": int64},
    every bank row exactly once, in random order as training batches are: BatchNorm normalises each batch by its
    own statistics, so batches of one class (an image folder read in its order) would subtract that class's mean.
    """
    frozen = encoder.non_trainable_variables + head.non_trainable_variables
    saved = [variable.numpy() for variable in frozen]
    rows = np.zeros((bank.num_instances, bank.dim), np.float32)
    filled = np.zeros(bank.num_instances, bool)
    batches = tqdm(instances.batch(batch_size), total=-(-len(rows) // batch_size), disable=not progress,
                   desc="memory bank from the encoder", unit="batch", dynamic_ncols=True)
    try:
        for batch in batches:
            index = batch["index"].numpy()
            if index.min() < 0 or index.max() >= len(rows):
                raise ValueError(f"instance indices must lie in [0, {len(rows)}), got {index.min()}..{index.max()}")
            v = head(encoder(batch["image"], training=True), training=True)
            rows[index] = tf.math.l2_normalize(tf.cast(v, tf.float32), axis=-1).numpy()
            filled[index] = True
    finally:  # also when a bad index stops the pass part-way
        for variable, value in zip(frozen, saved):
            variable.assign(value)
    if not filled.all():
        raise ValueError(f"{np.count_nonzero(~filled)} of {len(rows)} memory-bank rows have no instance image")
    return rows


class BankObjective(Objective):
    """A projection head, a memory bank of N rows and NPID's proximal term; subclasses give the loss over the bank."""

    def build(self, encoder, num_instances, new_encoder):
        super().build(encoder, num_instances, new_encoder)
        strategy = tf.distribute.get_strategy()
        if self.settings.bank_sharding == "sharded" and strategy.num_replicas_in_sync > 1:
            self.bank = ShardedMemoryBank(num_instances, self.settings.embedding_dim, self.settings.bank_momentum,
                                          self.settings.seed, strategy)
        else:  # one replica: the bank is whole anyway
            self.bank = MemoryBank(num_instances, self.settings.embedding_dim, momentum=self.settings.bank_momentum,
                                   seed=self.settings.seed)

    def make_head(self, num_instances: int) -> keras.layers.Layer:
        return ProjectionHead(self.settings.embedding_dim, self.settings.head_hidden_dim)

    def checkpoint_parts(self):
        return {**super().checkpoint_parts(), "bank": self.bank.checkpoint_node if self.bank.sharded else self.bank}

    @property
    def reports(self) -> tuple[str, ...]:
        return ("proximal_loss",) if self.settings.proximal_lambda else ()

    @property
    def synchronizes_in_loss(self) -> bool:
        return self.bank.sharded

    @abc.abstractmethod
    def bank_loss(self, codes: tf.Tensor, classes: tf.Tensor, num_active: tf.Tensor | None, noise_seed: tf.Tensor,
                  positives: tf.Tensor | None) -> tuple[tf.Tensor, dict]:
        """(mean loss, extras for `update`) of codes [B,D] against the bank; `positives` [B,D]: each example's
        positive code (None: its own bank row)."""

    def loss(self, encoder, views, labels, noise_seed):
        codes = self.head(encoder(views[0], training=True), training=True)
        return self.loss_on_codes(codes, labels, noise_seed)

    def loss_on_codes(self, codes, labels, noise_seed, positives=None) -> tuple[tf.Tensor, Forward]:
        """The bank loss of the online codes [B,D] (+ the proximal term); the bank is later written with
        `positives` when given (a key encoder's codes), else with the codes themselves."""
        classes, num_active = self.classes(labels)
        loss, extras = self.bank_loss(codes, classes, num_active, noise_seed, positives)
        if self.settings.proximal_lambda and self.bank.sharded:  # the rows came with the shards' scores
            extras["proximal_loss"] = losses.proximal_loss_from_rows(codes, extras.pop("previous_rows"),
                                                                     self.settings.proximal_lambda)
            loss += extras["proximal_loss"]
        elif self.settings.proximal_lambda:  # v_i^(t-1): the bank row before this step's update (read in place)
            extras["proximal_loss"] = losses.proximal_loss(codes, self.bank.variable, classes,
                                                           self.settings.proximal_lambda)
            loss += extras["proximal_loss"]
        written = codes if positives is None else positives
        return loss, Forward(classes, tf.stop_gradient(written), extras)

    def update(self, forward):
        # row relabel[seed] after a merge; a class's codes in the batch are averaged
        self.bank.gather_and_update(forward.labels, forward.codes)
        return {"proximal_loss": forward.extras["proximal_loss"]} if self.settings.proximal_lambda else {}

    def start(self, encoder, instances, progress=False):
        if self.settings.bank_init != "features":
            return ""
        self.bank.assign_whole(encoder_bank_rows(encoder, self.head, self.bank, instances(), progress=progress))
        return f"Memory bank: {self.bank.num_instances} rows from the initial encoder's codes"

    def rows_in_use(self) -> tf.Tensor:
        """The bank's rows [K,D] that training uses: all N, or the K class rows after a merge."""
        rows = self.bank.whole()
        return rows if self.relabel is None else rows[:self.num_classes]

    def scalars(self, step):
        return bank_statistics(self.rows_in_use(), seed=step)

    def projector_rows(self, limit: int = 2000):
        return self.rows_in_use()[:limit].numpy()

    def fingerprint_parts(self):
        return {**super().fingerprint_parts(), "bank": [self.bank.whole()]}

    def merge_classes(self, labels):
        """Row c becomes the normalised mean of its members' current rows (rows >= K are inactive from now on).
        The projection head is not touched."""
        super().merge_classes(labels)
        self.bank.assign_whole(merging.merged_bank_rows(self.bank.whole().numpy(), labels))

    def sharded_reduce(self, context, parts, classes):
        """Sharded bank: sums this shard's `parts` (float32 [B,...] each, over the global batch) across the shards
        in one all-reduce, with the own bank rows of `classes` int64 [B] appended when the proximal term needs them.
        Returns (this replica's examples of each part [b,...], extras: {"previous_rows": [b,D]} or {})."""
        replica, shard = self.bank.replica(context), self.bank.local_shard(context)
        if self.settings.proximal_lambda:
            parts = parts + [own_rows(shard, classes, replica, self.bank.rows_per_shard)]
        blocks = [own_block(x, self.bank.num_shards, replica) for x in all_reduce_sum(context, parts)]
        return blocks, ({"previous_rows": blocks.pop()} if self.settings.proximal_lambda else {})


class NonParametric(BankObjective):
    """NPID's exact non-parametric softmax over every bank row (reads the bank whole).

    With `settings.neighbours` = k > 0, from step `settings.neighbours_from_step` on each example's positive is
    its own row together with the k rows nearest to it in the bank (`losses.neighbourhood_softmax_loss`); the
    switch is a variable the loop sets before each call (`at_step`), so one compiled step serves both phases.
    """

    name = "nonparametric"

    def build(self, encoder, num_instances, new_encoder):
        super().build(encoder, num_instances, new_encoder)
        self.neighbours_on = None
        if self.settings.neighbours:  # not checkpointed: `at_step` derives it from the step
            if self.bank.sharded or self.settings.momentum_encoder or self.settings.merges_classes:
                raise ValueError("neighbours need the whole bank of instance rows and the own row as the positive: "
                                 "not with a sharded bank, a momentum encoder or merged classes")
            self.neighbours_on = tf.Variable(False, trainable=False, name="neighbours_on",
                                             aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

    def at_step(self, step):
        if self.neighbours_on is not None:
            self.neighbours_on.assign(step >= self.settings.neighbours_from_step)

    def bank_loss(self, codes, classes, num_active, noise_seed, positives):
        if self.bank.sharded:
            return self.sharded_bank_loss(codes, classes, num_active, positives)
        tau, bank = self.settings.tau, self.bank.variable
        own_row_loss = lambda: losses.nonparametric_softmax_loss(  # noqa: E731
            codes, bank, classes, tau, num_active, positives=positives)
        if self.neighbours_on is None:
            return own_row_loss(), {}

        def neighbourhood_loss():
            rows = tf.convert_to_tensor(bank)  # one read of the whole bank for the neighbours and the softmax
            return losses.neighbourhood_softmax_loss(
                codes, rows, classes, losses.bank_neighbours(rows, classes, self.settings.neighbours), tau)

        return tf.cond(self.neighbours_on, neighbourhood_loss, own_row_loss), {}

    def sharded_bank_loss(self, codes, classes, num_active, positives):
        """The exact softmax over the shards: each scores the global batch against its rows, and one all-reduce
        gathers the shards' log-sum-exps [B,R] and sums the own-row logits [B] (sharded_bank.py)."""
        context = tf.distribute.get_replica_context()
        replica, tau = self.bank.replica(context), self.settings.tau
        classes, codes = gather_batch(context, classes, codes)  # [B], [B,D]
        num_rows = self.bank.num_instances if num_active is None else num_active
        log_sum_exps, own_logits = shard_log_sum_exps(codes, self.bank.local_shard(context), classes, replica,
                                                      self.bank.rows_per_shard, num_rows, tau,
                                                      leave_out_own=positives is not None)
        in_column = tf.range(self.bank.num_shards)[tf.newaxis, :] == replica  # [1,R]: all-gathered by the sum
        (log_sum_exps, own_logits), extras = self.sharded_reduce(
            context, [tf.where(in_column, log_sum_exps[:, tf.newaxis], 0.0), own_logits], classes)
        if positives is not None:  # the key encoder's code stands in for the own row
            own_logits = tf.reduce_sum(own_block(codes, self.bank.num_shards, replica)
                                       * tf.stop_gradient(tf.cast(positives, tf.float32)), axis=-1) / tau
            log_sum_exps = tf.concat([log_sum_exps, own_logits[:, tf.newaxis]], axis=1)
        return tf.reduce_mean(tf.reduce_logsumexp(log_sum_exps, axis=1) - own_logits), extras


class NCE(BankObjective):
    """NPID's NCE with `nce_m` noise rows per example (or one shared set per batch) and the estimated Z.

    It passes the bank variable itself: its gathers read it in place, and only dense scores
    (`losses.uses_dense_scores`) read it whole, once per step. After a merge into K classes the noise, Pn = 1/K
    and the Z estimate K * mean exp(noise score / tau) use the K active rows (the N - K others never enter).
    """

    name = "nce"

    def build(self, encoder, num_instances, new_encoder):
        super().build(encoder, num_instances, new_encoder)
        # NCE's normaliser; <= 0 means "not estimated yet" (the next batch sets it).
        self.z = tf.Variable(-1.0, trainable=False, name="nce_z",
                             aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

    def checkpoint_parts(self):
        return {**super().checkpoint_parts(), "z": self.z}

    @property
    def reports(self):
        return super().reports + ("nce_z",)

    def noise(self, classes, num_rows, noise_seed):
        """Noise rows, uniform over [0, num_rows) minus the positives `classes` [B]: int64 [B, nce_m] per example,
        or [nce_m] shared by the batch (--nce_noise). `num_rows`: N, or K after a merge."""
        sample = losses.sample_shared_noise if self.settings.nce_noise == "shared" else losses.sample_noise
        return sample(classes, num_rows, self.settings.nce_m, noise_seed)

    def bank_loss(self, codes, classes, num_active, noise_seed, positives):
        if self.bank.sharded:
            return self.sharded_bank_loss(codes, classes, num_active, noise_seed, positives)
        num_rows = self.bank.num_instances if num_active is None else num_active
        noise = self.noise(classes, num_rows, noise_seed)
        tau = self.settings.tau
        first_estimate = lambda: tf.cast(num_rows, tf.float32) * tf.reduce_mean(  # noqa: E731
            tf.exp(tf.stop_gradient(losses.noise_scores(codes, self.bank.variable, noise)) / tau))
        z_now = tf.cond(self.z > 0, lambda: tf.identity(self.z), first_estimate)
        loss, z_batch = losses.nce_loss(codes, self.bank.variable, classes, noise, tau, z_now, num_active=num_active,
                                        positives=positives)
        return loss, {"z_batch": z_batch}

    def sharded_bank_loss(self, codes, classes, num_active, noise_seed, positives):
        """NCE over the shards: every replica draws every replica's noise (replica s's seed is the step's
        (seed, step * R + s), `noise_seed` minus this replica's id plus s), scores the global batch against its
        rows and one all-reduce sums the [B,1+m] scores (own row, then noise; sharded_bank.py)."""
        context = tf.distribute.get_replica_context()
        replica, num_shards, size = self.bank.replica(context), self.bank.num_shards, self.bank.rows_per_shard
        shard, tau = self.bank.local_shard(context), self.settings.tau
        own_codes = tf.cast(codes, tf.float32)
        classes, codes = gather_batch(context, classes, codes)  # [B], [B,D]
        num_rows = self.bank.num_instances if num_active is None else num_active
        noise = [self.noise(replica_classes, num_rows, noise_seed + tf.constant([0, s - replica], noise_seed.dtype))
                 for s, replica_classes in enumerate(tf.split(classes, num_shards))]  # R x [b,m] or R x [m]
        if self.settings.nce_noise == "shared":
            noise_scores = shared_noise_scores(codes, shard, tf.stack(noise), replica, size)
        else:
            noise_scores = pair_scores(codes, shard, tf.concat(noise, axis=0), replica, size)
        positive_scores = pair_scores(codes, shard, classes[:, tf.newaxis], replica, size)
        (scores,), extras = self.sharded_reduce(context, [tf.concat([positive_scores, noise_scores], axis=1)], classes)
        negative_scores = scores[:, 1:]
        if positives is None:
            positive_scores = scores[:, 0]
        else:  # the key encoder's codes
            positive_scores = tf.reduce_sum(own_codes * tf.stop_gradient(tf.cast(positives, tf.float32)), axis=-1)
        first_estimate = lambda: tf.cast(num_rows, tf.float32) * tf.reduce_mean(  # noqa: E731
            tf.exp(tf.stop_gradient(negative_scores) / tau))
        z_now = tf.cond(self.z > 0, lambda: tf.identity(self.z), first_estimate)
        loss, z_batch = losses.nce_loss_from_scores(positive_scores, negative_scores, tau, z_now, num_rows)
        return loss, {"z_batch": z_batch, **extras}

    def update(self, forward):
        reports = super().update(forward)
        z_mean = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.MEAN, forward.extras["z_batch"])
        self.z.assign(losses.update_z(self.z, z_mean, self.settings.nce_z_momentum, self.z <= 0))
        return {**reports, "nce_z": self.z.read_value()}

    def fingerprint_parts(self):
        return {**super().fingerprint_parts(), "z": [self.z]}

    def merge_classes(self, labels):
        """As `BankObjective.merge_classes`, and Z is reset to "not estimated": the first batch after the merge
        estimates it afresh over the K rows (Z sums exp(w . v / tau) over the rows in use: K terms now, not N)."""
        super().merge_classes(labels)
        self.z.assign(-1.0)
