"""Where a step-decay learning rate drops: plain integers, without TensorFlow, so that the run directory's checks
(`training.rundir`) and the time budget (`training.budget`) place the drops exactly where `schedules.step_decay`
does."""
from __future__ import annotations

from typing import Sequence


def drop_steps(steps: int, decay_at: Sequence[float]) -> list[int]:
    """The boundaries of a step decay over `steps` steps with drops at the fractions `decay_at`: int(fraction *
    steps) for each, in increasing order. The rate drops after its boundary: optimizer iteration b + 1 is the first
    at the lower rate (Keras' PiecewiseConstantDecay)."""
    return [int(fraction * steps) for fraction in sorted(decay_at)]
