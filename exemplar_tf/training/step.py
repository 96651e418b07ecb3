"""The model state and the generic distributed training step: forward -> objective.loss -> gradients -> apply ->
objective.update. Everything specific to a method (bank, Z, proximal term, key encoder) lives in its objective.

Gradients: each replica's loss is divided by the number of replicas, because the Keras optimizer all-reduces
(sums) gradients across replicas. The objective's update gathers what it writes from every replica and applies
the same update everywhere (objectives/bank.py), so mirrored state stays bitwise equal.
"""
from __future__ import annotations

import dataclasses
import keras
import numpy as np
import tensorflow as tf

from exemplar_tf import models, objectives
from exemplar_tf.data import merging
from exemplar_tf.objectives import Objective
from exemplar_tf.optim.schedules import cosine_decay, step_decay
from exemplar_tf.training.config import TrainConfig
from exemplar_tf.training.views import Views, at_side, one_host_view


@dataclasses.dataclass
class ModelState:
    """Everything that is trained or checkpointed (all built inside the strategy scope)."""

    encoder: keras.Model
    objective: Objective  # head(s) and state of the method (built)
    optimizer: keras.optimizers.Optimizer
    views: Views  # the input contract: how a batch becomes the objective's views (host or device augmentation)
    input_position: tf.Variable  # int64: steps the input has fed; a pipeline feeding r replicas has delivered
    #                              r per-replica batches a step (a resumed run starts after them)

    @property
    def trainable_variables(self) -> list:
        return self.encoder.trainable_variables + [v for layer in self.objective.trainable_layers
                                                   for v in layer.trainable_variables]

    def resume_state(self) -> tf.train.Checkpoint:
        """What an exact resume needs beyond the model: the input position and the state of every Keras random
        seed generator (dropout masks), which Keras layers do not put into a tf.train.Checkpoint themselves."""
        layers = [self.encoder] + [part for part in self.objective.checkpoint_parts().values()
                                   if isinstance(part, keras.layers.Layer)]
        return tf.train.Checkpoint(input_batches=self.input_position, **models.seed_generator_states(layers))

    def checkpoint(self, with_resume_state: bool = True) -> tf.train.Checkpoint:
        """The run's checkpoint; `with_resume_state=False` reads checkpoints written before it held
        `resume_state`."""
        resume = {"resume": self.resume_state()} if with_resume_state else {}
        return tf.train.Checkpoint(encoder=self.encoder, optimizer=self.optimizer, **self.objective.checkpoint_parts(),
                                   **resume)

    @property
    def step(self) -> int:
        return int(self.optimizer.iterations.numpy())


def objective_of(config: TrainConfig) -> Objective:
    """The run's objective with its settings from the config (not built)."""
    return objectives.make(config.objective, objectives.Settings(
        embedding_dim=config.embedding_dim, head_hidden_dim=config.head_hidden_dim,
        tau=config.tau, nce_m=config.nce_m, nce_noise=config.nce_noise,
        nce_z_momentum=config.nce_z_momentum, bank_momentum=config.bank_momentum, bank_init=config.bank_init,
        bank_sharding=config.bank_sharding,
        proximal_lambda=config.proximal_lambda, momentum_encoder=config.momentum_encoder, bn_groups=config.bn_groups,
        merges_classes=bool(config.merge_to), neighbours=config.neighbours,
        neighbours_from_step=config.neighbours_from_step, seed=config.seed))


def build_state(config: TrainConfig, num_instances: int, mean_rgb: np.ndarray, views: Views = one_host_view,
                objective: Objective | None = None) -> ModelState:
    """Builds encoder, objective (head and state) and optimizer (with its slots). Call inside `strategy.scope()`.
    `views`: the data's input contract (`inputs.TrainingData.views`); `objective`: `objective_of(config)`."""

    def new_encoder():
        return models.build_encoder(config.arch, input_size=config.input_size, mean_rgb=mean_rgb,
                                    dropout=config.dropout, batch_norm=config.batch_norm,
                                    resnet_stem=config.resnet_stem, resnet_width=config.resnet_width,
                                    precision=config.precision)

    encoder = new_encoder()
    objective = objective or objective_of(config)
    objective.build(encoder, num_instances, new_encoder)
    position = tf.Variable(0, dtype=tf.int64, trainable=False, name="input_batches",
                           aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    state = ModelState(encoder, objective, None, views, position)
    state.optimizer = build_optimizer(config, state.trainable_variables)
    return state


def build_optimizer(config: TrainConfig, variables: list) -> keras.optimizers.Optimizer:
    """SGD with momentum on the learning-rate schedule over `config.steps`, built (its slots made) for `variables`;
    with loss scaling for mixed_float16. Call inside `strategy.scope()`."""
    schedule = (cosine_decay(config.lr, config.steps, config.lr_warmup_steps) if config.lr_schedule == "cosine"
                else step_decay(config.lr, config.steps, config.lr_decay_at, config.lr_decay_factor))
    optimizer = keras.optimizers.SGD(schedule, momentum=config.momentum)
    if models.needs_loss_scaling(config.precision):
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)  # skips (and does not count) non-finite steps
    optimizer.build(variables)
    return optimizer


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
    hands the seed -> class map to the objective (`Objective.merge_classes`). Returns int64 [N] labels."""
    labels = merging.merge_labels(seed_codes(state.encoder, instances), k, seed=seed)
    state.objective.merge_classes(labels)
    return labels


def _all_finite(tensors) -> tf.Tensor:
    """True when no element of any tensor is NaN or Inf (bool scalar)."""
    return tf.reduce_all(tf.stack([tf.reduce_all(tf.math.is_finite(t)) for t in tensors]))


def _forward_backward(config: TrainConfig, state: ModelState, num_replicas: int):
    """tf.function (XLA with --jit_compile) (views, labels, noise_seed) -> (scaled loss, objective.Forward,
    gradients): the replica's loss plus weight decay, divided by the replica count. A plain function when the
    objective's loss synchronizes the replicas (a sharded bank's all-reduces): a merge call cannot run in a
    tf.function nested in the replica function."""
    variables = state.trainable_variables
    decayed = [state.encoder] + state.objective.trainable_layers
    loss_scaled = isinstance(state.optimizer, keras.optimizers.LossScaleOptimizer)

    def forward_backward(views, labels, noise_seed):
        with tf.GradientTape() as tape:
            loss, forward = state.objective.loss(state.encoder, views, labels, noise_seed)
            if config.weight_decay:  # Caffe-style L2 over encoder and heads
                loss += models.weight_decay_loss(decayed, config.weight_decay)
            scaled = loss / num_replicas
            differentiated = state.optimizer.scale_loss(scaled) if loss_scaled else scaled
        return scaled, forward, tape.gradient(differentiated, variables)

    if state.objective.synchronizes_in_loss:
        return forward_backward
    return tf.function(forward_backward, jit_compile=config.jit_compile)


def make_train_step(config: TrainConfig, strategy: tf.distribute.Strategy, state: ModelState,
                    side: int | None = None):
    """Returns a tf.function `train_steps(distributed_iterator, num_steps) -> dict` that runs up to `num_steps`
    (int32 scalar tensor) training steps in one call, on views of `side` pixels (default: the full
    `config.input_size`; a smaller side downsamples every view in the step, `views.at_side`).

    It stops early, right after the first step whose summed loss or updated weights hold a NaN or Inf (checked in
    the graph after every update, so such weights are never taken for good ones). Returns "loss" (the last
    step's cross-replica loss, weight decay included), "steps" (steps run, int32), "finite" (False when it
    stopped on a non-finite loss or weight) and the objective's `reports` (the last step's, replica mean).
    With `config.jit_compile` each replica's forward and backward pass is XLA-compiled; the input, device-side
    augmentation (ImageProjectiveTransformV3 has no CPU XLA kernel), the optimizer update (it all-reduces across
    replicas) and the objective's update run outside XLA.
    """
    num_replicas = strategy.num_replicas_in_sync
    variables = state.trainable_variables
    forward_backward = _forward_backward(config, state, num_replicas)
    reports = state.objective.reports

    def replica_step(batch):
        replica = tf.cast(tf.distribute.get_replica_context().replica_id_in_sync_group, tf.int64)
        noise_seed = tf.stack([tf.cast(config.seed, tf.int64), state.optimizer.iterations * num_replicas + replica])
        views = state.views(batch) if side in (None, config.input_size) else at_side(state.views(batch), side)
        scaled, forward, grads = forward_backward(views, batch["label"], noise_seed)
        state.optimizer.apply_gradients(zip(grads, variables))
        reported = state.objective.update(forward)
        bad_weights = 1.0 - tf.cast(_all_finite([tf.convert_to_tensor(v) for v in variables]), tf.float32)
        return {"loss": scaled, "bad_weights": bad_weights, **reported}

    def one_step(distributed_batch):
        per_replica = strategy.run(replica_step, args=(distributed_batch,))
        state.input_position.assign_add(1)  # counted even when loss scaling skips the update: the batch is used
        loss = strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica["loss"], axis=None)
        bad_weights = strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica["bad_weights"], axis=None)
        finite = tf.logical_and(tf.math.is_finite(loss), tf.equal(bad_weights, 0.0))
        return loss, finite, {name: strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica[name], axis=None)
                              for name in reports}

    @tf.function
    def train_steps(iterator, num_steps):
        loss, finite, done = tf.constant(0.0), tf.constant(True), tf.constant(0)
        reported = {name: tf.constant(0.0) for name in reports}
        while tf.logical_and(finite, done < num_steps):
            loss, finite, reported = one_step(next(iterator))
            done += 1
        return {"loss": loss, "steps": done, "finite": finite, **reported}

    return train_steps
