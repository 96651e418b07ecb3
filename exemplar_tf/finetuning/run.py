"""The fine-tuning comparison: pretrained vs random-network vs from-scratch on the same labelled subset."""
from __future__ import annotations

import dataclasses
import json
import os
import sys

import numpy as np

from exemplar_tf.data import sources
from exemplar_tf.finetuning import encoders, labels, loop


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


def _labels_of(source: sources.Source) -> np.ndarray:
    """int64 [n] labels in index order."""
    out = np.full(source.num_examples, -1, np.int64)
    for index, label in source.dataset.map(lambda e: (e["index"], e["label"])).as_numpy_iterator():
        out[index] = label
    return out


def compare(options: Options, *, savedmodel: str | None = None, run_dir: str | None = None) -> dict:
    """Fine-tunes the given encoder and the requested baselines; returns the report (also out_dir/results.json)."""
    train = sources.load_source(options.dataset, options.train_split, data_dir=options.data_dir)
    test = sources.load_source(options.dataset, options.test_split, data_dir=options.data_dir)
    if train.num_classes is None or test.num_classes is None:
        raise ValueError(f"{options.dataset}: fine-tuning needs labelled {options.train_split} and "
                         f"{options.test_split} splits")
    rows = labels.labelled_rows(_labels_of(train), per_class=options.labels_per_class,
                                fraction=options.label_fraction, seed=options.recipe.seed)
    recipe = options.recipe
    pretrained, encoder_options = (encoders.from_savedmodel(savedmodel) if savedmodel
                                   else encoders.from_run(run_dir))
    mean_rgb = np.asarray(pretrained.mean_subtraction.mean)
    runs = {"pretrained": (pretrained, recipe.encoder_lr, recipe.head_lr)}
    if "random" in options.baselines:
        random_path = encoders.random_export(savedmodel, run_dir)
        if random_path:
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
        head, loss = loop.finetune(encoder, train.num_classes, batches, run_recipe,
                                   os.path.join(options.out_dir, kind))
        accuracy = loop.test_accuracy(encoder, head, test.dataset)
        entry = {"test_accuracy": accuracy, "final_loss": loss, "encoder_lr": encoder_lr, "head_lr": head_lr}
        if kind == "pretrained":
            entry["export"] = loop.export_classifier(encoder, head, export_dir_base=options.export_base,
                                                     name=options.export_name, class_names=train.class_names)
        report["runs"][kind] = entry
        print(f"{kind}: test accuracy {accuracy:.4f}", file=sys.stderr)
    os.makedirs(options.out_dir, exist_ok=True)
    with open(os.path.join(options.out_dir, "results.json"), "w") as f:
        json.dump(report, f, indent=2)
    return report


def table(report: dict) -> str:
    labelled = (f"{report['labels_per_class']} per class" if report["labels_per_class"]
                else f"{100 * report['label_fraction']:g} %")
    lines = [f"fine-tuning on {report['dataset']}: {report['num_labelled']} labelled images ({labelled}), "
             f"{report['steps']} steps", f"{'start':<12} {'test accuracy (%)':>18}"]
    for kind, entry in report["runs"].items():
        lines.append(f"{kind:<12} {100 * entry['test_accuracy']:>18.2f}")
    return "\n".join(lines)
