"""Training objectives: `losses` (pure functions) and `memory_bank.MemoryBank` (NPID's bank as a Keras layer)."""
from exemplar_tf.objectives import losses
from exemplar_tf.objectives.memory_bank import MemoryBank

__all__ = ["losses", "MemoryBank"]
