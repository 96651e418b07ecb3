"""Encoders to fine-tune: from an export (read by `evaluation.savedmodel`), a training run's checkpoint, or fresh."""
from __future__ import annotations

import dataclasses
import os
from typing import Sequence

from exemplar_tf import models
from exemplar_tf.evaluation import protocols
from exemplar_tf.evaluation.savedmodel import SavedModelFeatures
from exemplar_tf.serving import export, runs
from exemplar_tf.training import rundir


@dataclasses.dataclass
class EncoderSpec:
    arch: str
    input_size: int
    batch_norm: bool
    resnet: dict = dataclasses.field(default_factory=dict)  # models.resnet_options of a ResNet


def _short_name(variable_name: str) -> str:
    return variable_name.split(":")[0].split("/")[-1]


def from_savedmodel(path: str) -> tuple[models.Encoder, EncoderSpec]:
    """Rebuilds the exported encoder (arch and size from export_info.json) and copies its weights.

    ExportArchive stores the tracked encoder's variables first, in `encoder.variables` order; the copy checks
    every name and shape, and tells the Exemplar-CNN with batch norm from the one without by that check.
    """
    model = SavedModelFeatures(path)
    info = model.info
    if not info.get("arch") or not info.get("input_size"):
        raise ValueError(f"{path}: no {export.INFO_PATH} with arch and input_size (not an exemplar_tf export)")
    saved = model.variables
    resnet = {key: info[key] for key in ("resnet_stem", "resnet_width") if key in info}
    for batch_norm in (False, True):
        encoder = models.build_encoder(info["arch"], input_size=int(info["input_size"]), mean_rgb=(0.0, 0.0, 0.0),
                                       batch_norm=batch_norm, **resnet)
        own = encoder.variables
        if len(own) <= len(saved) and all(_short_name(s.name) == _short_name(o.path) and s.shape == o.shape
                                          for s, o in zip(saved, own)):
            for s, o in zip(saved, own):
                o.assign(s)
            return encoder, EncoderSpec(info["arch"], int(info["input_size"]), batch_norm, resnet)
    raise ValueError(f"{path}: its variables do not match a {info['arch']} encoder (with or without batch norm)")


def from_run(run_dir: str) -> tuple[models.Encoder, EncoderSpec]:
    """The newest checkpoint of a training run (see `serving.runs.restore_run`)."""
    encoder, _, run = runs.restore_run(run_dir)
    return encoder, EncoderSpec(run.arch, int(encoder.input_size), run.batch_norm, models.resnet_options(encoder))


def random_export(savedmodel: str | None, run_dir: str | None) -> str | None:
    """The `<name>_random` export (the same network at initialisation, written by train.py at step 0), if any."""
    if savedmodel:
        return protocols.random_baseline_path(savedmodel)
    run = rundir.read_run_config(run_dir)
    sibling = os.path.join(run.export_base, run.name + "_random")
    version = export.next_version(sibling) - 1
    return os.path.join(sibling, str(version)) if version > 0 else None


def fresh(spec: EncoderSpec, mean_rgb: Sequence[float], seed: int) -> models.Encoder:
    """A newly initialised encoder of `spec` (seeded)."""
    import keras

    keras.utils.set_random_seed(seed)
    return models.build_encoder(spec.arch, input_size=spec.input_size, mean_rgb=mean_rgb,
                                batch_norm=spec.batch_norm, **spec.resnet)
