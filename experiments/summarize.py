"""Turns the CIFAR-10 experiment outputs into RESULTS.md's table rows and its kNN-vs-epoch plot.

    python experiments/summarize.py cifar10_exemplar_softmax cifar10_exemplar_nce cifar10_exemplar_nce_long

Reads, for each run name: runs/<name>/flags.cfg and runs/<name>/tensorboard (kNN top-1 over training, logged
on an evenly spread 2000/2000 train/test subset), and experiments/results/<name>/{time.json, knn_trained.json,
knn_random.json, probe.json (optional)} written by experiments/run_cifar10.sh. Prints one markdown table row per run and
writes experiments/results/knn_vs_epoch.png.
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


def knn_curve(name: str) -> list[tuple[int, float]]:
    """(step, kNN top-1) pairs from the run's TensorBoard events, sorted by step, one per step."""
    points = {}
    for path in glob.glob(f"runs/{name}/tensorboard/events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == "knn_top1":
                    points[event.step] = float(tf.make_ndarray(value.tensor))
    return sorted(points.items())


def num_instances(flags: dict[str, str]) -> int:
    """Surrogate classes (exemplar) or training images (npid; --max_instances keeps an evenly spread subset)."""
    if flags["method"] == "exemplar":
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
    return METHODS[flags["objective"]] + batch_norm


def percent(probe: dict | None, encoder: str) -> str:
    """The probe's accuracy for "trained" or "random_baseline" in %, or "not run" without a probe.json."""
    return "not run" if probe is None else f"{100 * probe[encoder]['accuracy_mean']:.1f}"


def reduced_memory(knn: dict) -> int:
    """How many training images kNN used as its memory when fewer than all (KNN_MAX_TRAIN), else 0."""
    return 0 if knn["train"] == NUM_TRAIN_IMAGES else knn["train"]


def table_row(name: str) -> str:
    flags = run_flags(name)
    out = os.path.join(RESULTS, name)
    seconds = json.load(open(os.path.join(out, "time.json")))["train_seconds"]
    knn = json.load(open(os.path.join(out, "knn_trained.json")))
    knn_random = json.load(open(os.path.join(out, "knn_random.json")))
    probe_path = os.path.join(out, "probe.json")
    probe = json.load(open(probe_path)) if os.path.exists(probe_path) else None
    instances = f"{num_instances(flags)} " + ("seeds" if flags["method"] == "exemplar" else "images")
    epochs = int(flags["steps"]) * epochs_per_step(flags)
    memory = reduced_memory(knn)
    memory_note = f" ({memory} train images as memory)" if memory else ""
    command_prefix = f"KNN_MAX_TRAIN={memory} " if memory else ""
    return (f"| {describe(flags)} | {flags['arch']} | {instances} | {epochs:.1f} "
            f"| {seconds / 60:.0f} min, 2-core AMD EPYC "
            f"| {100 * knn['top1']:.1f}{memory_note} | {percent(probe, 'trained')} "
            f"| {100 * knn_random['top1']:.1f} / {percent(probe, 'random_baseline')} "
            f"| `{command_prefix}bash experiments/run_cifar10.sh {name}` |")


def plot_curves(names: list[str], path: str) -> None:
    figure, axis = plt.subplots(figsize=(6.5, 4))
    for name in names:
        flags = run_flags(name)
        curve = knn_curve(name)
        axis.plot([step * epochs_per_step(flags) for step, _ in curve], [100 * top1 for _, top1 in curve],
                  marker="o", label=f"{name} ({flags['arch']})")
    axis.set_xlabel("epochs over the training instances (seeds or images)")
    axis.set_ylabel("weighted kNN top-1 (%), monitor subset")
    axis.set_title("CIFAR-10: kNN accuracy during unsupervised training")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(names: list[str]) -> None:
    print("| method | encoder | training instances | epochs | wall time | kNN top-1 | linear top-1 "
          "| random init kNN / linear | command |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in names:
        print(table_row(name))
    plot_curves(names, os.path.join(RESULTS, "knn_vs_epoch.png"))


if __name__ == "__main__":
    main(sys.argv[1:])
