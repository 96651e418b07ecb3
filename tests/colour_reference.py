"""The chain's saturation/value and hue steps as RGB -> RGB functions, each with its own HSV round trip: what
`TransformChain` computes in one round trip (`ops.saturation_value_hsv`, `ops.hue_shift_hsv`), written the direct
way so the tests can pin each step's meaning and check the fused chain against the two in turn."""
import tensorflow as tf

from exemplar_tf.augment import transforms as ops


def saturation_value(images, power, multiplier, offset, *, minmax_normalise_first: bool = False) -> tf.Tensor:
    """[B,H,W,3]: in HSV, S and V each become clip(x ** power * multiplier + offset, 0, 1) (power, multiplier,
    offset float32 [B,2], column 0 for S); `minmax_normalise_first` stretches each image to [0, 1] first."""
    if minmax_normalise_first:
        images = ops.minmax_normalise(images)
    return tf.image.hsv_to_rgb(ops.saturation_value_hsv(tf.image.rgb_to_hsv(images), power, multiplier, offset))


def hue_shift(images, shift) -> tf.Tensor:
    """[B,H,W,3]: hue moved by shift (float32 [B], turns of the colour circle), wrapped into [0, 1)."""
    return tf.image.hsv_to_rgb(ops.hue_shift_hsv(tf.image.rgb_to_hsv(images), shift))
