"""Which setting makes the training step fastest on this CPU: every lever in its own process (oneDNN's and
Grappler's switches are per process), interleaved over rounds so that a busy machine slows them alike.

    python benchmarks/step_levers.py --archs=resnet18 --objectives=softmax,nce [--rounds=2]
        [--reference="/path/to/venv/bin/python /path/to/other_framework_step.py"]

Each lever runs `benchmarks/train_step.py` (the project's own step: forward, loss, backward, SGD, bank and Z
updates, NaN check; synthetic 32x32 batches, no XLA) with the environment and flags below:
  float32          the default policy
  mixed_bfloat16   Keras' mixed_bfloat16 policy (bf16 compute, float32 variables, casts around every layer)
  grappler_bf16    float32 policy + Grappler's oneDNN bf16 auto-mixed-precision graph rewrite
  fpmath_bf16      float32 policy + ONEDNN_DEFAULT_FPMATH_MODE=BF16: oneDNN's f32 convolutions and matmuls compute
                   in bf16 (f32 in and out, no casts in the graph; on CPUs without bf16 hardware it does nothing)
  bf16_fpmath      mixed_bfloat16 + ONEDNN_DEFAULT_FPMATH_MODE=BF16 (the layers Keras keeps in float32 too)
  threads_2_1      float32 with TF_NUM_INTRAOP_THREADS=<cores>, TF_NUM_INTEROP_THREADS=1
--before=<checkout> also times every lever on an earlier commit (a git worktree), interleaved: a change's gain.
--reference runs any other command once per round, interleaved with the levers; its last stdout line must be a
JSON object whose numeric leaves are images/s (e.g. PyTorch's own step, run from its own venv outside this
project); the ratio of the fastest lever to each of them is reported.
One JSON line per lever and round, then per lever and objective the median over rounds and its ratio to float32,
then the best lever per arch and objective; every line names the CPU.
"""
from __future__ import annotations

import json
import os
import shlex
import statistics
import subprocess
import sys

from absl import app, flags

from machine import cpu_flags, cpu_name  # benchmarks/ is on the path when run

FLAGS = flags.FLAGS
flags.DEFINE_list("archs", ["resnet18"], "encoders (resnet18:32 = base width 32)")
flags.DEFINE_list("objectives", ["softmax", "nce"], "objectives of the step")
flags.DEFINE_list("levers", None, "levers to time (default: all)")
flags.DEFINE_integer("rounds", 2, "interleaved rounds")
flags.DEFINE_integer("steps", 3, "steps per timed call (train_step.py --steps)")
flags.DEFINE_integer("repeats", 2, "timed calls per process (train_step.py --repeats)")
flags.DEFINE_integer("timeout", 900, "seconds allowed per process")
flags.DEFINE_string("before", "", "a checkout of an earlier commit (git worktree): every lever is also timed with its "
                    "benchmarks/train_step.py and package, as <lever>@before, interleaved with the others")
flags.DEFINE_string("reference", "", "a command timing another framework's step (see the module docstring)")

FPMATH_BF16 = {"ONEDNN_DEFAULT_FPMATH_MODE": "BF16"}
LEVERS = {
    "float32": ({}, ["--precisions=float32"]),
    "mixed_bfloat16": ({}, ["--precisions=mixed_bfloat16"]),
    "grappler_bf16": ({}, ["--precisions=float32", "--grappler_bf16"]),
    "fpmath_bf16": (FPMATH_BF16, ["--precisions=float32"]),
    "bf16_fpmath": (FPMATH_BF16, ["--precisions=mixed_bfloat16"]),
    "threads_2_1": ({"TF_NUM_INTRAOP_THREADS": str(os.cpu_count()), "TF_NUM_INTEROP_THREADS": "1"},
                    ["--precisions=float32"]),
}
TRAIN_STEP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_step.py")


def run_lever(lever: str, arch: str) -> dict[str, float]:
    """{objective: images/s} of one process of train_step.py with `lever`'s environment and flags (`<lever>@before`:
    the --before checkout's train_step.py and package)."""
    lever, _, tree = lever.partition("@")
    env_changes, extra = LEVERS[lever]
    script = os.path.join(FLAGS.before, "benchmarks", "train_step.py") if tree else TRAIN_STEP
    if tree:
        env_changes = {**env_changes, "PYTHONPATH": FLAGS.before}
    command = [sys.executable, script, f"--archs={arch}", f"--objectives={','.join(FLAGS.objectives)}",
               "--jit_compile=false", f"--steps={FLAGS.steps}", f"--repeats={FLAGS.repeats}", *extra]
    done = subprocess.run(command, env={**os.environ, **env_changes}, capture_output=True, text=True,
                          timeout=FLAGS.timeout)
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    figures = {r["objective"]: r["images_per_s"] for r in records if "images_per_s" in r}
    if not figures:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"{lever}: exit {done.returncode}: {tail[:300]}")
    return figures


def run_reference() -> dict[str, float]:
    """The numeric leaves of the reference command's last JSON line, by their dotted path."""
    done = subprocess.run(shlex.split(FLAGS.reference), capture_output=True, text=True, timeout=FLAGS.timeout)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"reference: exit {done.returncode}: {done.stderr.strip()[-300:]}")

    def leaves(value, path):
        if isinstance(value, dict):
            for key, inner in value.items():
                yield from leaves(inner, f"{path}.{key}" if path else key)
        elif isinstance(value, (int, float)):
            yield path, float(value)

    return dict(leaves(json.loads(lines[-1]), ""))


def summary(common: dict, arch: str, rates: dict[str, list[dict[str, float]]], reference: list[dict[str, float]]):
    """The median per lever and objective, its ratio to float32, the best lever and its ratio to the reference."""
    for objective in FLAGS.objectives:
        medians = {lever: statistics.median(r[objective] for r in runs) for lever, runs in rates.items()
                   if runs and all(objective in r for r in runs)}
        for lever, value in medians.items():
            record = {**common, "arch": arch, "objective": objective, "lever": lever, "images_per_s": round(value, 1)}
            if "float32" in medians:
                record["over_float32"] = round(value / medians["float32"], 3)
            yield record
        if not medians:
            continue
        best = max(medians, key=medians.get)
        record = {**common, "arch": arch, "objective": objective, "figure": "best_lever", "lever": best,
                  "images_per_s": medians[best]}
        for name in (reference[0] if reference else {}):
            record[f"over_reference.{name}"] = round(medians[best] / statistics.median(r[name] for r in reference), 3)
        yield record
    if {"softmax", "nce"} <= set(FLAGS.objectives):
        for lever, runs in rates.items():
            if runs and all("softmax" in r and "nce" in r for r in runs):
                ratio = statistics.median(r["softmax"] / r["nce"] for r in runs)
                yield {**common, "arch": arch, "lever": lever, "figure": "nce_over_softmax_step_time",
                       "ratio": round(ratio, 3)}


def main(argv):
    del argv
    levers = FLAGS.levers or list(LEVERS)
    unknown = sorted(set(levers) - set(LEVERS))
    if unknown:
        raise app.UsageError(f"unknown levers {unknown}; known: {', '.join(LEVERS)}")
    common = {"cpu": cpu_name(), "cpu_flags": cpu_flags(), "cores": os.cpu_count(), "batch_size": 128,
              "steps": FLAGS.steps, "repeats": FLAGS.repeats, "rounds": FLAGS.rounds}
    if FLAGS.before:
        levers = [name for lever in levers for name in (lever, f"{lever}@before")]
    for arch in FLAGS.archs:
        rates = {lever: [] for lever in levers}
        reference = []
        for round_number in range(FLAGS.rounds):
            for lever in levers:
                try:
                    figures = run_lever(lever, arch)
                except (RuntimeError, subprocess.TimeoutExpired) as error:
                    print(json.dumps({**common, "arch": arch, "lever": lever, "round": round_number,
                                      "error": str(error)}), flush=True)
                    continue
                rates[lever].append(figures)
                print(json.dumps({**common, "arch": arch, "lever": lever, "round": round_number,
                                  "images_per_s": figures}), flush=True)
            if FLAGS.reference:
                reference.append(run_reference())
                print(json.dumps({**common, "reference": FLAGS.reference, "round": round_number,
                                  "images_per_s": reference[-1]}), flush=True)
        for record in summary(common, arch, rates, reference):
            print(json.dumps(record), flush=True)


if __name__ == "__main__":
    app.run(main)
