"""Exports of training runs: the one export path of the training loop (step 0 and the end) and the re-export of a
run directory's newest checkpoint (`python -m exemplar_tf.export`, fine-tuning's `from_run`)."""
from __future__ import annotations

import os

import tensorflow as tf

from exemplar_tf import models
from exemplar_tf.errors import InputError
from exemplar_tf.serving.export import check_model_name, export_encoder, measure_percentiles, served_options
from exemplar_tf.training import loop, rundir
from exemplar_tf.training.step import objective_of
from exemplar_tf.training.config import TrainConfig, validate
from exemplar_tf.training.inputs import percentile_images


def export_training_run(config: TrainConfig, encoder, head, images, *, name: str, step: int, version: int | None = None,
                        export_dir_base: str | None = None) -> str:
    """The one export path of a training run (the loop's exports at step 0 and at the end, and `export_run`):
    percentiles measured on `images` (`training.inputs.percentile_images(config)`), origin run_dir, step and run id
    recorded."""
    return export_encoder(encoder, head, export_dir_base=export_dir_base or config.export_base, name=name,
                          version=version, percentiles=measure_percentiles(encoder, images),
                          origin={"run_dir": config.run_dir, "step": step, "run_id": rundir.run_id(config.run_dir)})


def check_export_name(config: TrainConfig, *, name: str | None = None, export_dir_base: str | None = None) -> None:
    """Cheap pre-check before a run trains or a checkpoint is restored: raises `serving.export.ExportNameTaken` (an
    `errors.InputError`, one line) when the run's exports would land among another run's versions, or among
    versions of another network (arch, input size, the arch's options, an "auto" one as the encoder will resolve
    it): `<export_base>/<name>/` and `<export_base>/<name>_random/` (training's two model names), or only
    `<export_dir_base>/<name>/` when `name` is given (`export_run`). Reads only the export_info.json files already
    there; nothing is written."""
    (options,) = models.recorded_options(config)  # the config has every option of its arch
    identity = served_options(models.resolved_options(options))
    base = export_dir_base or config.export_base
    for model_name in [name] if name else [config.name, f"{config.name}_random"]:
        check_model_name(base, model_name, config.run_dir, identity)


def train(config: TrainConfig, strategy=None) -> loop.RunResult:
    """Trains (or resumes) the run `config` describes and exports it: the random baseline at step 0 as
    <export_base>/<name>_random/<version> and the final encoder as <export_base>/<name>/<version>. A model name
    that holds another run's versions is refused before anything else happens (`check_export_name`)."""
    check_export_name(validate(config))
    return loop.run(config, export=export_training_run, strategy=strategy)


def restore_run(run_dir: str, checkpoint: str | None = None):
    """(encoder, head or None, the run's TrainConfig) of a training run's `checkpoint` (a prefix; None: its newest)
    (encoder + head only, float32 whatever the training precision). A run training meanwhile writes new
    checkpoints: a caller that records the step passes the checkpoint it read the step from.

    The run's resolved `flags.cfg` gives the TrainConfig (arch, method, objective, sizes, source, --max_instances).
    """
    config = rundir.read_run_config(run_dir)
    (options,) = models.recorded_options(config)  # the config has every option of its arch
    encoder = models.encoder_from_options(options)
    parts = {"encoder": encoder}
    objective = objective_of(config)
    head = None
    if objective.exports_head:  # the softmax's classifier is not part of the representation: left in the checkpoint
        head = objective.make_head(0)
        head.build((None, encoder.representation_dim))
        parts["head"] = head
    checkpoint = checkpoint or tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints"))
    if checkpoint is None:
        raise FileNotFoundError(f"no checkpoint in {os.path.join(run_dir, 'checkpoints')}")
    tf.train.Checkpoint(**parts).restore(checkpoint).expect_partial().assert_existing_objects_matched()
    return encoder, head, config


def export_run(run_dir: str, *, name: str | None = None, version: int | None = None,
               export_dir_base: str | None = None) -> str:
    """Restores the newest checkpoint of a training run (`restore_run`) and exports it as training did: the
    percentile images come from the same function as in training, so re-exporting the final checkpoint
    reproduces the training-time export's `features`. A name whose versions come from another run is refused
    (`check_export_name`) before the checkpoint is read."""
    config = rundir.read_run_config(run_dir)
    check_export_name(config, name=name or config.name, export_dir_base=export_dir_base)  # before any restoring
    latest = tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints"))
    encoder, head, config = restore_run(run_dir, latest)  # the step recorded is the one restored
    step = rundir.checkpoint_number(latest)
    if step is None:
        raise InputError(f"{latest}: the newest checkpoint of {run_dir} is not named ckpt-<step>, so its step is not "
                         f"known; training names its checkpoints so")
    return export_training_run(config, encoder, head, percentile_images(config), name=name or config.name,
                               step=step, version=version, export_dir_base=export_dir_base)
