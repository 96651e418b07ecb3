"""The training loop: data -> model state -> distributed steps, with checkpoints, TensorBoard and exports.

Re-running with the same run directory resumes from the newest checkpoint. A NaN/Inf loss, or a NaN/Inf weight
after an update, stops the run before anything is saved, so the last good checkpoint is kept. The steps run
--steps_per_call at a time in one tf.function; the host reads values (loss, learning rate, the objective's
scalars) only at log points and the "finite" flag once per call. The loop knows no method: it calls the
objective's hooks (`start`, `scalars`, `merge_classes`) and the step's reported values. Every phase that takes
seconds (reading the data, building the state, the kNN monitor's images, the exports, the first call's compile, the
last kNN reading) prints one status line before it starts, with or without the progress bar. With
--train_minutes a fresh run fits --steps to the budget after its start-up and again from its own pace before the
first step that depends on the count (training/budget.py).

Exports are the caller's: `run(config, export=...)` gets the function that writes one (`serving.runs.train`
passes the SavedModel writer), so training imports nothing from the serving layer above it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import shutil
import time
from typing import Callable

import keras
import numpy as np
import tensorflow as tf
from absl import logging
from tqdm import tqdm

from exemplar_tf import models
from exemplar_tf.data import sources
from exemplar_tf.io.atomic import atomic_write
from exemplar_tf.io.lock import DirectoryLock
from exemplar_tf.metrics.knn import knn_accuracy
from exemplar_tf.errors import InputError
from exemplar_tf.training import budget, checkpoints, distribute, inputs, rundir, summaries
from exemplar_tf.training.config import TrainConfig, check_instances, validate
from exemplar_tf.training.step import (ModelState, build_optimizer, build_state, make_train_step, merge_classes,
                                       objective_of)
from exemplar_tf.io.status import status


# export(config, float32 encoder, embedding head or None, uint8 percentile images, *, name, step) -> export path
# (`serving.runs.export_training_run`)
Exporter = Callable[..., str]


class TrainingDiverged(RuntimeError):
    """The loss or the weights became NaN or Inf."""


class WriteFailed(RuntimeError):
    """A checkpoint or export could not be written (disk full, permissions); the previous checkpoint is kept."""


class WorkerLost(RuntimeError):
    """A multi-worker run lost a worker: TensorFlow aborted the collectives (UnavailableError when the peer's
    connection closed or it stopped sending heartbeats to the coordination service; DeadlineExceededError when
    the coordination service's leader, the chief, stopped answering heartbeats)."""


def _abort_reason(message: str) -> str:
    """The reason in a collective abort's error message ("Collective ops is aborted by: <reason>", possibly
    nested), else its first line; at most 200 characters."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    line = next((line for line in lines if "aborted by:" in line), lines[0] if lines else "no message")
    return line.rsplit("aborted by:", 1)[-1].strip()[:200]


@dataclasses.dataclass
class RunResult:
    step: int
    loss: float  # the last logged loss (NaN when no step ran)
    export_dir: str | None
    log_dir: str
    checkpoint_dir: str
    steps_run: int = 0  # steps this call trained (0: the run was already at --steps)


def _checkpoint_dir(config: TrainConfig, strategy) -> str:
    """Chief writes the real checkpoints; other workers write throw-away copies (MultiWorker requires all
    workers to save). Every worker restores from the chief's (`_chief_checkpoint_dir`)."""
    if distribute.is_chief(strategy):
        return _chief_checkpoint_dir(config)
    return os.path.join(config.run_dir, f"tmp_worker_{strategy.cluster_resolver.task_id}")


def _chief_checkpoint_dir(config: TrainConfig) -> str:
    return os.path.join(config.run_dir, "checkpoints")


def _prepare_run_dir(config: TrainConfig, strategy, chief: bool) -> tuple[TrainConfig, DirectoryLock | None]:
    """The chief locks the run directory, refuses one made with other training settings (or moves it aside with
    --overwrite) and settles which checkpoint to resume from (moving unreadable ones aside); every worker waits
    for that before reading the directory. Returns the config to run (a budgeted run being resumed: with its
    recorded --steps, `rundir.with_recorded_steps`) and the chief's lock. Nothing is written before a refusal but
    the lock's holder file."""
    lock = None
    if chief:
        rundir.check_usable(config.run_dir)
        lock = DirectoryLock(config.run_dir)
        try:
            if not config.overwrite:
                resumed = rundir.has_checkpoint(config.run_dir)  # its --steps are final (fitted or given)
                config = validate(rundir.with_recorded_steps(config), steps_fitted=resumed)
            note = "" if config.overwrite else rundir.unbudgeted_resume_note(config)
            kept = rundir.check_reuse(config, config.overwrite)
            if note:  # the resume goes ahead
                print(note)
            if kept:
                print(f"--overwrite: moved the earlier run to {kept}")
                lock.release()
                lock = DirectoryLock(config.run_dir)
            checkpoints.resume_checkpoint(_chief_checkpoint_dir(config))
        except BaseException:
            lock.release()
            raise
    elif not config.overwrite:
        rundir.check_reuse(config, overwrite=False)
    distribute.barrier(strategy)
    return config, lock


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
    representation_top1: float | None = None  # with an MLP head: kNN top-1 of the representation below it


def _knn_monitor(config: TrainConfig):
    """Returns `read(state) -> KnnReading` over the labelled kNN source (images at the training input size), or
    None when no source is given."""
    if not config.knn_source:
        return None
    if problem := sources.same_images_problem(config.knn_source, config.knn_train_split, config.knn_source,
                                              config.knn_split):
        raise InputError(f"--knn_source: {problem}")
    train = summaries.labelled_images(config.knn_source, config.knn_train_split, config.input_size,
                                      config.knn_max_examples, config.data_dir)
    test = summaries.labelled_images(config.knn_source, config.knn_split, config.input_size,
                                     config.knn_max_examples, config.data_dir)
    num_classes = int(max(train[1].max(), test[1].max())) + 1

    def read(state: ModelState) -> KnnReading:
        return knn_reading(models.float32_copy(state.encoder), state.objective.embedding_head, train, test,
                           num_classes)

    return read


def knn_reading(encoder, head, train: summaries.LabelledImages, test: summaries.LabelledImages,
                num_classes: int) -> KnnReading:
    """The monitor's kNN of the test images against the training images, on the head's codes and, for an MLP
    head (`hidden_dim` > 0), also on the representation below it."""
    train_codes, train_representations = summaries.embed(encoder, head, train.images)
    test_codes, test_representations = summaries.embed(encoder, head, test.images)
    accuracy = knn_accuracy(train_codes, train.labels, test_codes, test.labels, num_classes=num_classes)
    health = summaries.representation_health(test_representations, test_codes)
    below_head = None
    if getattr(head, "hidden_dim", 0):  # an MLP head: the representation below it is the feature to watch
        below_head = knn_accuracy(train_representations, train.labels, test_representations, test.labels,
                                  num_classes=num_classes)["top1"]  # cosine: no normalising needed
    return KnnReading(accuracy["top1"], test_codes, test, health, below_head)


def state_fingerprint(state: ModelState) -> str:
    """Bitwise state identity: "<all> (encoder weights, encoder statistics, optimizer, the objective's parts)",
    each a SHA-256 prefix of those variables' bytes in a fixed order."""
    parts = {"weights": state.encoder.trainable_variables, "statistics": state.encoder.non_trainable_variables,
             "optimizer": state.optimizer.variables, **state.objective.fingerprint_parts()}
    digests = {}
    for name, variables in parts.items():
        digest = hashlib.sha256()
        for variable in variables:
            digest.update(np.ascontiguousarray(variable.numpy()).tobytes())
        digests[name] = digest.hexdigest()[:8]
    whole = hashlib.sha256("".join(digests.values()).encode()).hexdigest()[:16]
    return f"{whole} ({', '.join(f'{name} {value}' for name, value in digests.items())})"


def input_split_line(ctx: tf.distribute.InputContext, dataset: tf.data.Dataset, global_batch: int) -> str:
    """How one input pipeline (one per worker) splits the global batch: the batch size its dataset yields (the
    static leading dimension of its elements) and the replica count that global batch is spread over."""
    batch = tf.nest.flatten(dataset.element_spec)[0].shape[0]
    return (f"input pipeline {ctx.input_pipeline_id} of {ctx.num_input_pipelines}: per-replica batch {batch} "
            f"of the global {global_batch} over {ctx.num_replicas_in_sync} replicas")


def _say_worker_state(run: _Run) -> None:
    """Under --strategy=multi_worker, every worker prints its state fingerprint after each checkpoint save (and
    at the end), "worker state at step N: fingerprint ...": the bank, weights and optimizer parts must be equal
    on every worker (BatchNorm moving statistics follow each worker's own batches)."""
    if run.config.strategy == "multi_worker":
        tqdm.write(f"worker state at step {run.state.step}: fingerprint {state_fingerprint(run.state)}")


def record_skipped(run_dir: str, skipped: tuple[tuple[str, str], ...]) -> str:
    """Writes `<run_dir>/skipped_images.txt`, one `<path>\t<reason>` line per image file --skip_bad_images left
    out (empty: none), and returns the line that tells the user."""
    path = os.path.join(run_dir, rundir.SKIPPED_IMAGES_FILE)
    atomic_write(path, "".join(f"{image_path}\t{reason}\n" for image_path, reason in skipped).encode())
    return f"Skipped {len(skipped)} unreadable or too-small image files" + (f", listed in {path}" if skipped else "")



def _data_status(config: TrainConfig) -> str:
    """The line before the training data is read: the source, and the seed patches drawn (or read back) when
    --seed_sampling=fixed."""
    line = f"Reading --source={config.source}"
    if config.method == "exemplar" and config.seed_sampling == "fixed":
        seeds = os.path.join(config.run_dir, rundir.SEEDS_FILE)
        if os.path.exists(seeds):
            return f"{line} and the seed patches cached in {seeds} ..."
        return f"{line} and drawing {config.num_seeds} seed patches (cached in {seeds}) ..."
    return f"{line} ..."


def _build_status(config: TrainConfig, num_instances: int) -> str:
    """The line before the model state is built: the encoder, and the memory bank or classifier over the
    instances."""
    per_instance = (f"a memory bank of {num_instances} x {config.embedding_dim}" if config.uses_bank
                    else f"a {num_instances}-way classifier")
    return f"Building the {config.arch} encoder and {per_instance} ..."


def _log_scalars(writer, step: int, values: dict[str, float]) -> None:
    with writer.as_default(step=step):
        for key, value in values.items():
            tf.summary.scalar(key, value)


def _log_knn(writer, step: int, reading: KnnReading) -> None:
    below_head = reading.representation_top1
    _log_scalars(writer, step, {"knn_top1": reading.top1, **reading.health,
                                **({"knn_top1_representation": below_head} if below_head is not None else {})})
    representation = f", representation {below_head:.4f}" if below_head is not None else ""
    tqdm.write(f"step {step}: kNN top-1 {reading.top1:.4f}{representation} (active units "
               f"{reading.health['representation/active_units']:.2f}, mean code cosine "
               f"{reading.health['representation/code_mean_cosine']:.2f})")


def steps_this_call(config: TrainConfig, step: int, refit_at: int | None = None) -> int:
    """Steps for the next call from `step`: --steps_per_call, cut short at the next log, checkpoint or kNN step,
    --merge_classes_at, each switch at a fraction of --steps (`TrainConfig.step_switches`), a budget's `refit_at`
    (and the last step), so the loop stops exactly on each."""
    periods = [config.log_every, config.checkpoint_every] + ([config.knn_every] if config.knn_every else [])
    switches = [switch for _, _, _, switch in config.step_switches]
    merge = [config.merge_classes_at] if config.merge_to else []
    refit = [refit_at] if refit_at is not None else []
    next_event = min([config.steps] + [event for event in merge + switches + refit if event > step]
                     + [(step // period + 1) * period for period in periods])
    return min(config.steps_per_call, next_event - step)


def restore(state: ModelState, path: str) -> None:
    """Restores checkpoint `path` into `state`. A checkpoint written before it held the resume state (input
    position, random seed generators) resumes the input at the restored step (its run fed one batch per step)."""
    has_resume_state = checkpoints.holds_part(path, "resume")
    state.checkpoint(with_resume_state=has_resume_state).restore(path).assert_existing_objects_matched()
    if not has_resume_state:
        state.input_position.assign(state.optimizer.iterations)


@dataclasses.dataclass
class _Run:
    """One training run as the loop drives it."""

    config: TrainConfig
    strategy: tf.distribute.Strategy
    chief: bool
    data: inputs.TrainingData
    state: ModelState
    manager: tf.train.CheckpointManager
    writer: object  # tf.summary writer (a no-op one on non-chief workers)
    knn_reading: Callable[[ModelState], KnnReading] | None
    export: Exporter
    lock: DirectoryLock | None  # the chief's lock on the run directory, held until the run ends
    refit: budget.Refit | None = None  # --train_minutes' second fit, when this command started the run

    def export_encoder(self, name: str, what: str) -> str:
        """Exports the float32 reading of the encoder (and its embedding head), whatever the training precision,
        after the status line "Exporting <what> to <export_base>/<name>/ ..."; a failed write (disk full,
        permissions) becomes WriteFailed, the checkpoints kept."""
        status(f"Exporting {what} to {os.path.join(self.config.export_base, name, '')} ...")
        try:
            return self.export(self.config, models.float32_copy(self.state.encoder),
                               self.state.objective.embedding_head, self.data.eval_images, name=name,
                               step=self.state.step)
        except (OSError, tf.errors.OpError) as error:
            raise WriteFailed(f"could not write the export under {self.config.export_base}/{name} "
                              f"({' '.join(str(error).split())[:200]}); the checkpoints are kept: python -m "
                              f"exemplar_tf.export --run_dir={self.config.run_dir}") from None

    def merge_if_due(self) -> None:
        """At --merge_classes_at (or on resuming past it a run that never merged): clusters the seeds into
        --merge_to classes (`step.merge_classes`). A merged run's checkpoints hold the relabelling: once only."""
        config, state = self.config, self.state
        if not config.merge_to or state.step < config.merge_classes_at or state.objective.merged:
            return
        started = time.perf_counter()
        labels = merge_classes(state, self.data.instances(), config.merge_to, seed=config.seed)
        sizes = np.bincount(labels)
        tqdm.write(f"step {state.step}: merged the {len(labels)} seeds into {len(sizes)} classes (spherical k-means; "
                   f"class sizes {sizes.min()}..{sizes.max()}, {time.perf_counter() - started:.0f} s)")

    def log(self, step: int, out: dict, loss: float, examples_per_second: float) -> None:
        scalars = {"loss": loss, "learning_rate": float(self.state.optimizer.learning_rate),
                   "examples_per_second": examples_per_second,
                   **{name: float(out[name]) for name in self.state.objective.reports},
                   **self.state.objective.scalars(step)}
        if self.config.low_res_size:  # the side of the views the last step trained on
            scalars["input_side"] = self.config.input_size_at(step - 1)
        _log_scalars(self.writer, step, scalars)


def _start(config: TrainConfig, strategy: tf.distribute.Strategy, export: Exporter, started: float) -> _Run:
    """Prepares the run directory, data and state; restores the newest checkpoint, or on a fresh run exports the
    random baseline, lets the objective initialise its state, writes the step-0 summaries and, with
    --train_minutes, fixes --steps to the budget (`_fit_to_budget`). `started`: time.perf_counter() when the
    command's run began."""
    chief = distribute.is_chief(strategy)
    config, lock = _prepare_run_dir(config, strategy, chief)
    try:
        return _start_locked(config, strategy, export, chief, lock, started)
    except BaseException:
        if lock:
            lock.release()
        raise


def _checkpoint_manager(config: TrainConfig, strategy, state: ModelState) -> tf.train.CheckpointManager:
    return tf.train.CheckpointManager(state.checkpoint(), _checkpoint_dir(config, strategy),
                                      max_to_keep=config.keep_checkpoints)


def _start_locked(config: TrainConfig, strategy, export: Exporter, chief: bool, lock, started: float) -> _Run:
    keras.utils.set_random_seed(config.seed)  # initial weights and dropout masks follow --seed
    objective = objective_of(config)
    status(_data_status(config))
    data = inputs.training_data(config, chief=chief, views=objective.views)
    check_instances(config, data.num_instances)
    if chief:  # the data is readable: the settings are the run directory's from now on
        rundir.write_flagfile(config)
    if config.skip_bad_images and chief:
        print(record_skipped(config.run_dir, data.skipped))
    status(_build_status(config, data.num_instances))
    with strategy.scope():
        state = build_state(config, data.num_instances, data.mean_rgb, data.views, objective)
    manager = _checkpoint_manager(config, strategy, state)
    writer = tf.summary.create_file_writer(os.path.join(config.run_dir, "tensorboard")) if chief \
        else tf.summary.create_noop_writer()
    if chief and config.knn_source:
        status(f"Reading the kNN monitor's labelled images (--knn_source={config.knn_source}) ...")
    run = _Run(config, strategy, chief, data, state, manager, writer, _knn_monitor(config) if chief else None, export,
               lock)
    resume_from = tf.train.latest_checkpoint(_chief_checkpoint_dir(config))  # the same one on every worker
    if resume_from:
        restore(state, resume_from)
        logging.info("Resumed from %s (step %d)", resume_from, state.step)
        kept = " (the steps fitted to --train_minutes when it started)" if config.train_minutes else ""
        print(f"Resuming {config.run_dir} from step {state.step}/{config.steps}{kept}")
        if config.train_minutes:  # final now; the hparams are still unwritten when it stopped before its last fit
            summaries.write_config(writer, config, step=state.step)
        return run
    export_s = knn_s = 0.0
    if chief:
        export_s = _seconds(lambda: run.export_encoder(f"{config.name}_random",
                                                       "the randomly initialised encoder (baseline)"))
    began = time.perf_counter()
    said = objective.start(state.encoder, data.instances, progress=config.progress)
    if said:
        print(f"{said} ({time.perf_counter() - began:.0f} s)")
    with writer.as_default(step=0):
        tf.summary.image("surrogate_samples", summaries.image_grid(data.preview_images), step=0)
    if run.knn_reading:  # the random-initialisation point of the kNN curve
        knn_s = _seconds(lambda: _log_knn(writer, 0, run.knn_reading(state)))
    if config.train_minutes:
        _fit_to_budget(run, started, export_s, knn_s)
    summaries.write_config(writer, run.config, hparams=run.refit is None)  # else at the refit: final steps
    return run


def _seconds(work: Callable[[], object]) -> float:
    """Seconds `work()` took."""
    began = time.perf_counter()
    work()
    return time.perf_counter() - began


def _fit_to_budget(run: _Run, started: float, export_s: float, knn_s: float) -> None:
    """--train_minutes on a fresh run, its start-up done: times the step (`budget.measure`), fixes --steps to what
    fits (`budget.fit_steps`) and makes the run that run: the config, flags.cfg, the optimizer's schedule (no
    step has run: its slots are still zero) and the checkpoint manager over it. `export_s` and `knn_s`: what
    the random export and the step-0 kNN reading took."""
    config = run.config
    status(f"--train_minutes={config.train_minutes:g}: timing the training step on this machine "
           f"({budget.timing_length(config)} after compiling it) ...")
    side_step_s, compile_s, checkpoint_s = budget.measure(config, run.strategy, run.data)
    costs = budget.Costs(elapsed=time.perf_counter() - started, step=budget.mean_step_seconds(config, side_step_s),
                         compile=compile_s, knn_reading=knn_s, export=export_s, checkpoint=checkpoint_s)
    steps = budget.fit_steps(60 * config.train_minutes, costs, config.knn_every, config.checkpoint_every)
    if not steps:
        raise InputError(f"--train_minutes={config.train_minutes:g}: no step fits (start-up and timing took "
                         f"{costs.elapsed / 60:.1f} min, a step {costs.step:.3f} s); give more minutes")
    fitted = dataclasses.replace(config, steps=steps)
    try:
        validate(fitted, steps_fitted=True)
    except InputError as error:
        raise InputError(f"--train_minutes={config.train_minutes:g} fits {steps} steps, too few for the other "
                         f"flags: {' '.join(str(error).split())}") from None
    print(budget.summary_line(fitted, steps, costs, side_step_s))
    _switch_steps(run, fitted)
    at_step = budget.refit_step(fitted)
    run.refit = budget.Refit(at_step, started, costs, side_step_s) if at_step else None


def _switch_steps(run: _Run, fitted: TrainConfig) -> None:
    """Makes the run the run of `fitted.steps`: flags.cfg, the objective's settings (the start of --neighbours is a
    step), the optimizer rebuilt on its schedule with the current optimizer's variables (step count, momentum
    slots) and the checkpoint manager over the new one. Only before any step that depends on --steps (the step
    functions must be built again)."""
    rundir.write_flagfile(fitted)
    run.state.objective.settings = objective_of(fitted).settings
    with run.strategy.scope():
        optimizer = build_optimizer(fitted, run.state.trainable_variables)
        for new, old in zip(optimizer.variables, run.state.optimizer.variables, strict=True):
            new.assign(old)
    run.state.optimizer = optimizer
    run.config, run.manager = fitted, _checkpoint_manager(fitted, run.strategy, run.state)


def _refit(run: _Run, step: int, paced_from: tuple[float, int] | None) -> TrainConfig:
    """--train_minutes' second fit at step `step` (`budget.refit_step`): --steps from the run's own seconds per
    step since `paced_from` (time.perf_counter(), step), its readings and checkpoints taken out, and the time left
    (`budget.refit_steps`; a changed count compiles the step again). Returns the run's config: unchanged, the
    first fit standing, when no step was paced before `step`, the count stays or the new count breaks another
    flag's rule. Writes the hparams: the steps are final."""
    config, refit = run.config, run.refit
    run.refit = None
    fitted = config
    if paced_from and paced_from[1] < step:
        now = time.perf_counter()
        bare_s = budget.bare_step_seconds(config, refit.costs, paced_from[1], step, now - paced_from[0])
        left_s = 60 * config.train_minutes - (now - refit.started) - refit.final_s
        steps = budget.refit_steps(config, refit, step, bare_s, left_s)
        if steps != config.steps:  # a new count compiles the step again
            left_s -= refit.costs.compile
            steps = budget.refit_steps(config, refit, step, bare_s, left_s)
        try:
            fitted = (validate(dataclasses.replace(config, steps=steps), steps_fitted=True) if steps != config.steps
                      else config)
        except InputError as error:
            tqdm.write(f"step {step}: --train_minutes: kept --steps={config.steps}; {steps} would break another "
                       f"rule ({' '.join(str(error).split())})")
        if fitted is not config:
            _switch_steps(run, fitted)
        timed_s = refit.side_step_s[config.input_size_at(step - 1)]
        tqdm.write(f"step {step}: --train_minutes={config.train_minutes:g}: --steps={fitted.steps} (was "
                   f"{config.steps}) at this run's own {bare_s:.3f} s per step ({bare_s / timed_s:.2f}x the timed "
                   f"step; readings and checkpoints counted apart); {max(left_s, 0) / 60:.1f} min left")
    summaries.write_config(run.writer, fitted, step=step)
    return fitted


def _train(run: _Run) -> float:
    """Runs the steps from the current one to --steps, with logs, kNN readings, merges and checkpoints on
    their steps. Returns the last logged loss (NaN when no step ran)."""
    config, state = run.config, run.state
    if state.step < config.low_res_steps:
        status(f"Compiling the training step (on its first call; views at {config.low_res_size} pixels until step "
               f"{config.low_res_steps}, then {config.input_size}) ...")
    elif state.step < config.steps:
        status("Compiling the training step (on its first call) ...")
    step_functions = {}  # side -> its train_steps (two with --low_res_size, each compiled on its first call)

    def train_steps_at(step: int):
        side = config.input_size_at(step)
        if side not in step_functions:
            if step_functions:
                tqdm.write(f"step {step}: views at {side} pixels from here on (compiling the step for them) ...")
            step_functions[side] = make_train_step(config, run.strategy, state, side)
        return step_functions[side]

    steps_fed = int(state.input_position.numpy())  # the input continues where the checkpoint's run left it

    def dataset_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        # Each step takes one per-replica batch from its pipeline for every replica it feeds.
        dataset = run.data.dataset_fn(ctx, steps_fed * (ctx.num_replicas_in_sync // ctx.num_input_pipelines))
        if ctx.num_input_pipelines > 1:
            tqdm.write(input_split_line(ctx, dataset, config.batch_size))
        return dataset

    iterator = iter(run.strategy.distribute_datasets_from_function(dataset_fn))
    progress = tqdm(total=config.steps, initial=state.step, disable=not (config.progress and run.chief),
                    desc=config.name, unit="step", dynamic_ncols=True)
    loss = float("nan")
    window_start, window_steps = time.perf_counter(), 0
    step = state.step
    paced_from = None  # (time, step) when this command's first call returned: the run's own pace from there
    run.merge_if_due()
    while step < config.steps:
        before = step
        if run.refit and before == run.refit.at_step:
            refitted = _refit(run, before, paced_from)
            if refitted is not config:
                step_functions.clear()  # built on the previous optimizer
                progress.total = refitted.steps
                progress.refresh()
            config = refitted
        state.objective.at_step(before)
        if config.neighbours and before == config.neighbours_from_step:
            tqdm.write(f"step {before}: the {config.neighbours} nearest bank rows join each example's positive from "
                       f"here on (--neighbours; the loss is another function from this step)")
        refit_at = run.refit.at_step if run.refit else None
        out = train_steps_at(before)(iterator, tf.constant(steps_this_call(config, before, refit_at), tf.int32))
        step = state.step  # optimizer.iterations: mixed_float16's loss scaling does not count the steps it skips
        paced_from = paced_from or (time.perf_counter(), step)
        if not bool(out["finite"]):
            progress.close()
            loss = float(out["loss"])
            what = f"loss became {loss}" if not math.isfinite(loss) else "weights became NaN/Inf"
            raise TrainingDiverged(
                f"{what} at step {step}; stopped without saving. The last good checkpoint "
                f"({run.manager.latest_checkpoint or 'none yet'}) is kept. Try a lower --lr or a higher --tau.")
        window_steps += step - before
        progress.update(step - before)
        run.merge_if_due()
        if step % config.log_every == 0 or step == config.steps:
            loss = float(out["loss"])
            progress.set_postfix(loss=f"{loss:.4f}")
            run.log(step, out, loss, window_steps * config.batch_size / max(time.perf_counter() - window_start, 1e-9))
            window_start, window_steps = time.perf_counter(), 0
        if run.knn_reading and config.knn_every and step % config.knn_every == 0 and step < config.steps:
            _log_knn(run.writer, step, run.knn_reading(state))
        if step % config.checkpoint_every == 0 and step < config.steps:
            _save(run.manager, step)
            _say_worker_state(run)
    progress.close()
    return loss


def _finish(run: _Run, loss: float, first_step: int) -> RunResult:
    """The final checkpoint, the last kNN reading and projector, and (chief) the final export."""
    config, state, manager = run.config, run.state, run.manager
    log_dir = os.path.join(config.run_dir, "tensorboard")
    if manager.latest_checkpoint is None or rundir.checkpoint_number(manager.latest_checkpoint) != state.step:
        _save(manager, state.step)
    _say_worker_state(run)
    if not run.chief:
        shutil.rmtree(manager.directory, ignore_errors=True)
        return RunResult(state.step, loss, None, log_dir, manager.directory, state.step - first_step)
    if run.knn_reading:
        status(f"step {state.step}: last kNN reading and the TensorBoard projector of its codes ...")
        reading = run.knn_reading(state)
        _log_knn(run.writer, state.step, reading)
        summaries.write_projector(log_dir, "knn_test_codes", reading.codes, reading.test)
    elif (rows := state.objective.projector_rows()) is not None:  # e.g. a memory bank's rows
        summaries.write_projector(log_dir, "bank_rows", rows)
    run.writer.flush()
    export_dir = run.export_encoder(config.name, f"the trained encoder (step {state.step})")
    return RunResult(state.step, loss, export_dir, log_dir, manager.directory, state.step - first_step)


def run(config: TrainConfig, export: Exporter, strategy: tf.distribute.Strategy | None = None) -> RunResult:
    """Trains (or resumes) the run described by `config`; `export` writes the baseline and final exports."""
    config = validate(config)
    if config.allow_unnormalised_bank and config.uses_bank and not config.batch_norm:
        logging.warning("--objective=%s without --batch_norm on the %s Exemplar-CNN: expect the codes to collapse "
                        "(BUILD_NOTES.md)", config.objective, config.arch)
    started = time.perf_counter()
    strategy = strategy or distribute.make_strategy(config.strategy, tpu=config.tpu)
    try:
        run = _start(config, strategy, export, started)
        try:
            first_step = run.state.step
            return _finish(run, _train(run), first_step)
        finally:
            if run.lock:
                run.lock.release()
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError) as error:  # a collective aborted
        if config.strategy != "multi_worker":
            raise
        raise WorkerLost(f"a worker of the cluster is gone ({_abort_reason(error.message)}); the last checkpoint "
                         f"({tf.train.latest_checkpoint(_chief_checkpoint_dir(config)) or 'none yet'}) is kept: "
                         f"restart every worker with the same command to resume from it") from None
