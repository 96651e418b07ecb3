"""Training precision: Keras dtype policies applied to the encoder only, and the float32 copy that evaluation
and export use.

`float32` computes and stores everything in float32. `mixed_bfloat16` / `mixed_float16` keep the variables in
float32 and compute the encoder's layers in bfloat16 / float16. The heads, losses, memory bank, NCE's Z, kNN and
the probe stay float32 (heads are built outside the policy and return float32).
"""
from __future__ import annotations

import contextlib

import keras

from exemplar_tf.choices import PRECISIONS



@contextlib.contextmanager
def dtype_policy(precision: str):
    """Sets the global Keras dtype policy to `precision` inside the block and restores the previous one after."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def needs_loss_scaling(precision: str) -> bool:
    """float16's narrow exponent range underflows small gradients without loss scaling; bfloat16's does not."""
    return precision == "mixed_float16"
