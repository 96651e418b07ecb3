"""Train an encoder by instance discrimination.

    python -m exemplar_tf.train --flagfile=flags/stl10.cfg [--flag=value ...]

Flags given after the flagfile override it. The run directory gets the resolved flagfile (flags.cfg),
checkpoints/, tensorboard/ and, at the end, the export under --export_base/<name>/<version>/.
Re-running the same command resumes from the last checkpoint.
"""
from __future__ import annotations

import os
import sys

from absl import app, flags, logging

from exemplar_tf import errors
from exemplar_tf.training import config as cfg
from exemplar_tf.training import rundir

_RUN_DIR = flags.DEFINE_string("run_dir", None, "Run directory (checkpoints, TensorBoard, resolved flags). "
                               "Default: runs/<name>.")
_NAME = flags.DEFINE_string("name", "exemplar", "Run name; the export goes to <export_base>/<name>/<version>.")
_SOURCE = flags.DEFINE_string("source", "demo", "Image source: demo, stl10, cifar10, caltech101 (tfds), "
                              "stl10_binary:<dir>, folder:<dir>.")
_SPLIT = flags.DEFINE_string("split", "train", "Split of --source to learn from (stl10: unlabelled).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "tensorflow-datasets data_dir (local copies; no download).")
_METHOD = flags.DEFINE_enum("method", "exemplar", cfg.METHODS,
                            "exemplar: surrogate classes from seed patches; npid: every image is an instance.")
_MAX_INSTANCES = flags.DEFINE_integer("max_instances", 0, "Use at most N source images, evenly spread "
                                     "over the source (0 = all).")
_SKIP_BAD_IMAGES = flags.DEFINE_boolean("skip_bad_images", False, "folder:<dir> sources: leave out image files that "
                                       "cannot be decoded or are smaller than the patch (each file is decoded once "
                                       "up front), list them in <run_dir>/skipped_images.txt and train on the rest.")
_SEED_SAMPLING = flags.DEFINE_enum("seed_sampling", "fixed", cfg.SEED_SAMPLINGS,
                                   "Exemplar-CNN: fixed: --num_seeds seed patches drawn once (cached in the run "
                                   "directory), each one class (the paper); online: every source image is a class "
                                   "and each visit draws a fresh energy-weighted patch of it (--num_seeds and "
                                   "--seeds_per_image unused).")
_NUM_SEEDS = flags.DEFINE_integer("num_seeds", 8000, "Exemplar-CNN: number of seed patches (surrogate classes).")
_SEEDS_PER_IMAGE = flags.DEFINE_integer("seeds_per_image", 0, "Exemplar-CNN: seeds drawn from each chosen image "
                                        "(0: as few as reach --num_seeds, at least 1).")
_PATCH_SIZE = flags.DEFINE_integer("patch_size", 32, "Exemplar-CNN: seed patch size in pixels.")
_PRESET = flags.DEFINE_enum("preset", "paper", cfg.PRESETS, "Transformation ranges (METHOD.md section 1).")
_TRANSFORMS = flags.DEFINE_list("transforms", "translate,scale,rotate,pca_color,saturation_value,hue",
                                "Transformations to apply (ablations: leave some out).")
_FIXED_COPIES = flags.DEFINE_integer("fixed_copies", 0, "K > 0: the paper's fixed pool of K copies per seed; "
                                     "0: transformations drawn afresh every time.")
_AUGMENT_ON = flags.DEFINE_enum("augment_on", "host", cfg.AUGMENT_ON,
                                "Run the augmentation (exemplar: sampler + transformation chain; npid: NPID's "
                                "crop/jitter) in tf.data (host) or batched in the training step (device).")
_MERGE_CLASSES_AT = flags.DEFINE_integer("merge_classes_at", 0, "Exemplar-CNN (fixed seeds): at this step embed "
                                        "every seed with the current encoder, cluster the seeds into --merge_to "
                                        "classes (spherical k-means) and train on those: a K-way softmax or K "
                                        "memory-bank rows (0: never).")
_MERGE_TO = flags.DEFINE_integer("merge_to", 0, "Number of classes the seeds are merged into at --merge_classes_at.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 32, "NPID: crop size of the augmented images.")
_ARCH = flags.DEFINE_enum("arch", None, cfg.ARCHS, "Encoder architecture (default: small for exemplar, resnet18 "
                          "for npid).")
_RESNET_STEM = flags.DEFINE_enum("resnet_stem", "auto", cfg.RESNET_STEMS, "ResNet stem: auto (CIFAR 3x3 stem up to "
                                 "64 px, ImageNet 7x7/2 + max-pool above), cifar or imagenet.")
_RESNET_WIDTH = flags.DEFINE_integer("resnet_width", 64, "ResNet base width: channels of the stem and stage 1, "
                                     "doubled per stage (64 in the papers; 32 costs ~1/4 of the compute).")
_OBJECTIVE = flags.DEFINE_enum("objective", None, cfg.OBJECTIVES,
                               "softmax: parametric N-way classifier; nonparametric: exact softmax over the "
                               "memory bank; nce: NCE with --nce_m noise samples (default: softmax for exemplar, "
                               "nce for npid).")
_DROPOUT = flags.DEFINE_float("dropout", 0.5, "Dropout after the Exemplar-CNN fc layer (the paper: 0.5).")
_BATCH_NORM = flags.DEFINE_boolean("batch_norm", False, "Exemplar-CNN: BatchNormalization before every ReLU (not in "
                                   "the paper; needed by the bank objectives, see BUILD_NOTES.md).")
_ALLOW_UNNORMALISED_BANK = flags.DEFINE_boolean("allow_unnormalised_bank", False, "Run a bank objective on an "
                                                "Exemplar-CNN without --batch_norm (it collapses; with a warning).")
_EMBEDDING_DIM = flags.DEFINE_integer("embedding_dim", 128, "Projection head / memory bank dimension.")
_TAU = flags.DEFINE_float("tau", 0.07, "Temperature of the non-parametric softmax.")
_NCE_M = flags.DEFINE_integer("nce_m", 4096, "NCE noise samples per example.")
_NCE_NOISE = flags.DEFINE_enum("nce_noise", "per_example", cfg.NCE_NOISE,
                               "per_example: m fresh noise instances for every example (NPID); shared: one set "
                               "of m for the whole batch (gathers m bank rows instead of B*m: faster).")
_NCE_Z_MOMENTUM = flags.DEFINE_float("nce_z_momentum", 0.99, "Moving average of NCE's Z (0 freezes it after "
                                     "the first batch, as NPID's release does).")
_BANK_MOMENTUM = flags.DEFINE_float("bank_momentum", 0.5, "Memory-bank update: w <- norm(eta*w + (1-eta)*v).")
_BANK_INIT = flags.DEFINE_enum("bank_init", "random", cfg.BANK_INITS,
                               "Memory bank at step 0. random: random unit rows (NPID); features: row i is the "
                               "randomly initialised encoder's code of instance i (not in the papers, see "
                               "BUILD_NOTES.md).")
_PROXIMAL_LAMBDA = flags.DEFINE_float("proximal_lambda", 0.0, "NPID's proximal regulariser: adds lambda * "
                                      "||v_i - w_i||^2, w_i the bank row before this step's update (0: off).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 128, "Global batch size (split across replicas).")
_STEPS = flags.DEFINE_integer("steps", 10000, "Training steps.")
_LR = flags.DEFINE_float("lr", None, "Initial SGD learning rate (default: 0.01 exemplar, 0.03 npid).")
_LR_DECAY_AT = flags.DEFINE_list("lr_decay_at", "0.6,0.8", "Fractions of --steps where the lr is multiplied "
                                 "by --lr_decay_factor (empty: constant).")
_LR_DECAY_FACTOR = flags.DEFINE_float("lr_decay_factor", None, "Learning-rate drop factor (default: 0.3 exemplar, "
                                      "0.1 npid).")
_MOMENTUM = flags.DEFINE_float("momentum", 0.9, "SGD momentum.")
_WEIGHT_DECAY = flags.DEFINE_float("weight_decay", None, "L2 weight decay times per-layer multipliers (default: "
                                    "0.004 exemplar, 5e-4 npid).")
_PRECISION = flags.DEFINE_enum("precision", "float32", cfg.PRECISIONS,
                               "Keras dtype policy of the encoder: float32, or mixed_bfloat16 / mixed_float16 "
                               "(float32 variables, 16-bit compute; mixed_float16 adds dynamic loss scaling). "
                               "Heads, losses, the memory bank, kNN and exports stay float32.")
_STEPS_PER_CALL = flags.DEFINE_integer("steps_per_call", 10, "Training steps per tf.function call (one host "
                                       "round trip per call; calls end at every log, checkpoint and kNN step).")
_JIT_COMPILE = flags.DEFINE_boolean("jit_compile", False, "XLA-compile each replica's forward/backward pass "
                                    "(not the input pipeline, device-side augmentation or the updates). Off by "
                                    "default: slower than oneDNN on CPU (BUILD_NOTES.md).")
_STRATEGY = flags.DEFINE_enum("strategy", "default", cfg.STRATEGIES, "tf.distribute strategy.")
_TPU = flags.DEFINE_string("tpu", "", "TPU name or grpc:// address for --strategy=tpu.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed (seeds, transformations, noise, initialisation).")
_LOG_EVERY = flags.DEFINE_integer("log_every", 50, "Steps between TensorBoard scalar summaries.")
_CHECKPOINT_EVERY = flags.DEFINE_integer("checkpoint_every", 500, "Steps between checkpoints.")
_KEEP_CHECKPOINTS = flags.DEFINE_integer("keep_checkpoints", 3, "Checkpoints to keep.")
_KNN_SOURCE = flags.DEFINE_string("knn_source", "auto", "Labelled source for kNN monitoring (e.g. demo_labelled); "
                                   "auto: demo_labelled for --source=demo, none otherwise; empty: none.")
_KNN_SPLIT = flags.DEFINE_string("knn_split", "test", "Query split of --knn_source.")
_KNN_TRAIN_SPLIT = flags.DEFINE_string("knn_train_split", "train", "Memory split of --knn_source.")
_KNN_EVERY = flags.DEFINE_integer("knn_every", 0, "Steps between kNN evaluations (0: only at the end).")
_KNN_MAX = flags.DEFINE_integer("knn_max_examples", 2000, "Images per kNN split.")
_EXPORT_BASE = flags.DEFINE_string("export_base", "savedmodels", "Export directory base (TF Serving layout).")
_PROGRESS = flags.DEFINE_boolean("progress", True, "Show a progress bar.")
_OVERWRITE = flags.DEFINE_boolean("overwrite", False, "Start over when --run_dir holds a run with other training "
                                  "settings (the old directory is kept as <run_dir>.old-<time>); without it such "
                                  "a run directory is refused.")

_OUR_FLAGS = [v for k, v in dict(globals()).items() if k.startswith("_") and isinstance(v, flags.FlagHolder)]


def _floats(values: list[str], name: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in values if v.strip())
    except ValueError as error:
        raise errors.InputError(f"--{name} must be a comma-separated list of numbers: {error}") from None


def config_from_flags() -> cfg.TrainConfig:
    """Builds the TrainConfig from the parsed flags (the only place global flag values are read)."""
    values = {holder.name: holder.value for holder in _OUR_FLAGS}
    values["run_dir"] = values["run_dir"] or os.path.join("runs", values["name"])
    values["transforms"] = tuple(t.strip() for t in values["transforms"] if t.strip())
    values["lr_decay_at"] = _floats(values["lr_decay_at"], "lr_decay_at")
    values["data_dir"] = values["data_dir"] or None
    return cfg.validate(cfg.TrainConfig(**values))


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = config_from_flags()
    from exemplar_tf.training import loop  # after flag validation: importing TensorFlow takes seconds

    if not flags.FLAGS["verbosity"].present:  # keep TensorFlow's INFO lines (savers, exports) off the console
        logging.set_verbosity(logging.WARNING)

    try:
        result = loop.run(config)
    except rundir.RunDirMismatch as error:
        print(error, file=sys.stderr)
        return 2
    except (loop.TrainingDiverged, loop.WriteFailed) as error:
        print(f"Training stopped: {error}", file=sys.stderr)
        return 3
    if result.export_dir:
        print(f"Finished {result.step} steps, final loss {result.loss:.4f}")
        print(f"Export:      {result.export_dir}")
        print(f"TensorBoard: tensorboard --logdir {result.log_dir}")
        print(f"Checkpoints: {result.checkpoint_dir}")
    return 0


if __name__ == "__main__":
    errors.run(main)
