"""Semi-supervised fine-tuning: encoder + linear classifier on a class-balanced labelled subset, reported beside
the same fine-tuning from the random network and a supervised-from-scratch run on the same labels.

    python -m exemplar_tf.finetune --savedmodel=savedmodels/<name>/<v> | --run_dir=runs/<name>
        --dataset=demo_labelled --labels_per_class=N | --label_fraction=F [--encoder_lr=0.01 --head_lr=0.1]

random: the `<name>_random` export (the same network at initialisation), or a fresh one when it is missing.
scratch: a fresh network with --scratch_lr for every layer. Each run keeps checkpoints under
<out_dir>/<pretrained|random|scratch>/ (re-running resumes; settings recorded in <out_dir>/settings.json, a rerun
with other ones is refused naming them unless --overwrite); the pretrained classifier is exported with a
`classify` signature (images uint8 [B,H,W,3] -> probabilities [B,C]) to <export_base>/<export_name>/<v>
(default name: the --out_dir folder's, runs/<name>_finetune giving <name>_finetuned).
"""
from __future__ import annotations

import json
import os

from absl import flags

from exemplar_tf import errors
from exemplar_tf.errors import cli

_SAVEDMODEL = flags.DEFINE_string("savedmodel", None, "Export savedmodels/<name>/<version> to fine-tune.")
_RUN_DIR = flags.DEFINE_string("run_dir", None, "Or: a training run directory (newest checkpoint).")
_DATASET = flags.DEFINE_string("dataset", None, "Labelled source with train/test splits.", required=True)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "tensorflow-datasets data_dir.")
_TRAIN_SPLIT = flags.DEFINE_string("train_split", "train", "Split the labelled subset is drawn from.")
_TEST_SPLIT = flags.DEFINE_string("test_split", "test", "Split test accuracy is measured on.")
_PER_CLASS = flags.DEFINE_integer("labels_per_class", 0, "Labelled images per class.")
_FRACTION = flags.DEFINE_float("label_fraction", 0.0, "Or: fraction of each class labelled (NPID: 0.01, 0.1).")
_STEPS = flags.DEFINE_integer("steps", 1000, "Fine-tuning steps.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Batch size.")
_ENCODER_LR = flags.DEFINE_float("encoder_lr", 0.01, "SGD learning rate of the encoder.")
_HEAD_LR = flags.DEFINE_float("head_lr", 0.1, "SGD learning rate of the linear classifier.")
_SCRATCH_LR = flags.DEFINE_float("scratch_lr", None, "Learning rate of every layer in the scratch run "
                                 "(default: --head_lr).")
_DECAY_AT = flags.DEFINE_list("lr_decay_at", "0.6,0.8", "Fractions of --steps where both lrs drop.")
_DECAY = flags.DEFINE_float("lr_decay_factor", 0.1, "Learning-rate drop factor.")
_WEIGHT_DECAY = flags.DEFINE_float("weight_decay", 5e-4, "L2 weight decay on kernels.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the labelled subset, augmentation and fresh networks.")
_BASELINES = flags.DEFINE_list("baselines", "random,scratch", "Baselines to run beside the pretrained encoder.")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Fine-tuning directory (default: runs/<name>_finetune).")
_EXPORT_BASE = flags.DEFINE_string("export_base", "savedmodels", "Export base directory.")
_CHECKPOINT_EVERY = flags.DEFINE_integer("checkpoint_every", 500, "Steps between checkpoints.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Start over when --out_dir holds fine-tuning with other settings "
                               "(the old directory is kept as <out_dir>.old-<time>); without it that is refused.")
_EXPORT_NAME = flags.DEFINE_string("export_name", None, "Export name of the fine-tuned classifier (default: the "
                                   "--out_dir folder's name, runs/<name>_finetune giving <name>_finetuned).")

cli.check("labels_per_class", cli.NON_NEGATIVE)
cli.check("label_fraction", cli.UNIT_INTERVAL)
cli.check("encoder_lr", cli.NON_NEGATIVE)  # 0: the encoder stays as it is
cli.check("head_lr", cli.POSITIVE)
cli.check("scratch_lr", cli.POSITIVE)


def _one_source(values: flags.FlagValues) -> str | None:
    return None if bool(values.savedmodel) != bool(values.run_dir) else "give exactly one of --savedmodel or --run_dir"


def _one_label_amount(values: flags.FlagValues) -> str | None:
    if (values.labels_per_class > 0) != (values.label_fraction > 0):
        return None
    return "give exactly one of --labels_per_class or --label_fraction"


def _known_baselines(values: flags.FlagValues) -> str | None:
    unknown = set(values.baselines) - {"random", "scratch"}
    return f"--baselines has unknown names {sorted(unknown)}; valid: random, scratch" if unknown else None


for _rule in (_one_source, _one_label_amount, _known_baselines):  # checked with the flags, before TensorFlow loads
    cli.check_flags(_rule)


def main(argv) -> int:
    del argv  # errors.run refuses positional arguments
    from exemplar_tf.finetuning import loop, run

    source = _SAVEDMODEL.value or _RUN_DIR.value
    name = os.path.basename(os.path.dirname(os.path.normpath(source))) if _SAVEDMODEL.value else \
        os.path.basename(os.path.normpath(source))
    out_dir = _OUT_DIR.value or os.path.join("runs", f"{name}_finetune")
    recipe = loop.Recipe(
        steps=_STEPS.value, batch_size=_BATCH.value, encoder_lr=_ENCODER_LR.value, head_lr=_HEAD_LR.value,
        lr_decay_at=tuple(float(f) for f in _DECAY_AT.value if f), lr_decay_factor=_DECAY.value,
        weight_decay=_WEIGHT_DECAY.value, seed=_SEED.value, checkpoint_every=_CHECKPOINT_EVERY.value)
    options = run.Options(
        dataset=_DATASET.value, data_dir=_DATA_DIR.value, train_split=_TRAIN_SPLIT.value,
        test_split=_TEST_SPLIT.value, labels_per_class=_PER_CLASS.value, label_fraction=_FRACTION.value,
        recipe=recipe, scratch_lr=_SCRATCH_LR.value or _HEAD_LR.value, baselines=tuple(_BASELINES.value),
        out_dir=out_dir, export_base=_EXPORT_BASE.value,
        export_name=_EXPORT_NAME.value or run.default_export_name(out_dir), overwrite=_OVERWRITE.value)
    report = run.compare(options, savedmodel=_SAVEDMODEL.value, run_dir=_RUN_DIR.value)  # errors.run: one line
    print(run.table(report))
    print(json.dumps(report, allow_nan=False))
    return 0


if __name__ == "__main__":
    errors.run(main)
