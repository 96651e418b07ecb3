"""Linear-probe evaluation of an exported encoder, always next to a randomly initialised one.

    python -m exemplar_tf.evaluate --savedmodel=savedmodels/<name>/<v> --dataset=stl10 [--protocol=stl10]
        [--baseline_savedmodel=savedmodels/<name>_random/<v>] [--feature=features] [--eval_size=96]
        [--max_train=N] [--max_test=N] [--standardize] [--out_json=results.json]

Features come only through the SavedModel's signatures (`exemplar_tf.evaluation.savedmodel`; any export of
`exemplar_tf.export` works), so nothing here can change the encoder. Labels are touched only by the probe (and by
the protocols' per-class splits). Probe (`exemplar_tf.evaluation.probe`, the paper's): the export's
percentile-scaled features as they are (`--standardize` rescales columns first), one-vs-rest squared-hinge linear
SVM with bias (LinearSVC's objective, solved by `probe.svm`); C chosen on a stratified held-out 20% of the
training images from a log-uniform grid in [2e-4, 0.2] (walked upwards, warm-started, stopping once the held-out
accuracy falls; a winning edge C extends the grid that way, at most `--max_grid_extension` steps, with a
warning), then refit on all of them. Every fit logs its Newton/CG iterations and whether it converged; the JSON
carries them too.

Protocols (`exemplar_tf.evaluation.protocols`; each run on the trained and on the random encoder, with the same splits):
  stl10        train on each of the 10 predefined 1000-image folds, test on the 8000 test images; mean ± std
  cifar10      full training set, test set (images upsampled to 64x64 by default)
  cifar10_400  10 random draws of 400 training images per class; mean ± std
  caltech101   30 training images per class drawn from the train split (1 draw), test on the test split;
               1+4+16 pyramid pooling (the export's `pooled_features` signature), 150x150 images
  folder       any labelled source with train/test splits (e.g. folder:<dir> with <dir>/train/<class>/...)

Image sizes: with an eval size every image is resized (bilinear, antialiased) to that square. Without one
(`--eval_size=0`) each image keeps its own size; consecutive images of one size share a batch and a size change
starts a new batch, so mixed-size sources are exact but slower.
"""
from __future__ import annotations

import json
import os
import sys

from absl import flags

from exemplar_tf import errors
from exemplar_tf.errors import cli
from exemplar_tf.io.atomic import atomic_write

# The library's names and defaults, read here without importing TensorFlow (tests/test_program_flags.py holds them
# equal to evaluation.protocols.PROTOCOLS, evaluation.savedmodel.FEATURE_SIGNATURES, evaluation.probe's C_GRID
# and MAX_GRID_EXTENSION).
PROTOCOLS = ("stl10", "cifar10", "cifar10_400", "caltech101", "folder")
FEATURES = ("embedding", "features", "pyramid", "quadrants", "representation")
C_GRID = ("0.0002", "0.00112468", "0.00632456", "0.0355656", "0.2")  # log-uniform [2e-4, 0.2], as f"{c:g}"
MAX_GRID_EXTENSION = 3

flags.DEFINE_string("savedmodel", None, "Export folder savedmodels/<name>/<version>.", required=True)
flags.DEFINE_string("dataset", None, "Labelled source spec: stl10, stl10_binary:<dir>, cifar10, caltech101, "
                    "folder:<dir>, demo_labelled.", required=True)
flags.DEFINE_enum("protocol", None, PROTOCOLS, "Evaluation protocol (default: from --dataset).")
flags.DEFINE_string("baseline_savedmodel", None, "Randomly initialised export of the same architecture "
                    "(default: the newest <name>_random version next to --savedmodel exported by the same "
                    "training run).")
flags.DEFINE_string("data_dir", None, "tensorflow-datasets data_dir.")
flags.DEFINE_integer("eval_size", None, "Resize images to this square size (default: 96 STL native, 64 CIFAR, "
                     "150 Caltech, native for folders; 0: native size).")
flags.DEFINE_enum("feature", None, FEATURES, "SavedModel output to probe "
                  "(default: pyramid for caltech101, features otherwise).")
flags.DEFINE_integer("max_train", 0, "Use at most this many images per training set (0: all).")
flags.DEFINE_integer("max_test", 0, "Use at most this many test images (0: all).")
flags.DEFINE_integer("splits", None, "Random draws for cifar10_400 (default 10) and caltech101 (default 1).")
flags.DEFINE_list("c_values", list(C_GRID), "SVM C grid searched on held-out training data "
                  "(default: the paper's log-uniform [2e-4, 0.2]).")
flags.DEFINE_integer("max_grid_extension", MAX_GRID_EXTENSION, "When the best C is on an edge of the grid, "
                     "try up to this many more C values beyond it (0: never).")
flags.DEFINE_boolean("standardize", False, "Standardise every feature column before the SVM (not the paper: "
                     "it cancels the export's per-layer percentile scaling).")
flags.DEFINE_integer("seed", 0, "Seed of the per-class draws and the held-out split.")
flags.DEFINE_integer("batch_size", 128, "Images per SavedModel call.")
flags.DEFINE_string("out_json", None, "Write the results as JSON here.")
cli.check("splits", cli.POSITIVE)
cli.check("max_grid_extension", cli.NON_NEGATIVE)
cli.check("c_values", cli.Each(cli.POSITIVE))


def main(argv) -> int:
    del argv  # errors.run refuses positional arguments
    from exemplar_tf.evaluation import protocols

    values = flags.FLAGS
    protocol = values.protocol or protocols.protocol_for(values.dataset)
    options = protocols.ProtocolOptions(
        feature=values.feature or protocols.DEFAULT_FEATURE.get(protocol, "features"),
        eval_size=protocols.DEFAULT_EVAL_SIZE[protocol] if values.eval_size is None else values.eval_size,
        data_dir=values.data_dir,
        max_train=values.max_train,
        max_test=values.max_test,
        splits=values.splits or protocols.DEFAULT_SPLITS.get(protocol, 1),
        c_values=tuple(float(c) for c in values.c_values),
        seed=values.seed,
        standardize=values.standardize,
        max_grid_extension=values.max_grid_extension,
    )
    baseline_path = values.baseline_savedmodel or protocols.random_baseline_path(values.savedmodel)
    if baseline_path is None:
        print(protocols.missing_baseline_message(values.savedmodel), file=sys.stderr)
    elif mismatch := protocols.baseline_mismatch(values.savedmodel, baseline_path):
        raise errors.InputError(mismatch)
    if values.out_json:  # its folder before the probes, not after them
        os.makedirs(os.path.dirname(os.path.abspath(values.out_json)), exist_ok=True)
    trained = protocols.run_protocol(values.savedmodel, protocol, values.dataset, options, values.batch_size)
    baseline = (protocols.run_protocol(baseline_path, protocol, values.dataset, options, values.batch_size)
                if baseline_path else None)
    print(protocols.results_table(protocol, options.feature, trained, baseline))
    report = protocols.results_json(values.dataset, protocol, options, trained, baseline)
    print(json.dumps(report), flush=True)  # first: a failed write below still leaves the report on stdout
    if values.out_json:
        atomic_write(values.out_json, json.dumps(report, indent=2).encode())
    return 0


if __name__ == "__main__":
    errors.run(main)
