"""NPID's training augmentation (lemniscate.pytorch, ImageNet recipe) as stateless per-image TF ops.

random resized crop (area 0.2–1 of the image, aspect 3/4–4/3) to size×size -> grayscale with p = 0.2 ->
colour jitter 0.4 (brightness, contrast, saturation factors in [0.6, 1.4], hue shift in [-0.4, 0.4], applied in a
random order as torchvision's ColorJitter does) -> horizontal flip with p = 0.5.

Every random draw comes from `tf.random.stateless_*` keyed by an explicit `seed` (int32 or int64 [2]), so one seed
(values and dtype) gives one result eagerly, in `Dataset.map` and inside a `tf.function`. Images are float32 in
[0, 1] after the crop.
"""
from __future__ import annotations

import tensorflow as tf

CROP_AREA_RANGE = (0.2, 1.0)
CROP_ASPECT_RANGE = (3 / 4, 4 / 3)
CROP_MAX_ATTEMPTS = 10  # then the whole image, as TF's box sampler does (torchvision: a central crop)
GRAYSCALE_PROBABILITY = 0.2
JITTER_STRENGTH = 0.4  # brightness, contrast and saturation factors in [1 - s, 1 + s]
HUE_JITTER = 0.4  # hue shift in [-h, h], as a fraction of the colour circle
FLIP_PROBABILITY = 0.5


def npid_augment(image: tf.Tensor, size: int, seed: tf.Tensor) -> tf.Tensor:
    """uint8 [H,W,3] -> float32 [size,size,3] in [0,1]: crop, grayscale, colour jitter, flip."""
    crop_seed, gray_seed, jitter_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
    augmented = random_resized_crop(image, size, crop_seed)
    augmented = random_grayscale(augmented, GRAYSCALE_PROBABILITY, gray_seed)
    augmented = color_jitter(augmented, JITTER_STRENGTH, HUE_JITTER, jitter_seed)
    return random_horizontal_flip(augmented, FLIP_PROBABILITY, flip_seed)


def sample_crop_box(image_shape: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(begin int32 [3], size int32 [3]) of a box covering CROP_AREA_RANGE of the image with an aspect ratio (w/h)
    in CROP_ASPECT_RANGE (uniform in ratio), for `tf.slice`."""
    begin, box_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        image_shape,
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=seed,
        min_object_covered=0.0,
        aspect_ratio_range=CROP_ASPECT_RANGE,
        area_range=CROP_AREA_RANGE,
        max_attempts=CROP_MAX_ATTEMPTS,
        use_image_if_no_bounding_boxes=True,
    )
    return begin, box_size


def random_resized_crop(image: tf.Tensor, size: int, seed: tf.Tensor) -> tf.Tensor:
    """uint8 [H,W,3] -> float32 [size,size,3] in [0,1]: a `sample_crop_box` crop, bilinear resize.

    Shrinking is antialiased (as PIL's resize in the original); enlarging uses the plain, faster bilinear kernel,
    which antialiasing would not change.
    """
    begin, box_size = sample_crop_box(tf.shape(image), seed)
    crop = tf.cast(tf.slice(image, begin, box_size), tf.float32) / 255.0
    resized = tf.cond(tf.reduce_max(box_size[:2]) > size,
                      lambda: tf.image.resize(crop, [size, size], method="bilinear", antialias=True),
                      lambda: tf.image.resize(crop, [size, size], method="bilinear"))
    return tf.clip_by_value(resized, 0.0, 1.0)


def grayscale(image: tf.Tensor) -> tf.Tensor:
    """float32 [H,W,3] -> [H,W,1] luma (0.299 R + 0.587 G + 0.114 B)."""
    return tf.image.rgb_to_grayscale(image)


def random_grayscale(image: tf.Tensor, probability: float, seed: tf.Tensor) -> tf.Tensor:
    """float32 [H,W,3]: with `probability`, the luma copied into all three channels; else `image`."""
    gray = tf.broadcast_to(grayscale(image), tf.shape(image))
    return tf.where(tf.random.stateless_uniform([], seed) < probability, gray, image)


def adjust_brightness(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """float32 [H,W,3] in [0,1] scaled by `factor` (torchvision's brightness), clipped."""
    return tf.clip_by_value(image * factor, 0.0, 1.0)


def adjust_contrast(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """Blend with the image's mean luma: factor 0 gives a flat gray image, 1 the image (torchvision's contrast)."""
    mean = tf.reduce_mean(grayscale(image))
    return tf.clip_by_value(factor * image + (1.0 - factor) * mean, 0.0, 1.0)


def adjust_saturation(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """Blend with the per-pixel luma: factor 0 gives the grayscale image, 1 the image (torchvision's saturation)."""
    return tf.clip_by_value(factor * image + (1.0 - factor) * grayscale(image), 0.0, 1.0)


def adjust_hue(image: tf.Tensor, shift: tf.Tensor) -> tf.Tensor:
    """Hue rotated by `shift` (fraction of the colour circle, wraps around)."""
    return tf.clip_by_value(tf.image.adjust_hue(image, shift), 0.0, 1.0)


def color_jitter(image: tf.Tensor, strength: float, hue: float, seed: tf.Tensor) -> tf.Tensor:
    """float32 [H,W,3] in [0,1]: brightness, contrast, saturation (factors in [1-strength, 1+strength]) and hue
    (shift in [-hue, hue]) adjustments, applied in a random order."""
    factor_seed, shift_seed, order_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    factors = tf.random.stateless_uniform([3], factor_seed, 1.0 - strength, 1.0 + strength)
    shift = tf.random.stateless_uniform([], shift_seed, -hue, hue)
    order = tf.argsort(tf.random.stateless_uniform([4], order_seed))
    adjustments = [
        lambda x: adjust_brightness(x, factors[0]),
        lambda x: adjust_contrast(x, factors[1]),
        lambda x: adjust_saturation(x, factors[2]),
        lambda x: adjust_hue(x, shift),
    ]
    for step in range(len(adjustments)):
        image = tf.switch_case(order[step], [lambda f=f, x=image: f(x) for f in adjustments])
    return image


def random_horizontal_flip(image: tf.Tensor, probability: float, seed: tf.Tensor) -> tf.Tensor:
    """[H,W,C]: mirrored left-right with `probability`; else `image`."""
    return tf.where(tf.random.stateless_uniform([], seed) < probability, tf.reverse(image, axis=[1]), image)
