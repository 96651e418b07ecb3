"""Learning-rate schedules: step decay (training and fine-tuning, `finetuning.loop`) and cosine decay with a
linear warm-up (training, `--lr_schedule=cosine`)."""
from __future__ import annotations

from typing import Sequence

import keras

from exemplar_tf.optim.drops import drop_steps


def step_decay(lr: float, steps: int, decay_at: Sequence[float], decay_factor: float, *,
               constant_as_float: bool = False) -> keras.optimizers.schedules.LearningRateSchedule | float:
    """`lr`, multiplied by `decay_factor` at each fraction of the `steps` in `decay_at` (boundaries at
    `drops.drop_steps`: int(fraction * steps), in increasing order).

    Without fractions the rate stays `lr`: as a constant schedule, or with `constant_as_float` as the float `lr`
    itself. The two give the same rates but different checkpoints: a Keras optimizer given a float keeps a
    learning-rate variable among its variables (stored by position), one given a schedule does not. Training
    checkpoints have the schedule's layout, fine-tuning checkpoints the float's.
    """
    boundaries = drop_steps(steps, decay_at)
    if not boundaries:
        return lr if constant_as_float else keras.optimizers.schedules.PiecewiseConstantDecay([steps], [lr, lr])
    return keras.optimizers.schedules.PiecewiseConstantDecay(
        boundaries, [lr * decay_factor**i for i in range(len(boundaries) + 1)])


def cosine_decay(lr: float, steps: int, warmup_steps: int = 0) -> keras.optimizers.schedules.LearningRateSchedule:
    """A linear warm-up from 0 to `lr` over `warmup_steps`, then half a cosine from `lr` down to 0 at `steps`."""
    if not 0 <= warmup_steps < steps:
        raise ValueError(f"warmup_steps must be in [0, {steps}), got {warmup_steps}")
    if not warmup_steps:
        return keras.optimizers.schedules.CosineDecay(lr, steps)
    return keras.optimizers.schedules.CosineDecay(0.0, steps - warmup_steps, warmup_target=lr,
                                                  warmup_steps=warmup_steps)
