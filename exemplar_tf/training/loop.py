"""The training loop: data -> model state -> distributed steps, with checkpoints, TensorBoard and export.

Re-running with the same run directory resumes from the newest checkpoint. A NaN/Inf loss stops the run
before anything is saved, so the last good checkpoint is kept.
"""
from __future__ import annotations

import dataclasses
import math
import os
import shutil
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging
from tqdm import tqdm

from exemplar_tf import export, knn
from exemplar_tf.training import distribute, inputs, summaries
from exemplar_tf.training.config import TrainConfig, validate
from exemplar_tf.training.step import ModelState, build_state, encoder_bank_rows, make_train_step


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf."""


@dataclasses.dataclass
class RunResult:
    step: int
    loss: float
    export_dir: str | None
    log_dir: str
    checkpoint_dir: str


def _checkpoint_dir(config: TrainConfig, strategy) -> str:
    """Chief writes the real checkpoints; other workers write throw-away copies (MultiWorker requires all
    workers to save)."""
    base = os.path.join(config.run_dir, "checkpoints")
    if distribute.is_chief(strategy):
        return base
    return os.path.join(config.run_dir, f"tmp_worker_{strategy.cluster_resolver.task_id}")


@dataclasses.dataclass
class KnnReading:
    top1: float
    codes: np.ndarray  # [n,D] test codes (for the projector)
    test: summaries.LabelledImages  # the n test images, labels and class names
    health: dict[str, float]  # summaries.representation_health on the test images


def _knn_monitor(config: TrainConfig, input_size: int):
    """Returns `read(state) -> KnnReading` over the labelled kNN source, or None when no source is given."""
    if not config.knn_source:
        return None
    train = summaries.labelled_images(config.knn_source, config.knn_train_split, input_size,
                                      config.knn_max_examples, config.data_dir)
    test = summaries.labelled_images(config.knn_source, config.knn_split, input_size,
                                     config.knn_max_examples, config.data_dir)
    num_classes = int(max(train[1].max(), test[1].max())) + 1

    def read(state: ModelState) -> KnnReading:
        head = state.head if state.bank is not None else None
        train_codes, _ = summaries.embed(state.encoder, head, train[0])
        test_codes, test_representations = summaries.embed(state.encoder, head, test[0])
        accuracy = knn.knn_accuracy(train_codes, train[1], test_codes, test[1], num_classes=num_classes)
        health = summaries.representation_health(test_representations, test_codes)
        return KnnReading(accuracy["top1"], test_codes, test, health)

    return read


def _export(config: TrainConfig, state: ModelState, data: inputs.TrainingData, name: str) -> str:
    head = state.head if state.bank is not None else None
    percentiles = export.measure_percentiles(state.encoder, data.eval_images)
    return export.export_encoder(state.encoder, head, export_dir_base=config.export_base, name=name,
                                 percentiles=percentiles)


def _log_scalars(writer, step: int, values: dict[str, float]) -> None:
    with writer.as_default(step=step):
        for key, value in values.items():
            tf.summary.scalar(key, value)


def _log_knn(writer, step: int, reading: KnnReading) -> None:
    _log_scalars(writer, step, {"knn_top1": reading.top1, **reading.health})
    tqdm.write(f"step {step}: kNN top-1 {reading.top1:.4f} (active units "
               f"{reading.health['representation/active_units']:.2f}, mean code cosine "
               f"{reading.health['representation/code_mean_cosine']:.2f})")


def run(config: TrainConfig, strategy: tf.distribute.Strategy | None = None) -> RunResult:
    """Trains (or resumes) the run described by `config` and exports the encoder at the end."""
    config = validate(config)
    if config.allow_unnormalised_bank and config.uses_bank and not config.batch_norm:
        logging.warning("--objective=%s without --batch_norm on the %s Exemplar-CNN: expect the codes to collapse "
                        "(BUILD_NOTES.md)", config.objective, config.arch)
    strategy = strategy or distribute.make_strategy(config.strategy, tpu=config.tpu)
    chief = distribute.is_chief(strategy)
    os.makedirs(config.run_dir, exist_ok=True)
    log_dir = os.path.join(config.run_dir, "tensorboard")

    keras.utils.set_random_seed(config.seed)  # initial weights and dropout masks follow --seed
    data = inputs.training_data(config)
    with strategy.scope():
        state = build_state(config, data.num_instances, data.mean_rgb, data.chain)
    checkpoint_dir = _checkpoint_dir(config, strategy)
    manager = tf.train.CheckpointManager(state.checkpoint(), checkpoint_dir, max_to_keep=config.keep_checkpoints)
    if manager.latest_checkpoint:
        state.checkpoint().restore(manager.latest_checkpoint).assert_existing_objects_matched()
        logging.info("Resumed from %s (step %d)", manager.latest_checkpoint, state.step)
        print(f"Resuming {config.run_dir} from step {state.step}/{config.steps}")
    elif chief:
        random_export = _export(config, state, data, f"{config.name}_random")
        print(f"Exported the randomly initialised encoder (baseline) to {random_export}")
    if manager.latest_checkpoint is None and config.bank_init == "features":
        started = time.perf_counter()
        state.bank.bank.assign(encoder_bank_rows(state, data.instances(), progress=config.progress))
        print(f"Memory bank: {state.bank.num_instances} rows from the initial encoder's codes "
              f"({time.perf_counter() - started:.0f} s)")

    writer = tf.summary.create_file_writer(log_dir) if chief else tf.summary.create_noop_writer()
    knn_reading = _knn_monitor(config, config.input_size) if chief else None
    if state.step == 0:
        with writer.as_default(step=0):
            tf.summary.image("surrogate_samples", summaries.image_grid(data.preview_images), step=0)
        summaries.write_config(writer, config)
        if knn_reading:  # the random-initialisation point of the kNN curve
            _log_knn(writer, 0, knn_reading(state))

    train_step = make_train_step(config, strategy, state)
    iterator = iter(strategy.distribute_datasets_from_function(data.dataset_fn))
    progress = tqdm(total=config.steps, initial=state.step, disable=not (config.progress and chief),
                    desc=config.name, unit="step", dynamic_ncols=True)
    loss = float("nan")
    window_start, window_steps = time.perf_counter(), 0
    while state.step < config.steps:
        out = train_step(next(iterator))
        loss = float(out["loss"])
        step = state.step
        if not math.isfinite(loss):
            progress.close()
            raise TrainingDiverged(
                f"loss became {loss} at step {step}; stopped without saving. The last good checkpoint "
                f"({manager.latest_checkpoint or 'none yet'}) is kept. Try a lower --lr or a higher --tau.")
        window_steps += 1
        progress.update(1)
        progress.set_postfix(loss=f"{loss:.4f}")
        if step % config.log_every == 0 or step == config.steps:
            elapsed = time.perf_counter() - window_start
            scalars = {
                "loss": loss,
                "learning_rate": float(state.optimizer.learning_rate),
                "examples_per_second": window_steps * config.batch_size / max(elapsed, 1e-9),
            }
            if config.objective == "nce":
                scalars["nce_z"] = float(out["z"])
            if state.bank is not None:
                scalars.update(summaries.bank_statistics(state.bank(), seed=step))
            _log_scalars(writer, step, scalars)
            window_start, window_steps = time.perf_counter(), 0
        if knn_reading and config.knn_every and step % config.knn_every == 0 and step < config.steps:
            _log_knn(writer, step, knn_reading(state))
        if step % config.checkpoint_every == 0 and step < config.steps:
            manager.save(checkpoint_number=step)
    progress.close()

    if manager.latest_checkpoint is None or not manager.latest_checkpoint.endswith(f"-{state.step}"):
        manager.save(checkpoint_number=state.step)
    if not chief:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
        return RunResult(state.step, loss, None, log_dir, checkpoint_dir)

    if knn_reading:
        reading = knn_reading(state)
        _log_knn(writer, state.step, reading)
        summaries.write_projector(log_dir, "knn_test_codes", reading.codes, reading.test)
    elif state.bank is not None:
        summaries.write_projector(log_dir, "bank_rows", state.bank()[:2000].numpy())
    writer.flush()
    export_dir = _export(config, state, data, config.name)
    return RunResult(state.step, loss, export_dir, log_dir, checkpoint_dir)
