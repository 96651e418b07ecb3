"""A grid of seed patches and their random transformations (the Exemplar-CNN paper's Figure 2); the program is
`exemplar_tf.preview`.

Each row is one seed: first its untransformed central patch, then `copies` transformed versions.
"""
from __future__ import annotations

import os
from typing import Sequence

import matplotlib.image
import numpy as np
import tensorflow as tf

from exemplar_tf.augment import surrogate
from exemplar_tf.augment.chain import TransformChain
from exemplar_tf.choices import PAPER_TRANSFORMS
from exemplar_tf.data import patches, sources
from exemplar_tf.data.images import tile

GAP = 2  # pixels between cells (white)


def seed_rows(seeds: patches.Seeds, chain: TransformChain, copies: int, seed: int) -> np.ndarray:
    """float32 [N, 1 + copies, P, P, 3] in [0,1]: each seed's central patch, then `copies` transformations."""
    windows = tf.cast(seeds.windows, tf.float32) / 255.0
    num_seeds = len(seeds.windows)
    repeated = tf.repeat(windows, copies, axis=0)  # [N*copies,S,S,3], seed-major
    transformed = chain(repeated, tf.constant([seed, 0], tf.int32)).numpy()
    transformed = transformed.reshape(num_seeds, copies, *transformed.shape[1:])
    originals = seeds.central_patches().astype(np.float32)[:, None] / 255.0
    return np.concatenate([originals, transformed], axis=1)


def grid_image(cells: np.ndarray, zoom: int = 1, gap: int = GAP) -> np.ndarray:
    """uint8 [R*(P*zoom+gap)+gap, C*(P*zoom+gap)+gap, 3] from cells float [R,C,P,P,3] in [0,1], each cell enlarged
    `zoom` times (nearest neighbour), on white."""
    enlarged = np.repeat(np.repeat(np.clip(cells, 0, 1), zoom, axis=2), zoom, axis=3)
    return tile(np.round(enlarged * 255).astype(np.uint8), gap=gap, margin=gap, fill=255)


def write_preview(out: str, *, source: str = "demo", split: str = "train", num_seeds: int = 8, copies: int = 8,
                  preset: str = "paper", transforms: Sequence[str] = PAPER_TRANSFORMS, scale_max: float = 0.0,
                  patch_size: int = 32, seed: int = 0, zoom: int = 2, data_dir: str | None = None) -> np.ndarray:
    """Samples `num_seeds` seeds (one per image) from the source, writes the grid PNG to `out`, returns it.
    scale_max: the chain's largest zoom in place of the preset's (0: the preset's)."""
    images = sources.load_source(source, split, data_dir=data_dir, min_size=patches.min_image_side(patch_size)).dataset
    seeds = patches.sample_seeds(images, num_seeds=num_seeds, patch_size=patch_size, rng_seed=seed)
    chain = TransformChain(preset, transforms, surrogate.fit_color_pca(seeds), patch_size, scale_max)
    grid = grid_image(seed_rows(seeds, chain, copies, seed), zoom)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    matplotlib.image.imsave(out, grid)
    return grid
