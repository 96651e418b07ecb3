"""Encoders to fine-tune: from an export (read by `evaluation.savedmodel`), a training run's checkpoint, or fresh.

An encoder is described by its options (`Encoder.options()`, `models.encoder_from_options`): the export records
them in export_info.json and a training run's config holds them, so nothing here depends on the architecture.
"""
from __future__ import annotations

import os
from typing import Sequence

from exemplar_tf import models
from exemplar_tf.errors import InputError
from exemplar_tf.evaluation import protocols
from exemplar_tf.evaluation.savedmodel import SavedModelFeatures, read_export_info
from exemplar_tf.serving import export, runs
from exemplar_tf.training import rundir


def _short_name(variable_name: str) -> str:
    return variable_name.split(":")[0].split("/")[-1]


def from_savedmodel(path: str) -> tuple[models.Encoder, dict]:
    """(encoder, its options): the exported encoder rebuilt from the options in export_info.json, with the
    export's weights.

    ExportArchive stores the tracked encoder's variables first, in `encoder.variables` order; the copy checks
    every name and shape. Exports written before the options were recorded lack some of them: every option set
    they allow (`models.recorded_options`; an Exemplar-CNN with and without batch norm) is tried, and the first
    whose variables match is kept.
    """
    model = SavedModelFeatures(path)
    info = model.info
    if not info.get("arch") or not info.get("input_size"):
        raise InputError(f"{path}: no {export.INFO_PATH} with arch and input_size (not an exemplar_tf export)")
    saved = model.variables
    for options in models.recorded_options(info):
        encoder = models.encoder_from_options(options)
        own = encoder.variables
        if len(own) <= len(saved) and all(_short_name(s.name) == _short_name(o.path) and s.shape == o.shape
                                          for s, o in zip(saved, own)):
            for s, o in zip(saved, own):
                o.assign(s)
            return encoder, options
    raise InputError(f"{path}: its variables do not match a {info['arch']} encoder of the options it records "
                     f"(or allows)")


def from_run(run_dir: str, step: int | None = None) -> tuple[models.Encoder, dict]:
    """(encoder, its options) of a training run's checkpoint of `step` (None: its newest; see
    `serving.runs.restore_run`)."""
    checkpoint = None if step is None else os.path.join(run_dir, "checkpoints", f"ckpt-{step}")
    if checkpoint and not os.path.exists(checkpoint + ".index"):
        raise InputError(f"{checkpoint}: gone since it was read as the run's newest (the run is still training and "
                         f"keeps only its newest --keep_checkpoints); rerun to fine-tune its newest now")
    encoder, _, _ = runs.restore_run(run_dir, checkpoint)
    return encoder, encoder.options()


def random_export(savedmodel: str | None, run_dir: str | None) -> str | None:
    """The `<name>_random` export (the same network at initialisation, written by train.py at step 0), if any: of
    a training run, the newest version that records that run (where it is now, so a moved project still finds
    it), records none, or (written before the relative path was recorded) records one that no longer exists."""
    if savedmodel:
        return protocols.random_baseline_path(savedmodel)
    run = rundir.read_run_config(run_dir)
    sibling = os.path.join(run.export_base, run.name + "_random")
    if not os.path.isdir(sibling):
        return None
    for version in sorted((int(v) for v in os.listdir(sibling) if v.isdigit()), reverse=True):
        path = os.path.join(sibling, str(version))
        info = read_export_info(path)
        recorded = {info.get("run_dir"), info.get("run_dir_at_export")} - {None}
        unplaced = not info.get("run_dir_relative") and not any(map(os.path.exists, recorded))  # older, moved
        if unplaced or os.path.abspath(run_dir) in recorded:
            return path
    return None


def fresh(options: dict, mean_rgb: Sequence[float], seed: int) -> models.Encoder:
    """A newly initialised encoder of `options` (seeded)."""
    import keras

    keras.utils.set_random_seed(seed)
    return models.encoder_from_options(options, mean_rgb=mean_rgb)
