"""A PNG grid of seed patches and their random transformations (the Exemplar-CNN paper's Figure 2).

    python -m exemplar_tf.preview --source=demo --num_seeds=8 --copies=8 --out=preview.png

Each row is one seed: first its untransformed central patch, then `copies` transformed versions.
"""
from __future__ import annotations

from absl import flags

from exemplar_tf import errors
from exemplar_tf.augment.presets import ALL_TRANSFORMS, PRESETS, scale_max_problem  # names only: no TensorFlow
from exemplar_tf.choices import PAPER_TRANSFORMS
from exemplar_tf.errors import cli

flags.DEFINE_string("source", "demo", "image source (see exemplar_tf.data.sources)")
flags.DEFINE_string("split", "train", "split of the source")
flags.DEFINE_string("data_dir", None, "tensorflow-datasets data_dir")
flags.DEFINE_integer("num_seeds", 8, "rows: seeds, one per chosen image")
flags.DEFINE_integer("copies", 8, "transformed copies per seed")
flags.DEFINE_string("out", "preview.png", "PNG to write")
flags.DEFINE_enum("preset", "paper", list(PRESETS), "transformation ranges")
flags.DEFINE_list("transforms", list(PAPER_TRANSFORMS), f"subset of {','.join(ALL_TRANSFORMS)}")
flags.DEFINE_float("scale_max", 0.0, "largest zoom of the scale step (0: the preset's; docs/method.md section 1)")
flags.DEFINE_integer("patch_size", 32, "seed patch side")
flags.DEFINE_integer("seed", 0, "seed for choosing seeds and drawing transformations")
flags.DEFINE_integer("zoom", 2, "each patch enlarged this many times")
cli.check("copies", cli.POSITIVE)
cli.check("zoom", cli.POSITIVE)


def _unknown_transforms(values: flags.FlagValues) -> str | None:
    unknown = [name for name in values.transforms if name not in ALL_TRANSFORMS]
    return f"--transforms has unknown names {unknown}; valid: {', '.join(ALL_TRANSFORMS)}" if unknown else None


cli.check_flags(_unknown_transforms)
cli.check_flags(lambda values: scale_max_problem(values.preset, values.scale_max, "--scale_max"))


def main(argv):
    del argv  # errors.run refuses positional arguments
    from exemplar_tf.augment import preview

    options = flags.FLAGS
    grid = preview.write_preview(options.out, source=options.source, split=options.split,
                                 num_seeds=options.num_seeds, copies=options.copies, preset=options.preset,
                                 transforms=options.transforms, scale_max=options.scale_max,
                                 patch_size=options.patch_size, seed=options.seed,
                                 zoom=options.zoom, data_dir=options.data_dir)
    print(f"wrote {options.out} ({grid.shape[1]}×{grid.shape[0]} pixels)")


if __name__ == "__main__":
    errors.run(main)
