"""--train_minutes: the number of steps that fits a wall-clock budget, from the step timed on this machine.

A fresh run with a budget does its whole start-up first (data, state, the objective's start, the random export,
the step-0 kNN reading), then times the training step on a throw-away copy of the state (`measure`: at each
input side the run trains at, in turn) and fixes --steps (`fit_steps`) before its first real step. With a step schedule
it fits once more, from its own steps, at `refit_step`: half-way to the first step that depends on --steps (the
first lr drop, the switch to full resolution or the start of the bank neighbours), where nothing trained so far
depended on the count (`refit_steps`). Either way the run is the run of its final --steps: the schedule, the
switches at fractions of --steps and the resume are those of a run given it (the run directory's flags.cfg records
it). Machines differ 2-3x in step time, so a fixed --steps that fills two hours on one CPU takes five on another; a
budget fits each.

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
from collections.abc import Callable

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
    costs: Costs  # measured before the first step
    side_step_s: dict[int, float]  # {input side: seconds per step timed at it}

    @property
    def final_s(self) -> float:
        """The last kNN reading, checkpoint and export."""
        return self.costs.knn_reading + self.costs.checkpoint + self.costs.export


def events_between(every: int, first: int, last: int) -> int:
    """How many multiples of `every` lie in [first, last]: the kNN readings or checkpoints made at those steps
    (0 when `every` is 0, never)."""
    if not every or last < first:
        return 0
    return last // every - (first - 1) // every


def fit_steps(budget_s: float, costs: Costs, knn_every: int, checkpoint_every: int) -> int:
    """The most steps S that keep the command within `budget_s` seconds:

        elapsed + compile + S * (step + knn_reading / knn_every + checkpoint / checkpoint_every)
                + knn_reading + checkpoint + export <= budget_s

    (a kNN reading every `knn_every` steps, none when 0, and a checkpoint every `checkpoint_every`, then the last
    reading, checkpoint and export). 0 when nothing fits."""
    left = budget_s - costs.elapsed - costs.compile - costs.knn_reading - costs.checkpoint - costs.export
    per_step = costs.step + (costs.knn_reading / knn_every if knn_every else 0.0) + costs.checkpoint / checkpoint_every
    return max(0, math.floor(left / per_step))


def dependent_steps(config: TrainConfig) -> list[int]:
    """The steps from which training depends on --steps: the step schedule's lr drops, the switch to full
    resolution (--low_res_size) and the start of the bank neighbours (--neighbours), those the run has."""
    return config.lr_drop_steps + [switch for _, _, _, switch in config.step_switches]


def refit_step(config: TrainConfig) -> int | None:
    """The step at which a budgeted run fits --steps again from its own steps: half-way to the first step whose
    training depends on --steps (the first of --lr_decay_at's drops, the switch to full resolution, the start of
    the bank neighbours; the last step when none). None with --lr_schedule=cosine (its rate depends on --steps
    from the first step) or when that is step 0."""
    if config.lr_schedule == "cosine":
        return None
    return min(dependent_steps(config), default=config.steps) // 2 or None


def bare_step_seconds(config: TrainConfig, costs: Costs, from_step: int, step: int, paced_s: float) -> float:
    """The run's own seconds per step from `from_step` to `step` (`paced_s` seconds between them), less the kNN
    readings and checkpoints made at steps in [from_step, step] at their `costs`; with them, when those costs
    would be over half the time (measured once at the start, they do not describe this run then)."""
    events_s = (costs.knn_reading * events_between(config.knn_every, from_step, step)
                + costs.checkpoint * events_between(config.checkpoint_every, from_step, step))
    bare_s = paced_s - events_s if events_s <= 0.5 * paced_s else paced_s
    return bare_s / (step - from_step)


def refit_steps(config: TrainConfig, refit: Refit, step: int, bare_s: float, left_s: float) -> int:
    """--steps for a budgeted run at `refit_step` = `step`: the most steps whose time after `step` fits `left_s`
    seconds, but at least enough that every step depending on --steps still lies ahead (a run far slower than
    first timed ends past its budget rather than changing what it already trained).

    The time after `step`: each step at its input side's timed seconds (`refit.side_step_s`) scaled by how much
    slower or faster the run went than timed (`bare_s`, its own seconds per step so far, at the side it trained
    at: with progressive resolution the low one), plus the kNN readings and checkpoints at their measured
    costs."""
    costs, timed = refit.costs, refit.side_step_s
    low_side, full_side = config.low_res_size or config.input_size, config.input_size
    pace = bare_s / timed[config.input_size_at(step - 1)]

    def seconds_after(steps: int) -> float:
        switch = min(max(dataclasses.replace(config, steps=steps).low_res_steps, step), steps)  # step: none
        return (pace * ((switch - step) * timed[low_side] + (steps - switch) * timed[full_side])
                + costs.knn_reading * events_between(config.knn_every, step + 1, steps - 1)
                + costs.checkpoint * events_between(config.checkpoint_every, step + 1, steps - 1))

    low = step + 1  # seconds_after grows with the steps: the most that fit, by bisection
    high = step + 2 + math.floor(max(left_s, 0.0) / (pace * min(timed[low_side], timed[full_side])))
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if seconds_after(middle) <= left_s else (low, middle - 1)
    steps = low
    while any(dependent <= step for dependent in dependent_steps(dataclasses.replace(config, steps=steps))):
        steps += 1
    return steps


def input_sides(config: TrainConfig) -> list[tuple[int, float]]:
    """(side of the views, share of the steps) for each input side the run trains at: the low side for
    --low_res_until of the steps with progressive resolution, then the full side."""
    if not config.low_res_size:
        return [(config.input_size, 1.0)]
    return [(config.low_res_size, config.low_res_until), (config.input_size, 1.0 - config.low_res_until)]


def _time_sides(step_functions: dict[int, Callable], iterator, steps_per_call: int, seconds: float,
                clock: Callable[[], float] = time.perf_counter) -> tuple[dict[int, float], dict[int, float]]:
    """({input side: seconds of its first call}, {input side: seconds per step over its calls after the first}).
    Each side's step function is called once (it traces and compiles), then the sides are called in turn until
    each has had `seconds` and MIN_TIMED_CALLS calls: both see the same machine (a host that slows down or speeds
    up, batches prefetched meanwhile), so the ratio between them, which the second fit prices the full side by,
    does not take one window's luck against another's."""
    num_steps = tf.constant(steps_per_call, tf.int32)
    first = {}
    for side, train_steps in step_functions.items():
        started = clock()
        train_steps(iterator, num_steps)
        first[side] = clock() - started
    spent, steps, calls = dict.fromkeys(step_functions, 0.0), dict.fromkeys(step_functions, 0), 0
    while min(spent.values()) < seconds or calls < MIN_TIMED_CALLS:
        for side, train_steps in step_functions.items():
            started = clock()
            steps[side] += int(train_steps(iterator, num_steps)["steps"])
            spent[side] += clock() - started
        calls += 1
    return first, {side: spent[side] / steps[side] for side in step_functions}


def timing_length(config: TrainConfig) -> str:
    """How long `measure` times the step, for the user: ~TIMED_SECONDS, or at least that per input side."""
    return (f"~{TIMED_SECONDS:.0f} s" if len(input_sides(config)) == 1 else
            f"at least {TIMED_SECONDS:.0f} s per input side, the sides in turn")


def measure(config: TrainConfig, strategy: tf.distribute.Strategy, data, seconds: float | None = None
            ) -> tuple[dict[int, float], float, float]:
    """({input side: seconds per step}, compile seconds, checkpoint seconds) of `config`'s training step on this
    machine: a throw-away state, built like the run's, trains on the run's input (from its start, on an iterator of
    its own) for `seconds` (None: TIMED_SECONDS) at each of `input_sides`, the sides in turn after a first call of
    each that compiles (`_time_sides`); one save of its checkpoint to a temporary folder. The run's own state is not
    touched. `data`: the run's `inputs.TrainingData`.
    """
    seconds = TIMED_SECONDS if seconds is None else seconds
    with strategy.scope():
        state = build_state(config, data.num_instances, data.mean_rgb, data.views, objective_of(config))
    iterator = iter(strategy.distribute_datasets_from_function(lambda ctx: data.dataset_fn(ctx, 0)))
    step_functions = {side: make_train_step(config, strategy, state, side) for side, _ in input_sides(config)}
    first_s, side_step_s = _time_sides(step_functions, iterator, config.steps_per_call, seconds)
    compile_s = sum(max(0.0, first_s[side] - config.steps_per_call * side_step_s[side]) for side in step_functions)
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        state.checkpoint().write(os.path.join(folder, "ckpt"))
        checkpoint_s = time.perf_counter() - started
    del iterator, state, step_functions
    gc.collect()  # the throw-away input pipeline's threads must not go on beside the run
    return side_step_s, compile_s, checkpoint_s


def mean_step_seconds(config: TrainConfig, side_step_s: dict[int, float]) -> float:
    """Seconds per step over the run, each input side weighted by its share of the steps (`input_sides`)."""
    return sum(share * side_step_s[side] for side, share in input_sides(config))


def summary_line(config: TrainConfig, steps: int, costs: Costs, side_step_s: dict[int, float]) -> str:
    """What the run tells the user once the steps are fixed (with progressive resolution, each side's timing)."""
    sides = (" (" + ", ".join(f"{side} px {seconds:.3f} s" for side, seconds in side_step_s.items()) + ")"
             if len(side_step_s) > 1 else "")
    return (f"--train_minutes={config.train_minutes:g}: {steps} steps fit ({costs.step:.3f} s per step timed on this "
            f"machine{sides}; {costs.elapsed / 60:.1f} min gone on start-up and timing, {costs.compile:.0f} s to "
            f"compile); the run is now the run of --steps={steps} (recorded in "
            f"{os.path.join(config.run_dir, 'flags.cfg')}, kept on resume)")
