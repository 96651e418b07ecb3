"""Benchmark results as a table (stdout), a JSON file and PNG plots of AP against strength (one panel per family,
like the paper's figure)."""
from __future__ import annotations

import dataclasses
import json
import math
from collections import defaultdict
from typing import Sequence

import numpy as np

from exemplar_tf.matching.benchmark import PairResult
from exemplar_tf.matching.warps import FAMILIES


def summarise(results: Sequence[PairResult]) -> list[dict]:
    """Mean AP per (benchmark, family, level, orientation) and descriptor, over the pairs (base images) with at
    least one correspondence. Rows {benchmark, family, level, strength, orientation, pairs, regions1, regions2,
    correspondences, mean_ap: {descriptor: float or nan}} in first-seen order; `pairs` counts the pairs averaged
    (nan-AP pairs excluded); regions1 / regions2 (each image's regions in the common part) and correspondences
    (image-1 regions with a true correspondence) are means over all the row's pairs (one pair: its counts)."""
    groups: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    counts: dict[tuple, dict[str, tuple]] = defaultdict(dict)
    for result in results:
        key = (result.benchmark, result.family, result.level, result.strength, result.orientation)
        groups[key][result.descriptor].append(result.average_precision)
        counts[key][result.image] = (result.regions1, result.regions2, result.correspondences)
    rows = []
    for (benchmark, family, level, strength, orientation), by_descriptor in groups.items():
        finite = {name: [ap for ap in values if not math.isnan(ap)] for name, values in by_descriptor.items()}
        regions1, regions2, correspondences = np.mean(list(counts[benchmark, family, level, strength,
                                                                  orientation].values()), axis=0)
        rows.append({
            "benchmark": benchmark, "family": family, "level": level, "strength": strength,
            "orientation": orientation, "pairs": max(len(values) for values in finite.values()),
            "regions1": float(regions1), "regions2": float(regions2), "correspondences": float(correspondences),
            "mean_ap": {name: float(np.mean(values)) if values else float("nan") for name, values in finite.items()},
        })
    return rows


def overall_means(rows: Sequence[dict], benchmark: str, orientation: str) -> dict[str, float]:
    """{descriptor: mean over the rows of one benchmark and orientation of their mean AP}."""
    per_descriptor = defaultdict(list)
    for row in rows:
        if row["benchmark"] == benchmark and row["orientation"] == orientation:
            for name, value in row["mean_ap"].items():
                if not math.isnan(value):
                    per_descriptor[name].append(value)
    return {name: float(np.mean(values)) for name, values in per_descriptor.items()}


def format_table(rows: Sequence[dict]) -> str:
    """A fixed-width text table: one line per (family, level, orientation) with the pairs averaged, their mean
    regions in image 1 and image 2 and true correspondences, and one column of mean AP per descriptor; then a
    mean line per (benchmark, orientation)."""
    if not rows:
        return "(no pairs)"
    names = list(rows[0]["mean_ap"])
    width = max(12, max(len(row["family"]) for row in rows) + 1)
    header = (f"{'family':<{width}}{'level':>6}{'strength':>10}{'orient':>9}{'pairs':>6}{'regions1':>9}"
              f"{'regions2':>9}{'corr':>6}" + "".join(f"{n:>9}" for n in names))
    lines = [header, "-" * len(header)]
    for row in rows:
        cells = "".join(f"{row['mean_ap'].get(name, float('nan')):>9.3f}" for name in names)
        lines.append(f"{row['family']:<{width}}{row['level']:>6}{row['strength']:>10.4g}{row['orientation']:>9}"
                     f"{row['pairs']:>6}{row['regions1']:>9.0f}{row['regions2']:>9.0f}{row['correspondences']:>6.0f}"
                     f"{cells}")
    for benchmark, orientation in dict.fromkeys((row["benchmark"], row["orientation"]) for row in rows):
        means = overall_means(rows, benchmark, orientation)
        cells = "".join(f"{means.get(name, float('nan')):>9.3f}" for name in names)
        lines.append(f"{'mean ' + benchmark:<{width}}{'':>6}{'':>10}{orientation:>9}{'':>30}{cells}")
    return "\n".join(lines)


def _finite_or_none(value):
    return None if isinstance(value, float) and math.isnan(value) else value


def write_json(path: str, results: Sequence[PairResult], rows: Sequence[dict], config: dict) -> None:
    """{config, summary (rows), means {benchmark: {orientation: {descriptor: AP}}}, pairs [...]} with nan
    written as null."""
    means = defaultdict(dict)
    for benchmark, orientation in dict.fromkeys((row["benchmark"], row["orientation"]) for row in rows):
        means[benchmark][orientation] = overall_means(rows, benchmark, orientation)
    document = {
        "config": config,
        "summary": [{**row, "mean_ap": {k: _finite_or_none(v) for k, v in row["mean_ap"].items()}} for row in rows],
        "means": dict(means),
        "pairs": [{k: _finite_or_none(v) for k, v in dataclasses.asdict(result).items()} for result in results],
    }
    with open(path, "w") as f:
        json.dump(document, f, indent=1)


def _panel_grid(count: int, columns: int = 3):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(columns, count)
    rows = math.ceil(count / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows), squeeze=False)
    for axis in axes.ravel()[count:]:
        axis.set_visible(False)
    return plt, figure, axes.ravel()[:count]


def plot_curves(rows: Sequence[dict], path: str, benchmark: str) -> bool:
    """PNG at `path`: mean AP against strength, one panel per family of `benchmark` ("synthetic": the
    transformation families; "oxford": one panel per sequence, against K of img1 -> imgK), one line per
    (descriptor, orientation), dashed for upright when both orientations were scored. Returns False (and writes
    nothing) when the benchmark has no rows."""
    chosen = [row for row in rows if row["benchmark"] == benchmark]
    families = list(dict.fromkeys(row["family"] for row in chosen))
    if not families:
        return False
    names = list(chosen[0]["mean_ap"])
    orientations = list(dict.fromkeys(row["orientation"] for row in chosen))
    plt, figure, axes = _panel_grid(len(families))
    for axis, family in zip(axes, families):
        for orientation in orientations:
            family_rows = sorted((row for row in chosen if row["family"] == family
                                  and row["orientation"] == orientation), key=lambda row: row["strength"])
            strengths = [row["strength"] for row in family_rows]
            for index, name in enumerate(names):
                label = name if len(orientations) == 1 else f"{name} {orientation}"
                style = "--" if len(orientations) > 1 and orientation == "upright" else "-"
                axis.plot(strengths, [row["mean_ap"][name] for row in family_rows], style, marker="o",
                          color=f"C{index}", label=label)
        axis.set_title(family)
        axis.set_xlabel(FAMILIES[family].unit if family in FAMILIES else "image K (img1 -> imgK)")
        axis.set_ylabel("mean average precision")
        axis.set_ylim(0.0, 1.02)
        axis.set_xticks(strengths)
        axis.grid(alpha=0.3)
    axes[0].legend(loc="lower left")
    figure.suptitle(f"Descriptor matching ({benchmark}): mean area under the precision-recall curve")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True
