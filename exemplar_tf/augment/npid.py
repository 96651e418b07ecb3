"""NPID's training augmentation (lemniscate.pytorch, ImageNet recipe) as stateless per-image TF ops.

random resized crop (area 0.2–1 of the image, aspect 3/4–4/3) to size×size -> grayscale with p = 0.2 ->
colour jitter 0.4 (brightness, contrast, saturation factors in [0.6, 1.4], hue shift in [-0.4, 0.4], applied in a
random order as torchvision's ColorJitter does) -> horizontal flip with p = 0.5.

Every random draw comes from `tf.random.stateless_*` keyed by an explicit `seed` (int32 or int64 [2]), so one seed
(values and dtype) gives one result eagerly, in `Dataset.map` and inside a `tf.function`. Images are float32 in
[0, 1] after the crop.

`npid_augment_batch` is the same augmentation for a whole batch (`--augment_on=device`, inside the training step):
one seed per batch, every choice drawn per image, each step a batched op (the crop one `tf.image.crop_and_resize`,
without antialiasing); it follows the same distribution, not the same values.
"""
from __future__ import annotations

import tensorflow as tf

from exemplar_tf.augment import transforms

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


# The same augmentation for a whole batch at once (`--augment_on=device`).

def npid_augment_batch(images: tf.Tensor, size: int, seed: tf.Tensor) -> tf.Tensor:
    """uint8 [B,H,W,3] (one size) -> float32 [B,size,size,3] in [0,1]: `npid_augment`'s four steps, each image
    with its own draws from the one batch seed (int32 or int64 [2])."""
    crop_seed, gray_seed, jitter_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
    augmented = random_resized_crop_batch(images, size, crop_seed)
    augmented = random_grayscale_batch(augmented, GRAYSCALE_PROBABILITY, gray_seed)
    augmented = color_jitter_batch(augmented, JITTER_STRENGTH, HUE_JITTER, jitter_seed)
    return random_horizontal_flip_batch(augmented, FLIP_PROBABILITY, flip_seed)


def sample_crop_boxes(batch_size, height, width, seed: tf.Tensor) -> tf.Tensor:
    """float32 [B,4] crop boxes (top, left, box height, box width) in pixels of an H×W image: the continuous
    counterpart of `sample_crop_box` (TF's sampler). Each of CROP_MAX_ATTEMPTS attempts draws an aspect ratio
    (w/h) uniform in CROP_ASPECT_RANGE and a height uniform between those giving CROP_AREA_RANGE's smallest area
    and its largest (capped so the width fits); the first attempt whose height fits is taken, else the whole
    image. The offset is uniform over the positions inside the image."""
    height, width = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    aspect_seed, height_seed, offset_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    shape = [batch_size, CROP_MAX_ATTEMPTS]
    aspect = tf.random.stateless_uniform(shape, aspect_seed, *CROP_ASPECT_RANGE)
    low = tf.sqrt(CROP_AREA_RANGE[0] * height * width / aspect)
    high = tf.minimum(tf.sqrt(CROP_AREA_RANGE[1] * height * width / aspect), width / aspect)
    box_height = low + tf.random.stateless_uniform(shape, height_seed) * (high - low)
    fits = (box_height <= height) & (low <= high)
    first = tf.argmax(tf.cast(fits, tf.int32), axis=1)  # 0 when none fits
    chosen = tf.reduce_any(fits, axis=1)
    box_height = tf.where(chosen, tf.gather(box_height, first, batch_dims=1), height)
    box_width = tf.where(chosen, tf.minimum(tf.gather(aspect, first, batch_dims=1) * box_height, width), width)
    offsets = tf.random.stateless_uniform([batch_size, 2], offset_seed)
    top = offsets[:, 0] * (height - box_height)
    left = offsets[:, 1] * (width - box_width)
    return tf.stack([top, left, box_height, box_width], axis=1)


def crop_and_resize_boxes(boxes: tf.Tensor, height, width, size: int) -> tf.Tensor:
    """float32 [B,4] pixel boxes (top, left, h, w) -> `tf.image.crop_and_resize` boxes (y1, x1, y2, x2) whose
    size×size sample grid is the one `tf.image.resize` (half-pixel centres) puts on the box: output pixel i
    samples top + (i + 0.5) h / size - 0.5. Clamped to the image (resize clamps where crop_and_resize would
    extrapolate), which moves the outermost samples of enlarged crops by under half a pixel."""
    height, width = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    top, left, box_height, box_width = tf.unstack(boxes, axis=1)
    y1 = top + 0.5 * box_height / size - 0.5
    y2 = top + box_height - 0.5 * box_height / size - 0.5
    x1 = left + 0.5 * box_width / size - 0.5
    x2 = left + box_width - 0.5 * box_width / size - 0.5
    scale = tf.stack([height - 1.0, width - 1.0, height - 1.0, width - 1.0])
    return tf.clip_by_value(tf.stack([y1, x1, y2, x2], axis=1) / tf.maximum(scale, 1.0), 0.0, 1.0)


def random_resized_crop_batch(images: tf.Tensor, size: int, seed: tf.Tensor) -> tf.Tensor:
    """uint8 [B,H,W,3] -> float32 [B,size,size,3] in [0,1]: one `sample_crop_boxes` box per image, bilinear, in
    one `tf.image.crop_and_resize`. Unlike `random_resized_crop` it does not antialias: a crop shrunk by more
    than 2x (source images well above `size`) is sampled at size×size points and aliases; CIFAR-sized sources
    (crops at most the image, enlarged to 32) are unaffected."""
    shape = tf.shape(images)
    boxes = crop_and_resize_boxes(sample_crop_boxes(shape[0], shape[1], shape[2], seed), shape[1], shape[2], size)
    crops = tf.image.crop_and_resize(images, boxes, tf.range(shape[0]), [size, size], method="bilinear")
    return tf.clip_by_value(crops / 255.0, 0.0, 1.0)


def _per_image(values: tf.Tensor) -> tf.Tensor:
    """[B] -> [B,1,1,1], to broadcast one value per image over [B,H,W,C]."""
    return values[:, None, None, None]


def random_grayscale_batch(images: tf.Tensor, probability: float, seed: tf.Tensor) -> tf.Tensor:
    """float32 [B,H,W,3]: each image, with `probability`, its luma in all three channels; else unchanged."""
    return transforms.to_grayscale(images, tf.random.stateless_uniform(tf.shape(images)[:1], seed) < probability)


def adjust_contrast_batch(images: tf.Tensor, factors: tf.Tensor) -> tf.Tensor:
    """float32 [B,H,W,3], factors [B]: `adjust_contrast` per image (blend with that image's mean luma)."""
    mean = tf.reduce_mean(grayscale(images), axis=[1, 2, 3], keepdims=True)
    factors = _per_image(factors)
    return tf.clip_by_value(factors * images + (1.0 - factors) * mean, 0.0, 1.0)


def adjust_hue_batch(images: tf.Tensor, shifts: tf.Tensor) -> tf.Tensor:
    """float32 [B,H,W,3] in [0,1], shifts [B]: `adjust_hue` per image (HSV round trip, hue rotated, wrapping)."""
    hue, saturation, value = tf.unstack(tf.image.rgb_to_hsv(images), axis=-1)
    hue = tf.math.floormod(hue + shifts[:, None, None], 1.0)
    return tf.clip_by_value(tf.image.hsv_to_rgb(tf.stack([hue, saturation, value], axis=-1)), 0.0, 1.0)


def apply_jitter_batch(images: tf.Tensor, factors: tf.Tensor, shifts: tf.Tensor, order: tf.Tensor) -> tf.Tensor:
    """float32 [B,H,W,3] in [0,1]; factors [B,3] (brightness, contrast, saturation), shifts [B] (hue), order int32
    [B,4] (a permutation of 0..3 per image: 0 brightness, 1 contrast, 2 saturation, 3 hue). At each of the four
    positions the batch is partitioned by the adjustment its order names there, each part gets its adjustment as
    one batched op, and the parts are stitched back: every image gets its four adjustments once each, in its order
    (computing all four for every image and choosing with tf.where gives the same result, at 4-5x the CPU time)."""
    rows = tf.range(tf.shape(images)[0])
    for position in range(4):
        chosen = order[:, position]
        parts = tf.dynamic_partition(images, chosen, 4)
        part_factors = tf.dynamic_partition(factors, chosen, 4)
        part_shifts = tf.dynamic_partition(shifts, chosen, 4)
        adjusted = [
            adjust_brightness(parts[0], _per_image(part_factors[0][:, 0])),
            adjust_contrast_batch(parts[1], part_factors[1][:, 1]),
            adjust_saturation(parts[2], _per_image(part_factors[2][:, 2])),
            adjust_hue_batch(parts[3], part_shifts[3]),
        ]
        images = tf.dynamic_stitch(tf.dynamic_partition(rows, chosen, 4), adjusted)
    return images


def color_jitter_batch(images: tf.Tensor, strength: float, hue: float, seed: tf.Tensor) -> tf.Tensor:
    """float32 [B,H,W,3] in [0,1]: `color_jitter` per image (own factors, hue shift and random order)."""
    factor_seed, shift_seed, order_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    batch_size = tf.shape(images)[0]
    factors = tf.random.stateless_uniform([batch_size, 3], factor_seed, 1.0 - strength, 1.0 + strength)
    shifts = tf.random.stateless_uniform([batch_size], shift_seed, -hue, hue)
    order = tf.argsort(tf.random.stateless_uniform([batch_size, 4], order_seed), axis=1)  # int32
    return apply_jitter_batch(images, factors, shifts, order)


def random_horizontal_flip_batch(images: tf.Tensor, probability: float, seed: tf.Tensor) -> tf.Tensor:
    """[B,H,W,C]: each image mirrored left-right with `probability`; else unchanged."""
    return transforms.mirror(images, tf.random.stateless_uniform(tf.shape(images)[:1], seed) < probability)
