"""Export an encoder (and its projection head) as a SavedModel for TF Serving: <base>/<name>/<version>/.

    python -m exemplar_tf.export --run_dir=runs/<name> [--name=<name>] [--version=<int>]

Signatures (both take `images`: uint8 [batch, height, width, 3], any height/width; /255 happens inside, the
mean subtraction is the encoder's first layer):
  serving_default -> {"embedding": float32 [B,D] unit rows, "representation": float32 [B,F] unit rows,
                      "features": float32 [B, 4*sum(C_l)] (or 21*sum(C_l))}
      embedding: images resized (bilinear, antialiased) to encoder.input_size, then the 128-d projection head
      (NPID-style models) or the L2-normalised representation (models exported without a head).
      representation: the same resized images, the encoder's pooled representation (below any head) L2-normalised;
      the feature to read for kNN when the head is an MLP (--head_hidden_dim).
      features: Exemplar-CNN evaluation features at the size given (sides below input_size are upsampled):
      every `encoder.feature_maps` layer max-pooled over the stored grid ("quadrants" or "pyramid"), divided by
      the layer's 99.99th-percentile activation on training data, concatenated (the maps come from
      `encoder.evaluation_maps`: on large images the Exemplar-CNN's big convs go through DFTs, same values).
  pooled_features -> {"quadrants": [B, 4*sum(C_l)], "pyramid": [B, 21*sum(C_l)]}
      the same evaluation features with both poolings, whatever the stored choice (Caltech-101 uses the
      1+4+16 pyramid, the other protocols quadrants).
Library: `exemplar_tf.serving.export` (the writer), `exemplar_tf.serving.runs` (runs); the reader is
`exemplar_tf.evaluation.savedmodel`. Only the encoder and the head are exported: no memory bank, no optimizer.
`assets.extra/export_info.json` records name, run_dir and step of origin, creation time, arch, sizes, pooling,
percentiles and feature_channels (C_l per layer, so a user can split `features` into its layer blocks of
cells * C_l; TF Serving ignores the file).
Prints the version folder written on stdout; a status line naming it goes to stderr before the export starts.
"""
from __future__ import annotations

import os
import sys

from absl import flags

from exemplar_tf import errors
from exemplar_tf.errors import cli

flags.DEFINE_string("run_dir", None, "Training run directory (checkpoints/, flags.cfg).", required=True)
flags.DEFINE_string("name", None, "Export name (default: the run's --name).")
flags.DEFINE_integer("version", None, "Integer version (default: the next free one); an existing one is refused, "
                     "never overwritten.")
flags.DEFINE_string("export_base", None, "Export base directory (default: the run's --export_base).")
cli.check("version", cli.POSITIVE)


def main(argv) -> None:
    del argv  # errors.run refuses positional arguments
    from exemplar_tf.serving import export, runs
    from exemplar_tf.training import rundir

    values = flags.FLAGS
    config = rundir.read_run_config(values.run_dir)
    model_dir = os.path.join(values.export_base or config.export_base, values.name or config.name)
    export.check_free_version(model_dir, values.version)  # before the checkpoint is read
    print(f"Writing the SavedModel of the newest checkpoint of {values.run_dir} to "
          f"{export.version_path(model_dir, values.version)} ...", file=sys.stderr, flush=True)
    print(runs.export_run(values.run_dir, name=values.name, version=values.version, export_dir_base=values.export_base))


if __name__ == "__main__":
    errors.run(main)
