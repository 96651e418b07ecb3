"""--train_minutes: the number of steps that fits a wall-clock budget, from the step timed on this machine.

A fresh run with a budget does its whole start-up first (data, state, the objective's start, the random export,
the step-0 kNN reading), then times the training step on a throw-away copy of the state (`measure`: once per
input side the run trains at) and fixes --steps (`fit_steps`) before its first real step. With a step schedule
it fits once more, from its own steps, at `refit_step`: half-way to the first step that depends on --steps (the
first lr drop or the switch to full resolution), where nothing trained so far depended on the count
(`refit_steps`). Either way the run is the run of its final --steps: the schedule, the switches at fractions of
--steps and the resume are those of a run given it (the run directory's flags.cfg records it). Machines differ
2-3x in step time, so a fixed --steps that fills two hours on one CPU takes five on another; a budget fits each.

The fit assumes the machine stays as loaded as it was while the steps were timed: other work started later
slows the run past the budget.
"""
from __future__ import annotations

import dataclasses
import gc
import math
import os
import tempfile
import time

import tensorflow as tf

from exemplar_tf.training.config import TrainConfig
from exemplar_tf.training.step import build_state, make_train_step, objective_of

TIMED_SECONDS = 20.0  # per input side: long enough to average over the input pipeline's jitter
MIN_TIMED_CALLS = 3


@dataclasses.dataclass(frozen=True)
class Costs:
    """Seconds measured on this machine before the first training step."""

    elapsed: float  # since the command started: start-up and the timing itself
    step: float  # one training step, the run's input sides weighted by their share of the steps
    compile: float  # compiling the run's step function(s), each on its first call
    knn_reading: float  # one reading of the kNN monitor (0 without one)
    export: float  # one export of the encoder
    checkpoint: float  # one checkpoint save


@dataclasses.dataclass(frozen=True)
class Refit:
    """A budgeted run's second fit, due at step `at_step` of the command that started the run."""

    at_step: int
    started: float  # time.perf_counter() when the command's run began
    final_s: float  # the last kNN reading, checkpoint and export (`Costs`)


def fit_steps(budget_s: float, costs: Costs, knn_every: int, checkpoint_every: int) -> int:
    """The most steps S that keep the command within `budget_s` seconds:

        elapsed + compile + S * (step + knn_reading / knn_every + checkpoint / checkpoint_every)
                + knn_reading + checkpoint + export <= budget_s

    (a kNN reading every `knn_every` steps, none when 0, and a checkpoint every `checkpoint_every`, then the last
    reading, checkpoint and export). 0 when nothing fits."""
    left = budget_s - costs.elapsed - costs.compile - costs.knn_reading - costs.checkpoint - costs.export
    per_step = costs.step + (costs.knn_reading / knn_every if knn_every else 0.0) + costs.checkpoint / checkpoint_every
    return max(0, math.floor(left / per_step))


def refit_step(config: TrainConfig) -> int | None:
    """The step at which a budgeted run fits --steps again from its own steps: half-way to the first step whose
    training depends on --steps (the first of --lr_decay_at's drops, the switch to full resolution; the last step
    when neither). None with --lr_schedule=cosine (its rate depends on --steps from the first step) or when that
    is step 0."""
    if config.lr_schedule == "cosine":
        return None
    depends = [int(f * config.steps) for f in config.lr_decay_at] + ([config.low_res_steps] if config.low_res_size
                                                                       else [])
    return min(depends, default=config.steps) // 2 or None


def refit_steps(config: TrainConfig, step: int, step_s: float, left_s: float) -> int:
    """--steps for a budgeted run at `refit_step` = `step`: the steps done and the `left_s` seconds' worth at
    `step_s` per step (the run's own seconds per step so far, readings and checkpoints included), but at least
    enough that every step depending on --steps still lies ahead (a run far slower than first timed ends past
    its budget rather than changing what it already trained)."""
    steps = max(step + 1, step + math.floor(left_s / step_s))
    fractions = list(config.lr_decay_at) + ([config.low_res_until] if config.low_res_size else [])
    while any(int(f * steps) <= step for f in fractions):
        steps += 1
    return steps


def input_sides(config: TrainConfig) -> list[tuple[int, float]]:
    """(side of the views, share of the steps) for each input side the run trains at: the low side for
    --low_res_until of the steps with progressive resolution, then the full side."""
    if not config.low_res_size:
        return [(config.input_size, 1.0)]
    return [(config.low_res_size, config.low_res_until), (config.input_size, 1.0 - config.low_res_until)]


def _time_calls(train_steps, iterator, steps_per_call: int, seconds: float) -> tuple[float, float]:
    """(seconds of the first call, seconds per step over the calls after it, at least `seconds` of them)."""
    num_steps = tf.constant(steps_per_call, tf.int32)
    started = time.perf_counter()
    train_steps(iterator, num_steps)  # traces and compiles
    first = time.perf_counter() - started
    started, steps, calls = time.perf_counter(), 0, 0
    while time.perf_counter() - started < seconds or calls < MIN_TIMED_CALLS:
        steps += int(train_steps(iterator, num_steps)["steps"])
        calls += 1
    return first, (time.perf_counter() - started) / steps


def measure(config: TrainConfig, strategy: tf.distribute.Strategy, data, seconds: float = TIMED_SECONDS
            ) -> tuple[float, float, float]:
    """(seconds per step, compile seconds, checkpoint seconds) of `config`'s training step on this machine: a
    throw-away state, built like the run's, trains on the run's input (from its start, on an iterator of its
    own) for `seconds` at each of `input_sides` after a first call that compiles; one save of its checkpoint
    to a temporary folder. The run's own state is not touched. `data`: the run's `inputs.TrainingData`."""
    with strategy.scope():
        state = build_state(config, data.num_instances, data.mean_rgb, data.views, objective_of(config))
    iterator = iter(strategy.distribute_datasets_from_function(lambda ctx: data.dataset_fn(ctx, 0)))
    step = compile_s = 0.0
    for side, share in input_sides(config):
        first, per_step = _time_calls(make_train_step(config, strategy, state, side), iterator,
                                      config.steps_per_call, seconds)
        step += share * per_step
        compile_s += max(0.0, first - config.steps_per_call * per_step)
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        state.checkpoint().write(os.path.join(folder, "ckpt"))
        checkpoint_s = time.perf_counter() - started
    del iterator, state
    gc.collect()  # the throw-away input pipeline's threads must not go on beside the run
    return step, compile_s, checkpoint_s


def summary_line(config: TrainConfig, steps: int, costs: Costs) -> str:
    """What the run tells the user once the steps are fixed."""
    return (f"--train_minutes={config.train_minutes:g}: {steps} steps fit ({costs.step:.3f} s per step timed on this "
            f"machine; {costs.elapsed / 60:.1f} min gone on start-up and timing, {costs.compile:.0f} s to compile); "
            f"the run is now the run of --steps={steps} (recorded in {os.path.join(config.run_dir, 'flags.cfg')}, "
            f"kept on resume)")
