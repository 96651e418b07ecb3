"""The model state and the distributed training step.

Gradients: each replica's loss is divided by the number of replicas, because the Keras optimizer all-reduces
(sums) gradients across replicas. Memory bank and NCE's Z: every replica all-gathers the global batch's
(index, embedding) pairs and the mean Z estimate, then applies the same update; the variables aggregate with
ONLY_FIRST_REPLICA, so the copies stay bitwise equal.
"""
from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from exemplar_tf import models
from exemplar_tf.data import merging
from exemplar_tf.objectives import losses
from exemplar_tf.objectives.memory_bank import MemoryBank
from exemplar_tf.objectives.objective import Objective, make
from exemplar_tf.training.config import TrainConfig


@dataclasses.dataclass
class ModelState:
    """Everything that is trained or checkpointed (all built inside the strategy scope)."""

    objective: Objective  # what is trained: head, loss, bank or not (not checkpointed: it holds settings only)
    encoder: keras.Model
    head: keras.layers.Layer  # objective.head: ProjectionHead (bank objectives) or SurrogateClassifier (softmax)
    optimizer: keras.optimizers.Optimizer
    bank: MemoryBank | None  # present when objective.uses_bank
    z: tf.Variable  # NCE normaliser; <= 0 means "not estimated yet"
    device_augment: object | None = None  # surrogate.DeviceAugment when augmentation runs on the device
    relabel: tf.Variable | None = None  # int64 [N] seed -> class (--merge_to; identity until the merge)

    @property
    def embedding_head(self) -> keras.layers.Layer | None:
        """The head the export and the kNN codes put after the encoder (None: the representation itself)."""
        return self.objective.embedding_head(self.head)

    def checkpoint(self) -> tf.train.Checkpoint:
        parts = dict(encoder=self.encoder, head=self.head, optimizer=self.optimizer, z=self.z)
        if self.bank is not None:
            parts["bank"] = self.bank
        if self.relabel is not None:
            parts["relabel"] = self.relabel
        return tf.train.Checkpoint(**parts)

    @property
    def num_classes(self) -> int | None:
        """K, the classes training uses: N, or fewer after a merge (max of `relabel` + 1); None without `relabel`.
        Eager only (a Python int); the compiled step reads the same max from the variable itself."""
        return None if self.relabel is None else int(tf.reduce_max(self.relabel)) + 1

    @property
    def merged(self) -> bool:
        """Whether the seeds have been merged into fewer classes (`relabel` is no longer the identity)."""
        return self.relabel is not None and self.num_classes < self.relabel.shape[0]

    def bank_rows_in_use(self) -> tf.Tensor:
        """The memory bank's rows [K,D] that training uses: all N, or the K class rows after a merge."""
        rows = self.bank()
        return rows if self.relabel is None else rows[:self.num_classes]

    @property
    def step(self) -> int:
        return int(self.optimizer.iterations.numpy())


def learning_rate_schedule(config: TrainConfig) -> keras.optimizers.schedules.LearningRateSchedule:
    """Step decay: lr, multiplied by lr_decay_factor at each fraction of the run in lr_decay_at."""
    boundaries = [int(f * config.steps) for f in sorted(config.lr_decay_at)]
    values = [config.lr * config.lr_decay_factor**i for i in range(len(boundaries) + 1)]
    if not boundaries:
        return keras.optimizers.schedules.PiecewiseConstantDecay([config.steps], [config.lr, config.lr])
    return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)


def objective_of(config: TrainConfig) -> Objective:
    """The run's `Objective` with its settings from the config."""
    return make(config.objective, embedding_dim=config.embedding_dim, tau=config.tau, nce_m=config.nce_m,
                nce_noise=config.nce_noise)


def build_state(config: TrainConfig, num_instances: int, mean_rgb: np.ndarray, device_augment=None) -> ModelState:
    """Builds encoder, head, optimizer (with its slots), bank and Z. Call inside `strategy.scope()`."""
    objective = objective_of(config)
    input_size = config.input_size
    encoder = models.build_encoder(config.arch, input_size=input_size, mean_rgb=mean_rgb, dropout=config.dropout,
                                   batch_norm=config.batch_norm, resnet_stem=config.resnet_stem,
                                   resnet_width=config.resnet_width, precision=config.precision)
    head = objective.head(num_instances)
    head(encoder(tf.zeros([1, input_size, input_size, 3])))
    optimizer = keras.optimizers.SGD(learning_rate_schedule(config), momentum=config.momentum)
    if models.needs_loss_scaling(config.precision):
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)  # skips (and does not count) non-finite steps
    optimizer.build(encoder.trainable_variables + head.trainable_variables)
    bank = None
    if objective.uses_bank:
        bank = MemoryBank(num_instances, config.embedding_dim, momentum=config.bank_momentum, seed=config.seed)
    z = tf.Variable(-1.0, trainable=False, name="nce_z", aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    relabel = None
    if config.merge_to:
        relabel = tf.Variable(tf.range(num_instances, dtype=tf.int64), trainable=False, name="relabel",
                              aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    return ModelState(objective, encoder, head, optimizer, bank, z,
                      device_augment if config.augment_on == "device" else None, relabel)


def seed_codes(encoder: keras.Model, instances: tf.data.Dataset, batch_size: int = 256) -> np.ndarray:
    """float32 [N,F]: the encoder's representation (inference mode: no dropout, BatchNorm moving statistics) of
    every instance, row i = instance "index" i. `instances`: unbatched {"image": float32 [P,P,3], "index"}."""
    rows = {}
    for batch in instances.batch(batch_size):
        representation = tf.cast(encoder(batch["image"], training=False), tf.float32).numpy()
        rows.update(zip(batch["index"].numpy().tolist(), representation))
    return np.stack([rows[i] for i in range(len(rows))])


def merge_classes(state: ModelState, instances: tf.data.Dataset, k: int, seed: int) -> np.ndarray:
    """Clusters the seeds into k classes on the current encoder's representation (`merging.merge_labels`) and
    stores the seed -> class map in `state.relabel`. Returns int64 [N] labels.

    Softmax: class c's classifier column starts from the mean of its members' columns (`merging.merged_columns`;
    columns >= k are masked from now on); the optimizer's momentum for the classifier is left as it was (it
    decays within a few dozen steps). Memory bank: row c becomes the normalised mean of its members' current rows
    (`merging.merged_bank_rows`; rows >= k are inactive from now on) and NCE's Z is reset to "not estimated", so
    the first batch after the merge estimates it afresh over the k rows (Z sums exp(w . v / tau) over the rows in
    use: K terms now, not N). The projection head is not touched."""
    labels = merging.merge_labels(seed_codes(state.encoder, instances), k, seed=seed)
    state.relabel.assign(labels)
    if state.bank is not None:
        state.bank.bank.assign(merging.merged_bank_rows(state.bank().numpy(), labels))
        if state.objective.estimates_z:
            state.z.assign(-1.0)
        return labels
    for variable in state.head.trainable_variables:  # the SurrogateClassifier's kernel [F,N] and bias [N]
        variable.assign(merging.merged_columns(variable.numpy(), labels))
    return labels


def encoder_bank_rows(state: ModelState, instances: tf.data.Dataset, batch_size: int = 256,
                      progress: bool = False) -> np.ndarray:
    """Bank rows float32 [N,D] from the current encoder: row i = normalise(head(encoder(image of index i))).

    The forward pass runs in training mode, like the training step that produces v (BatchNorm on batch
    statistics); the encoder's and head's non-trainable variables (BatchNorm moving statistics) are put back
    afterwards, so only the bank changes. `instances`: unbatched {"image": float32 [P,P,3], "index": int64},
    every bank row exactly once.
    """
    frozen = state.encoder.non_trainable_variables + state.head.non_trainable_variables
    saved = [variable.numpy() for variable in frozen]
    rows = np.zeros((state.bank.num_instances, state.bank.dim), np.float32)
    filled = np.zeros(state.bank.num_instances, bool)
    batches = tqdm(instances.batch(batch_size), total=-(-len(rows) // batch_size), disable=not progress,
                   desc="memory bank from the encoder", unit="batch", dynamic_ncols=True)
    try:
        for batch in batches:
            index = batch["index"].numpy()
            if index.min() < 0 or index.max() >= len(rows):
                raise ValueError(f"instance indices must lie in [0, {len(rows)}), got {index.min()}..{index.max()}")
            v = state.head(state.encoder(batch["image"], training=True), training=True)
            rows[index] = tf.math.l2_normalize(tf.cast(v, tf.float32), axis=-1).numpy()
            filled[index] = True
    finally:  # also when a bad index stops the pass part-way
        for variable, value in zip(frozen, saved):
            variable.assign(value)
    if not filled.all():
        raise ValueError(f"{np.count_nonzero(~filled)} of {len(rows)} memory-bank rows have no instance image")
    return rows


def _decay_loss(state: ModelState, weight_decay: float) -> tf.Tensor:
    """Caffe-style L2 term weight_decay * sum_l mult_l * 0.5 * ||w_l||^2 over encoder and head."""
    if weight_decay == 0:
        return tf.constant(0.0)
    return models.weight_decay_loss([state.encoder, state.head], weight_decay)


def _images(state: ModelState, batch: dict) -> tf.Tensor:
    if "aug_seed" in batch:  # augmentation on the device: the (sampler and) chain run inside the step
        return state.device_augment(batch)
    return batch["image"]


def _all_finite(tensors) -> tf.Tensor:
    """True when no element of any tensor is NaN or Inf (bool scalar)."""
    return tf.reduce_all(tf.stack([tf.reduce_all(tf.math.is_finite(t)) for t in tensors]))


def make_train_step(config: TrainConfig, strategy: tf.distribute.Strategy, state: ModelState):
    """Returns a tf.function `train_steps(distributed_iterator, num_steps) -> dict` that runs up to `num_steps`
    (int32 scalar tensor) training steps in one call.

    It stops early, right after the first step whose summed loss or updated weights hold a NaN or Inf (checked in
    the graph after every update, so such weights are never taken for good ones). Returns "loss" (the last
    step's cross-replica loss), "z" (NCE's Z after it), "steps" (steps run, int32) and "finite" (False when it
    stopped on a non-finite loss or weight) and "proximal" (the last step's proximal term, cross-replica sum;
    "loss" includes it and weight decay). With `config.jit_compile` each replica's forward and backward pass
    is XLA-compiled; the input, device-side augmentation (ImageProjectiveTransformV3 has no CPU XLA kernel), the
    optimizer update (it all-reduces across replicas) and the bank/Z updates run outside XLA.
    """
    num_replicas = strategy.num_replicas_in_sync
    variables = state.encoder.trainable_variables + state.head.trainable_variables
    loss_scaled = isinstance(state.optimizer, keras.optimizers.LossScaleOptimizer)

    @tf.function(jit_compile=config.jit_compile)
    def forward_backward(images, labels, noise_seed, num_classes):
        with tf.GradientTape() as tape:
            outputs = state.head(state.encoder(images, training=True), training=True)
            # After a merge only num_classes classifier columns / bank rows are in use (the objective masks or
            # skips the others); without --merge_to all of them.
            num_active = num_classes if state.relabel is not None else None
            loss, z_batch = state.objective.loss(outputs, labels, state.bank, state.z, noise_seed, num_active)
            proximal = tf.constant(0.0)
            if config.proximal_lambda:  # v_i^(t-1): the bank row before this step's update (read in place)
                proximal = losses.proximal_loss(outputs, state.bank.variable, labels, config.proximal_lambda)
            scaled = (loss + proximal + _decay_loss(state, config.weight_decay)) / num_replicas
            differentiated = state.optimizer.scale_loss(scaled) if loss_scaled else scaled
        return scaled, z_batch, proximal / num_replicas, outputs, tape.gradient(differentiated, variables)

    def replica_step(batch):
        ctx = tf.distribute.get_replica_context()
        labels = tf.cast(batch["label"], tf.int64)
        num_classes = tf.constant(0, tf.int64)
        if state.relabel is not None:  # seed id -> merged class (the identity until --merge_classes_at)
            labels = tf.gather(state.relabel, labels)
            num_classes = tf.reduce_max(state.relabel) + 1
        noise_seed = tf.stack([tf.cast(config.seed, tf.int64),
                               state.optimizer.iterations * num_replicas + tf.cast(ctx.replica_id_in_sync_group,
                                                                                   tf.int64)])
        scaled, z_batch, proximal, outputs, grads = forward_backward(_images(state, batch), labels, noise_seed,
                                                                         num_classes)
        state.optimizer.apply_gradients(zip(grads, variables))
        if state.bank is not None:  # row relabel[seed] after a merge; a class's codes in the batch are averaged
            state.bank.gather_and_update(labels, tf.stop_gradient(outputs))
        if state.objective.estimates_z:
            z_mean = ctx.all_reduce(tf.distribute.ReduceOp.MEAN, z_batch)
            state.z.assign(losses.update_z(state.z, z_mean, config.nce_z_momentum, state.z <= 0))
        bad_weights = 1.0 - tf.cast(_all_finite([tf.convert_to_tensor(v) for v in variables]), tf.float32)
        return {"loss": scaled, "z": state.z.read_value(), "bad_weights": bad_weights, "proximal": proximal}

    def one_step(distributed_batch):
        per_replica = strategy.run(replica_step, args=(distributed_batch,))
        loss = strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica["loss"], axis=None)
        bad_weights = strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica["bad_weights"], axis=None)
        return (loss, strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica["z"], axis=None),
                tf.logical_and(tf.math.is_finite(loss), tf.equal(bad_weights, 0.0)),
                strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica["proximal"], axis=None))

    @tf.function
    def train_steps(iterator, num_steps):
        loss, z, proximal = tf.constant(0.0), tf.constant(0.0), tf.constant(0.0)
        finite, done = tf.constant(True), tf.constant(0)
        while tf.logical_and(finite, done < num_steps):
            loss, z, finite, proximal = one_step(next(iterator))
            done += 1
        return {"loss": loss, "z": z, "steps": done, "finite": finite, "proximal": proximal}

    return train_steps
