"""Turns the CIFAR-10 experiment outputs into RESULTS.md's table rows and its kNN-vs-epoch plot.

    python experiments/summarize.py cifar10_exemplar_softmax cifar10_exemplar_nce [--plot=experiments/results/x.png]

Reads, for each run name, from experiments/results/<name>/ (written by experiments/run_cifar10.sh): flags.cfg
(the run's resolved flags), curves.json (the kNN monitor over training, on the evenly spread train/test subset of
--knn_max_examples, and the logged examples/s), time.json, knn_trained.json, knn_random.json and probe.json
(optional). Runs from before curves.json existed are read from runs/<name>/. Prints one markdown table row per
run; with --plot=<png>, also draws the named runs' kNN monitors into that file (RESULTS.md gives each plot's
command with its full list of runs: a plot is redrawn only when asked for, never from a shorter list).

    python experiments/summarize.py --save_curves <name>   (run_cifar10.sh does this after training)
reads runs/<name>/tensorboard and writes experiments/results/<name>/curves.json.
"""
from __future__ import annotations

import glob
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import tensorflow as tf  # noqa: E402

from common import RESULTS, run_flags  # noqa: E402  (experiments/ is on the path when this file is run)
from exemplar_tf.data import sources  # noqa: E402

NUM_TRAIN_IMAGES = 50_000
METHODS = {"softmax": "Exemplar-CNN, parametric softmax", "nce": "Exemplar-CNN surrogate data, NCE bank",
           "nonparametric": "Exemplar-CNN surrogate data, exact non-parametric softmax"}


CURVE_TAGS = ("knn_top1", "examples_per_second")


def tensorboard_curves(name: str) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...] sorted by step} for CURVE_TAGS from runs/<name>/tensorboard's event file."""
    points = {tag: {} for tag in CURVE_TAGS}
    for path in glob.glob(f"runs/{name}/tensorboard/events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag in points:
                    points[value.tag][event.step] = float(tf.make_ndarray(value.tensor))
    return {tag: sorted(values.items()) for tag, values in points.items()}


def curves(name: str) -> dict[str, list[tuple[int, float]]]:
    """The run's saved curves.json, else its TensorBoard events."""
    path = os.path.join(RESULTS, name, "curves.json")
    if os.path.exists(path):
        return {tag: [tuple(point) for point in values] for tag, values in json.load(open(path)).items()}
    return tensorboard_curves(name)


def save_curves(name: str) -> None:
    with open(os.path.join(RESULTS, name, "curves.json"), "w") as f:
        json.dump(tensorboard_curves(name), f)


def counts_seeds(flags: dict[str, str]) -> bool:
    """Whether the run's instances are fixed Exemplar-CNN seeds (else training images, one class each)."""
    return flags["method"] == "exemplar" and flags.get("seed_sampling", "fixed") == "fixed"


def num_instances(flags: dict[str, str]) -> int:
    """Surrogate classes (exemplar with fixed seeds) or training images (npid, and exemplar with
    --seed_sampling=online: one class per image; --max_instances keeps an evenly spread subset)."""
    if counts_seeds(flags):
        return int(flags["num_seeds"])
    return len(sources.spread_positions(NUM_TRAIN_IMAGES, int(flags.get("max_instances", "0"))))


def epochs_per_step(flags: dict[str, str]) -> float:
    return int(flags["batch_size"]) / num_instances(flags)


def describe(flags: dict[str, str]) -> str:
    if flags["method"] == "npid":
        bank_init = ", bank from the initial codes" if flags.get("bank_init") == "features" else ""
        if flags["objective"] == "nce":
            return f"NPID (nce, m={flags['nce_m']}{bank_init})"
        return f"NPID (exact non-parametric softmax, tau={flags['tau']}{bank_init})"
    batch_norm = ", batch norm" if flags.get("batch_norm", "False").lower() == "true" else ""
    online = "" if counts_seeds(flags) else ", online patches (every image a class)"
    return METHODS[flags["objective"]] + online + batch_norm


def encoder_name(flags: dict[str, str]) -> str:
    """resnet18 width 32, small + batch norm, ...: the arch with what changes its shape."""
    if flags["arch"].startswith("resnet"):
        width = flags.get("resnet_width", "64")
        return flags["arch"] + ("" if width == "64" else f" width {width}")
    return flags["arch"] + (" + batch norm" if flags.get("batch_norm", "False").lower() == "true" else "")


def percent(probe: dict | None, encoder: str) -> str:
    """The probe's accuracy for "trained" or "random_baseline" in %, or "not run" without a probe.json."""
    return "not run" if probe is None else f"{100 * probe[encoder]['accuracy_mean']:.1f}"


def reduced_memory(knn: dict) -> int:
    """How many training images kNN used as its memory when fewer than all (KNN_MAX_TRAIN), else 0."""
    return 0 if knn["train"] == NUM_TRAIN_IMAGES else knn["train"]


def table_row(name: str) -> str:
    flags = run_flags(name)
    out = os.path.join(RESULTS, name)
    timing = json.load(open(os.path.join(out, "time.json")))
    seconds = timing["train_seconds"]
    machine = f"{timing['cores']}-core {timing['cpu']}" if "cpu" in timing else "2-core AMD EPYC"
    rates = [rate for _, rate in curves(name)["examples_per_second"]]
    rate = f", {sorted(rates)[len(rates) // 2]:.0f} images/s" if rates else ""
    knn = json.load(open(os.path.join(out, "knn_trained.json")))
    knn_random = json.load(open(os.path.join(out, "knn_random.json")))
    probe_path = os.path.join(out, "probe.json")
    probe = json.load(open(probe_path)) if os.path.exists(probe_path) else None
    instances = f"{num_instances(flags)} " + ("seeds" if counts_seeds(flags) else "images")
    epochs = int(flags["steps"]) * epochs_per_step(flags)
    memory = reduced_memory(knn)
    memory_note = f" ({memory} train images as memory)" if memory else ""
    command_prefix = f"KNN_MAX_TRAIN={memory} " if memory else ""
    return (f"| {describe(flags)} | {encoder_name(flags)} | {instances} | {epochs:.1f} "
            f"| {seconds / 60:.0f} min{rate}, {machine} "
            f"| {100 * knn['top1']:.1f}{memory_note} | {percent(probe, 'trained')} "
            f"| {100 * knn_random['top1']:.1f} / {percent(probe, 'random_baseline')} "
            f"| `{command_prefix}bash experiments/run_cifar10.sh {name}` |")


def plot_curves(names: list[str], path: str):
    """Draws every run's kNN monitor against epochs into `path`; returns the figure."""
    figure, axis = plt.subplots(figsize=(6.5, 4))
    markers = "osD^v<>"  # with the 10 default colours: 70 runs before a colour and marker repeat together
    for index, name in enumerate(names):
        flags = run_flags(name)
        curve = curves(name)["knn_top1"]
        images_per_step = int(flags["batch_size"]) / NUM_TRAIN_IMAGES  # comparable across seeds and images
        axis.plot([step * images_per_step for step, _ in curve], [100 * top1 for _, top1 in curve],
                  marker=markers[index // 10 % len(markers)], label=f"{name} ({encoder_name(flags)})")
    axis.set_xlabel("training images seen / 50 000 (epochs of the training set's size)")
    axis.set_ylabel("weighted kNN top-1 (%), monitor subset")
    axis.set_title("CIFAR-10: kNN accuracy during unsupervised training")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return figure


def main(args: list[str]) -> None:
    if args[:1] == ["--save_curves"]:
        for name in args[1:]:
            save_curves(name)
        return
    plots = [arg.split("=", 1)[1] for arg in args if arg.startswith("--plot=")]
    names = [arg for arg in args if not arg.startswith("--plot=")]
    print("| method | encoder | training instances | epochs | wall time | kNN top-1 | linear top-1 "
          "| random init kNN / linear | command |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in names:
        print(table_row(name))
    for path in plots:
        plot_curves(names, path)


if __name__ == "__main__":
    main(sys.argv[1:])
