"""Training objectives (methods): each an `Objective` that owns its head, state, loss, update, checkpoint parts,
scalars, export head and class merging. `losses` holds the pure loss functions, `memory_bank` NPID's bank layer.

    objective.py   the base class and Exemplar-CNN's parametric softmax
    bank.py        NPID's bank objectives: exact non-parametric softmax, NCE
    momentum.py    a momentum (key) encoder writing the bank, two views (--momentum_encoder)
"""
from __future__ import annotations

from exemplar_tf.choices import OBJECTIVES
from exemplar_tf.objectives import losses
from exemplar_tf.objectives.bank import NCE, BankObjective, NonParametric
from exemplar_tf.objectives.memory_bank import MemoryBank
from exemplar_tf.objectives.momentum import MomentumNCE, MomentumNonParametric
from exemplar_tf.objectives.objective import Forward, Objective, Settings, Softmax

BY_NAME = {Softmax.name: Softmax, NonParametric.name: NonParametric, NCE.name: NCE}  # keys: choices.OBJECTIVES
WITH_MOMENTUM_ENCODER = {NonParametric.name: MomentumNonParametric, NCE.name: MomentumNCE}


def make(name: str, settings: Settings) -> Objective:
    """The objective `name` (one of choices.OBJECTIVES) with `settings` (not built yet: `Objective.build`)."""
    if name not in BY_NAME:
        raise ValueError(f"objective {name!r} is not one of {', '.join(OBJECTIVES)}")
    if not settings.momentum_encoder:
        return BY_NAME[name](settings)
    if name not in WITH_MOMENTUM_ENCODER:
        raise ValueError(f"a momentum encoder writes a memory bank: objective {name!r} has none")
    return WITH_MOMENTUM_ENCODER[name](settings)


__all__ = ["BY_NAME", "BankObjective", "Forward", "MemoryBank", "NCE", "NonParametric", "Objective", "Settings",
           "Softmax", "losses", "make"]
