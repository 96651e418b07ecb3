"""The training loop: data -> model state -> distributed steps, with checkpoints, TensorBoard and export.

Re-running with the same run directory resumes from the newest checkpoint. A NaN/Inf loss, or a NaN/Inf weight
after an update, stops the run before anything is saved, so the last good checkpoint is kept. The steps run
--steps_per_call at a time in one tf.function; the host reads values (loss, learning rate, Z) only at log
points and the "finite" flag once per call.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import shutil
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging
from tqdm import tqdm

from exemplar_tf import models
from exemplar_tf.evaluation import knn
from exemplar_tf.io.atomic import atomic_write
from exemplar_tf.serving import runs
from exemplar_tf.training import distribute, inputs, rundir, summaries
from exemplar_tf.training.config import TrainConfig, validate
from exemplar_tf.training.step import ModelState, build_state, encoder_bank_rows, make_train_step, merge_classes


SKIPPED_IMAGES_FILE = "skipped_images.txt"


class TrainingDiverged(RuntimeError):
    """The loss or the weights became NaN or Inf."""


class WriteFailed(RuntimeError):
    """A checkpoint or export could not be written (disk full, permissions); the previous checkpoint is kept."""


@dataclasses.dataclass
class RunResult:
    step: int
    loss: float
    export_dir: str | None
    log_dir: str
    checkpoint_dir: str


def _checkpoint_dir(config: TrainConfig, strategy) -> str:
    """Chief writes the real checkpoints; other workers write throw-away copies (MultiWorker requires all
    workers to save). Every worker restores from the chief's (`_chief_checkpoint_dir`)."""
    if distribute.is_chief(strategy):
        return _chief_checkpoint_dir(config)
    return os.path.join(config.run_dir, f"tmp_worker_{strategy.cluster_resolver.task_id}")


def _chief_checkpoint_dir(config: TrainConfig) -> str:
    return os.path.join(config.run_dir, "checkpoints")


def _prepare_run_dir(config: TrainConfig, strategy, chief: bool) -> None:
    """Refuses a run directory made with other training settings (or moves it aside with --overwrite), then the
    chief records the resolved flags; every worker waits for that before reading the directory."""
    if chief:
        kept = rundir.check_reuse(config, config.overwrite)
        if kept:
            print(f"--overwrite: moved the earlier run to {kept}")
        rundir.write_flagfile(config)
    elif not config.overwrite:
        rundir.check_reuse(config, overwrite=False)
    distribute.barrier(strategy)


def _save(manager: tf.train.CheckpointManager, step: int) -> None:
    """manager.save, turning a failed write into WriteFailed (the previous checkpoint stays the latest)."""
    previous = manager.latest_checkpoint
    try:
        manager.save(checkpoint_number=step)
    except (OSError, tf.errors.OpError) as error:
        raise WriteFailed(f"could not write the step-{step} checkpoint to {manager.directory} ({error}); the "
                          f"previous checkpoint ({previous or 'none yet'}) is kept, rerun to resume from it") from None


@dataclasses.dataclass
class KnnReading:
    top1: float
    codes: np.ndarray  # [n,D] test codes (for the projector)
    test: summaries.LabelledImages  # the n test images, labels and class names
    health: dict[str, float]  # summaries.representation_health on the test images


def _knn_monitor(config: TrainConfig):
    """Returns `read(state) -> KnnReading` over the labelled kNN source (images at the training input size), or
    None when no source is given."""
    if not config.knn_source:
        return None
    train = summaries.labelled_images(config.knn_source, config.knn_train_split, config.input_size,
                                      config.knn_max_examples, config.data_dir)
    test = summaries.labelled_images(config.knn_source, config.knn_split, config.input_size,
                                     config.knn_max_examples, config.data_dir)
    num_classes = int(max(train[1].max(), test[1].max())) + 1

    def read(state: ModelState) -> KnnReading:
        encoder = models.float32_copy(state.encoder)
        train_codes, _ = summaries.embed(encoder, state.embedding_head, train[0])
        test_codes, test_representations = summaries.embed(encoder, state.embedding_head, test[0])
        accuracy = knn.knn_accuracy(train_codes, train[1], test_codes, test[1], num_classes=num_classes)
        health = summaries.representation_health(test_representations, test_codes)
        return KnnReading(accuracy["top1"], test_codes, test, health)

    return read


def _export(config: TrainConfig, state: ModelState, data: inputs.TrainingData, name: str) -> str:
    """Exports the float32 reading of the encoder (and the projection head), whatever the training precision."""
    return runs.export_training_run(config, models.float32_copy(state.encoder), state.embedding_head,
                                    data.eval_images, name=name, step=state.step)


def state_fingerprint(state: ModelState) -> str:
    """Bitwise state identity: "<all> (encoder weights, encoder statistics, head, optimizer, bank, z)", each a
    SHA-256 prefix of those variables' bytes in a fixed order."""
    parts = {"weights": state.encoder.trainable_variables, "statistics": state.encoder.non_trainable_variables,
             "head": state.head.variables, "optimizer": state.optimizer.variables,
             "bank": state.bank.variables if state.bank is not None else [], "z": [state.z]}
    digests = {}
    for name, variables in parts.items():
        digest = hashlib.sha256()
        for variable in variables:
            digest.update(np.ascontiguousarray(variable.numpy()).tobytes())
        digests[name] = digest.hexdigest()[:8]
    whole = hashlib.sha256("".join(digests.values()).encode()).hexdigest()[:16]
    return f"{whole} ({', '.join(f'{name} {value}' for name, value in digests.items())})"


def record_skipped(run_dir: str, skipped: tuple[tuple[str, str], ...]) -> str:
    """Writes `<run_dir>/skipped_images.txt`, one `<path>\t<reason>` line per image file --skip_bad_images left
    out (empty: none), and returns the line that tells the user."""
    path = os.path.join(run_dir, SKIPPED_IMAGES_FILE)
    atomic_write(path, "".join(f"{image_path}\t{reason}\n" for image_path, reason in skipped).encode())
    return f"Skipped {len(skipped)} unreadable or too-small image files" + (f", listed in {path}" if skipped else "")


def _log_scalars(writer, step: int, values: dict[str, float]) -> None:
    with writer.as_default(step=step):
        for key, value in values.items():
            tf.summary.scalar(key, value)


def _log_knn(writer, step: int, reading: KnnReading) -> None:
    _log_scalars(writer, step, {"knn_top1": reading.top1, **reading.health})
    tqdm.write(f"step {step}: kNN top-1 {reading.top1:.4f} (active units "
               f"{reading.health['representation/active_units']:.2f}, mean code cosine "
               f"{reading.health['representation/code_mean_cosine']:.2f})")


def steps_this_call(config: TrainConfig, step: int) -> int:
    """Steps for the next call from `step`: --steps_per_call, cut short at the next log, checkpoint or kNN step,
    --merge_classes_at (and the last step), so the loop stops exactly on each of them."""
    periods = [config.log_every, config.checkpoint_every] + ([config.knn_every] if config.knn_every else [])
    merge = [config.merge_classes_at] if config.merge_to and step < config.merge_classes_at else []
    next_event = min([config.steps] + merge + [(step // period + 1) * period for period in periods])
    return min(config.steps_per_call, next_event - step)


def _merge_if_due(config: TrainConfig, state: ModelState, data: inputs.TrainingData) -> None:
    """At --merge_classes_at (or on resuming past it a run that never merged): clusters the seeds into --merge_to
    classes (`step.merge_classes`). A merged run's checkpoints hold the relabelling, so it happens once."""
    if not config.merge_to or state.step < config.merge_classes_at or state.merged:
        return
    started = time.perf_counter()
    labels = merge_classes(state, data.instances(), config.merge_to, seed=config.seed)
    sizes = np.bincount(labels)
    tqdm.write(f"step {state.step}: merged the {len(labels)} seeds into {len(sizes)} classes (spherical k-means; "
               f"class sizes {sizes.min()}..{sizes.max()}, {time.perf_counter() - started:.0f} s)")


def run(config: TrainConfig, strategy: tf.distribute.Strategy | None = None) -> RunResult:
    """Trains (or resumes) the run described by `config` and exports the encoder at the end."""
    config = validate(config)
    if config.allow_unnormalised_bank and config.uses_bank and not config.batch_norm:
        logging.warning("--objective=%s without --batch_norm on the %s Exemplar-CNN: expect the codes to collapse "
                        "(BUILD_NOTES.md)", config.objective, config.arch)
    strategy = strategy or distribute.make_strategy(config.strategy, tpu=config.tpu)
    chief = distribute.is_chief(strategy)
    _prepare_run_dir(config, strategy, chief)
    log_dir = os.path.join(config.run_dir, "tensorboard")

    keras.utils.set_random_seed(config.seed)  # initial weights and dropout masks follow --seed
    data = inputs.training_data(config, chief=chief)
    if config.skip_bad_images and chief:
        print(record_skipped(config.run_dir, data.skipped))
    with strategy.scope():
        state = build_state(config, data.num_instances, data.mean_rgb, data.device_augment)
    checkpoint_dir = _checkpoint_dir(config, strategy)
    manager = tf.train.CheckpointManager(state.checkpoint(), checkpoint_dir, max_to_keep=config.keep_checkpoints)
    resume_from = tf.train.latest_checkpoint(_chief_checkpoint_dir(config))  # the same one on every worker
    if resume_from:
        state.checkpoint().restore(resume_from).assert_existing_objects_matched()
        logging.info("Resumed from %s (step %d)", resume_from, state.step)
        print(f"Resuming {config.run_dir} from step {state.step}/{config.steps}")
    elif chief:
        random_export = _export(config, state, data, f"{config.name}_random")
        print(f"Exported the randomly initialised encoder (baseline) to {random_export}")
    if resume_from is None and config.bank_init == "features":
        started = time.perf_counter()
        state.bank.bank.assign(encoder_bank_rows(state, data.instances(), progress=config.progress))
        print(f"Memory bank: {state.bank.num_instances} rows from the initial encoder's codes "
              f"({time.perf_counter() - started:.0f} s)")

    writer = tf.summary.create_file_writer(log_dir) if chief else tf.summary.create_noop_writer()
    knn_reading = _knn_monitor(config) if chief else None
    if state.step == 0:
        with writer.as_default(step=0):
            tf.summary.image("surrogate_samples", summaries.image_grid(data.preview_images), step=0)
        summaries.write_config(writer, config)
        if knn_reading:  # the random-initialisation point of the kNN curve
            _log_knn(writer, 0, knn_reading(state))

    train_steps = make_train_step(config, strategy, state)
    iterator = iter(strategy.distribute_datasets_from_function(data.dataset_fn))
    progress = tqdm(total=config.steps, initial=state.step, disable=not (config.progress and chief),
                    desc=config.name, unit="step", dynamic_ncols=True)
    loss = float("nan")
    window_start, window_steps = time.perf_counter(), 0
    step = state.step
    _merge_if_due(config, state, data)
    while step < config.steps:
        before = step
        out = train_steps(iterator, tf.constant(steps_this_call(config, before), tf.int32))
        step = state.step  # optimizer.iterations: mixed_float16's loss scaling does not count the steps it skips
        if not bool(out["finite"]):
            progress.close()
            loss = float(out["loss"])
            what = f"loss became {loss}" if not math.isfinite(loss) else "weights became NaN/Inf"
            raise TrainingDiverged(
                f"{what} at step {step}; stopped without saving. The last good checkpoint "
                f"({manager.latest_checkpoint or 'none yet'}) is kept. Try a lower --lr or a higher --tau.")
        window_steps += step - before
        progress.update(step - before)
        _merge_if_due(config, state, data)
        if step % config.log_every == 0 or step == config.steps:
            loss = float(out["loss"])
            progress.set_postfix(loss=f"{loss:.4f}")
            elapsed = time.perf_counter() - window_start
            scalars = {
                "loss": loss,
                "learning_rate": float(state.optimizer.learning_rate),
                "examples_per_second": window_steps * config.batch_size / max(elapsed, 1e-9),
            }
            if state.objective.estimates_z:
                scalars["nce_z"] = float(out["z"])
            if config.proximal_lambda:
                scalars["proximal_loss"] = float(out["proximal"])
            if state.bank is not None:
                scalars.update(summaries.bank_statistics(state.bank_rows_in_use(), seed=step))
            _log_scalars(writer, step, scalars)
            window_start, window_steps = time.perf_counter(), 0
        if knn_reading and config.knn_every and step % config.knn_every == 0 and step < config.steps:
            _log_knn(writer, step, knn_reading(state))
        if step % config.checkpoint_every == 0 and step < config.steps:
            _save(manager, step)
    progress.close()

    if manager.latest_checkpoint is None or not manager.latest_checkpoint.endswith(f"-{state.step}"):
        _save(manager, state.step)
    if config.strategy == "multi_worker":  # the workers' states must be bitwise equal (tests compare these)
        logging.info("worker state at step %d: fingerprint %s", state.step, state_fingerprint(state))
    if not chief:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
        return RunResult(state.step, loss, None, log_dir, checkpoint_dir)

    if knn_reading:
        reading = knn_reading(state)
        _log_knn(writer, state.step, reading)
        summaries.write_projector(log_dir, "knn_test_codes", reading.codes, reading.test)
    elif state.bank is not None:
        summaries.write_projector(log_dir, "bank_rows", state.bank_rows_in_use()[:2000].numpy())
    writer.flush()
    try:
        export_dir = _export(config, state, data, config.name)
    except (OSError, tf.errors.OpError) as error:
        raise WriteFailed(f"could not write the export under {config.export_base}/{config.name} ({error}); the "
                          f"final checkpoint {manager.latest_checkpoint} is kept: python -m exemplar_tf.export "
                          f"--run_dir={config.run_dir}") from None
    return RunResult(state.step, loss, export_dir, log_dir, checkpoint_dir)
