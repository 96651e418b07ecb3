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


def moved_drops(decay_at: Sequence[float], old_steps: int, new_steps: int,
                trained_to: int) -> list[tuple[float, int, int]]:
    """(fraction, old boundary, new boundary) for each drop that changing the steps from `old_steps` to `new_steps`
    moves within the iterations [0, `trained_to`) a run has trained: iteration i trains at the lower rate when
    i > b, so a move from b to b' changes a trained rate when min(b + 1, trained_to) != min(b' + 1, trained_to)."""
    pairs = zip(sorted(decay_at), drop_steps(old_steps, decay_at), drop_steps(new_steps, decay_at))
    return [(fraction, was, now) for fraction, was, now in pairs
            if min(was + 1, trained_to) != min(now + 1, trained_to)]
