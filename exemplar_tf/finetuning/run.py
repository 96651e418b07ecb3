"""The fine-tuning comparison: pretrained vs random-network vs from-scratch on the same labelled subset.

The comparison's settings are recorded in its directory and a rerun with other ones is refused before anything is
loaded (`outdir.check_reuse`); its classifier export belongs to that directory (`export.check_model_name`).
`results.json` is strict JSON (a value that is not a finite number is null)."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys

import numpy as np
import tensorflow as tf

from exemplar_tf.data import sources
from exemplar_tf.errors import InputError
from exemplar_tf.evaluation.savedmodel import read_export_info
from exemplar_tf.finetuning import encoders, labels, loop, outdir
from exemplar_tf.serving import export
from exemplar_tf.io.status import status
from exemplar_tf.training import rundir


@dataclasses.dataclass(frozen=True)
class Options:
    """The comparison: data, labelled subset, baselines, where results go, and the fine-tuning `recipe` every run
    shares (the pretrained and random runs with its lrs, the scratch run with `scratch_lr` for encoder and head)."""

    dataset: str
    out_dir: str
    export_name: str
    data_dir: str | None = None
    train_split: str = "train"
    test_split: str = "test"
    labels_per_class: int = 0
    label_fraction: float = 0.0
    recipe: loop.Recipe = loop.Recipe()
    scratch_lr: float = 0.1
    baselines: tuple[str, ...] = ("random", "scratch")
    export_base: str = "savedmodels"
    overwrite: bool = False  # start over in out_dir (kept as <out_dir>.old-<time>) when its settings differ


def default_export_name(out_dir: str) -> str:
    """The classifier's export name for a fine-tuning directory: its folder name, `<name>_finetune` giving
    `<name>_finetuned` (the default `runs/<name>_finetune`), so each directory exports under a name of its own."""
    folder = os.path.basename(os.path.normpath(out_dir))
    return folder + "d" if folder.endswith("_finetune") else folder


def _checkpoint_step(folder: str) -> int | None:
    """The step of the checkpoint `folder`'s state names newest, None without one."""
    latest = tf.train.latest_checkpoint(folder)
    return rundir.checkpoint_number(latest) if latest else None


def settings(options: Options, savedmodel: str | None, run_dir: str | None) -> dict:
    """The resolved settings recorded in `<out_dir>/settings.json` (plain JSON values): the source (and the step
    its weights are from), the data and labelled subset, the recipe, the baselines and where the export goes."""
    if savedmodel:
        source_step = read_export_info(savedmodel).get("step")
    else:
        source_step = _checkpoint_step(os.path.join(run_dir, "checkpoints"))
    values = {"savedmodel": savedmodel and os.path.normpath(savedmodel),
              "run_dir": run_dir and os.path.normpath(run_dir), "source_step": source_step,
              "dataset": options.dataset, "data_dir": options.data_dir, "train_split": options.train_split,
              "test_split": options.test_split, "labels_per_class": options.labels_per_class,
              "label_fraction": options.label_fraction, **dataclasses.asdict(options.recipe),
              "scratch_lr": options.scratch_lr, "baselines": list(options.baselines),
              "export_base": options.export_base, "export_name": options.export_name}
    return json.loads(json.dumps(values))  # tuples as lists: the form read back from the file


def _check_steps(options: Options, kinds) -> None:
    """A run already fine-tuned past --steps is refused before anything is loaded (its accuracy is not a run of
    --steps steps)."""
    for kind in kinds:
        step = _checkpoint_step(os.path.join(options.out_dir, kind, "checkpoints"))
        if step is not None and step > options.recipe.steps:
            raise InputError(f"{os.path.join(options.out_dir, kind)} is fine-tuned to step {step}, past "
                             f"--steps={options.recipe.steps}: give --steps={step} or more, or another --out_dir")


def json_safe(value):
    """`value` with every float that is not finite (NaN, inf) replaced by None, for strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value



def _labels_of(source: sources.Source) -> np.ndarray:
    """int64 [n] labels in index order."""
    out = np.full(source.num_examples, -1, np.int64)
    for index, label in source.dataset.map(lambda e: (e["index"], e["label"])).as_numpy_iterator():
        out[index] = label
    return out


def compare(options: Options, *, savedmodel: str | None = None, run_dir: str | None = None) -> dict:
    """Fine-tunes the given encoder and the requested baselines; returns the report (also out_dir/results.json).

    Refuses (errors.InputError, one line) before loading anything when `out_dir` holds checkpoints made with other
    settings (`outdir.check_reuse`) or past `--steps`, and before fine-tuning when the export name holds another
    directory's classifiers, or while another fine-tuning run holds `out_dir` (`outdir.locked`)."""
    lock = outdir.locked(options.out_dir)
    try:
        recorded = settings(options, savedmodel, run_dir)
        kept = outdir.check_reuse(options.out_dir, recorded, options.overwrite)
        if kept:  # the lock moved aside with the old directory
            print(f"--overwrite: the previous fine-tuning directory is kept as {kept}", file=sys.stderr)
            lock.release()
            lock = outdir.locked(options.out_dir)
        return _compare(options, savedmodel, run_dir, recorded["source_step"])
    finally:
        lock.release()


def _compare(options: Options, savedmodel: str | None, run_dir: str | None, source_step: int | None) -> dict:
    """`compare` in its locked `out_dir`, the settings checked and recorded (`source_step`: the step of the run's
    checkpoint they record, the one restored)."""
    _check_steps(options, ("pretrained",) + tuple(options.baselines))
    status(f"Reading {options.dataset} ({options.train_split} and {options.test_split} splits) ...", sys.stderr)
    train = sources.load_source(options.dataset, options.train_split, data_dir=options.data_dir)
    test = sources.load_source(options.dataset, options.test_split, data_dir=options.data_dir)
    if train.num_classes is None or test.num_classes is None:
        raise InputError(f"{options.dataset}: fine-tuning needs labelled {options.train_split} and "
                         f"{options.test_split} splits")
    if problem := sources.same_images_problem(options.dataset, options.train_split, options.dataset,
                                              options.test_split):
        raise InputError(problem)
    rows = labels.labelled_rows(_labels_of(train), per_class=options.labels_per_class,
                                fraction=options.label_fraction, seed=options.recipe.seed)
    recipe = options.recipe
    status(f"Loading the encoder to fine-tune from {savedmodel or run_dir} ...", sys.stderr)
    pretrained, encoder_options = (encoders.from_savedmodel(savedmodel) if savedmodel
                                   else encoders.from_run(run_dir, source_step))
    mean_rgb = np.asarray(pretrained.mean_subtraction.mean)
    export.check_model_name(options.export_base, options.export_name, options.out_dir,
                            loop.classifier_identity(pretrained, train.num_classes), flag="--export_name")
    runs = {"pretrained": (pretrained, recipe.encoder_lr, recipe.head_lr)}
    if "random" in options.baselines:
        random_path = encoders.random_export(savedmodel, run_dir)
        if random_path:
            status(f"Loading the random baseline from {random_path} ...", sys.stderr)
            random_encoder, _ = encoders.from_savedmodel(random_path)
        else:
            print("WARNING: no <name>_random export; the random baseline is a fresh network", file=sys.stderr)
            random_encoder = encoders.fresh(encoder_options, mean_rgb, recipe.seed)
        runs["random"] = (random_encoder, recipe.encoder_lr, recipe.head_lr)
    if "scratch" in options.baselines:
        scratch = encoders.fresh(encoder_options, mean_rgb, recipe.seed + 1)
        runs["scratch"] = (scratch, options.scratch_lr, options.scratch_lr)

    report = {"dataset": options.dataset, "num_labelled": int(len(rows)), "num_classes": train.num_classes,
              "labels_per_class": options.labels_per_class, "label_fraction": options.label_fraction,
              "steps": recipe.steps, "source": savedmodel or run_dir, "runs": {}}
    for kind, (encoder, encoder_lr, head_lr) in runs.items():
        run_recipe = dataclasses.replace(recipe, encoder_lr=encoder_lr, head_lr=head_lr)
        batches = loop.training_batches(train.dataset, rows, train.num_examples, encoder_options["input_size"],
                                        run_recipe)
        status(f"{kind}: fine-tuning on the {len(rows)} labelled images (the first step compiles) ...", sys.stderr)
        head, loss = loop.finetune(encoder, train.num_classes, batches, run_recipe,
                                   os.path.join(options.out_dir, kind), desc=kind)
        status(f"{kind}: classifying the {test.num_examples} {options.test_split} images ...", sys.stderr)
        accuracy = loop.test_accuracy(encoder, head, test.dataset)
        entry = {"test_accuracy": accuracy, "final_loss": loss, "encoder_lr": encoder_lr, "head_lr": head_lr}
        if kind == "pretrained":
            status(f"{kind}: exporting the classifier to "
                   f"{os.path.join(options.export_base, options.export_name, '')} ...", sys.stderr)
            entry["export"] = loop.export_classifier(
                encoder, head, export_dir_base=options.export_base, name=options.export_name,
                class_names=train.class_names,
                origin={"run_dir": options.out_dir, "source": savedmodel or run_dir, "step": recipe.steps})
        report["runs"][kind] = entry
        print(f"{kind}: test accuracy {accuracy:.4f}", file=sys.stderr)
    report = json_safe(report)
    os.makedirs(options.out_dir, exist_ok=True)
    with open(os.path.join(options.out_dir, "results.json"), "w") as f:
        json.dump(report, f, indent=2, allow_nan=False)
    return report


def table(report: dict) -> str:
    labelled = (f"{report['labels_per_class']} per class" if report["labels_per_class"]
                else f"{100 * report['label_fraction']:g} %")
    lines = [f"fine-tuning on {report['dataset']}: {report['num_labelled']} labelled images ({labelled}), "
             f"{report['steps']} steps", f"{'start':<12} {'test accuracy (%)':>18}"]
    for kind, entry in report["runs"].items():
        lines.append(f"{kind:<12} {100 * entry['test_accuracy']:>18.2f}")
    return "\n".join(lines)
