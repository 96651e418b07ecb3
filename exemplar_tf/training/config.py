"""The training run's configuration: one frozen dataclass, validated before any work starts.

Every setting is declared once, as a field with its help text, valid values and range (`settings.setting`):
`train.py` derives its flags from the fields, `validate` their checks, `rundir` the typed reading of a run's
flagfile and docs/flags.md its table (`write_flags_doc`). No TensorFlow import (train.py validates before loading
it).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable, Sequence

from exemplar_tf.choices import (ARCHS, AUGMENT_ON, BANK_INITS, BANK_OBJECTIVES, BANK_SHARDINGS,  # noqa: F401
                                 EXEMPLAR_ARCHS, LR_SCHEDULES, METHODS, NCE_NOISE, OBJECTIVES, PRECISION_SETTINGS,
                                 PAPER_TRANSFORMS, PRECISIONS, PRESETS, RESNET_STEMS, SEED_SAMPLINGS, STRATEGIES,
                                 TRANSFORMS)
from exemplar_tf.augment.presets import scale_max_problem
from exemplar_tf.data import service
from exemplar_tf.errors import InputError
from exemplar_tf.optim.drops import drop_steps
from exemplar_tf.training import machine, settings
from exemplar_tf.training.settings import (NON_NEGATIVE, POSITIVE, UNIT_INTERVAL, UNIT_INTERVAL_OPEN, EachIn, NonEmpty,
                                           Range, setting)

# What a field left at None becomes, per method: each paper's own recipe. Exemplar-CNN (Dosovitskiy et al.'s
# release): the small network, the parametric softmax over the surrogate classes, lr 0.01, weight decay 0.004,
# lr x0.3 at each drop. NPID (Wu et al.): ResNet-18, NCE, lr 0.03, weight decay 5e-4, lr x0.1 at each drop.
METHOD_DEFAULTS = {
    "exemplar": {"arch": "small", "objective": "softmax", "lr": 0.01, "weight_decay": 0.004, "lr_decay_factor": 0.3},
    "npid": {"arch": "resnet18", "objective": "nce", "lr": 0.03, "weight_decay": 5e-4, "lr_decay_factor": 0.1},
}
# What a field left at None becomes for one method on one source, before METHOD_DEFAULTS: recipes that fit a
# source's size. NPID on the demo's 15 photographs: the exact softmax over the 15 bank rows (NCE's m noise samples
# need m < N instances, and the exact softmax is cheaper than NCE at this N anyway).
SOURCE_DEFAULTS = {("demo", "npid"): {"objective": "nonparametric"}}
# --knn_source=auto: the labelled set that goes with a source, where there is one without asking.
AUTO_KNN_SOURCES = {"demo": "demo_labelled"}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs; `train.py` fills it from absl flags, tests build it directly."""

    run_dir: str = setting(help="Run directory (checkpoints, TensorBoard, resolved flags). Default: runs/<name>.",
                           check=NonEmpty())
    name: str = setting("exemplar", help="Run name; the export goes to <export_base>/<name>/<version>.")
    # Data.
    source: str = setting("demo", help="Image source: demo, demo_labelled, stl10, cifar10, caltech101, "
                                       "imagenet2012 (tfds), stl10_binary:<dir>, folder:<dir>.")
    split: str = setting("train", help="Split of --source to learn from (stl10: unlabelled).")
    data_dir: str | None = setting(None, help="tensorflow-datasets data_dir (default ~/tensorflow_datasets): tfds "
                                              "sources not prepared there are downloaded into it (README: which).")
    method: str = setting("exemplar", choices=METHODS,
                          help="exemplar: surrogate classes from seed patches; npid: every image is an instance.")
    max_instances: int = setting(0, check=NON_NEGATIVE, help="Use at most N source images, evenly spread over the "
                                                             "source (0 = all).")
    skip_bad_images: bool = setting(False, help="folder:<dir> sources: leave out image files that cannot be decoded "
                                                "or are smaller than the patch (each file is decoded once up front), "
                                                "list them in <run_dir>/skipped_images.txt and train on the rest.")
    # Exemplar-CNN surrogate data.
    seed_sampling: str = setting("fixed", choices=SEED_SAMPLINGS,
                                 help="Exemplar-CNN: fixed: --num_seeds seed patches drawn once (cached in the run "
                                      "directory), each one class (the paper); online: every source image is a class "
                                      "and each visit draws a fresh energy-weighted patch of it (--num_seeds and "
                                      "--seeds_per_image unused).")
    num_seeds: int = setting(8000, check=POSITIVE,
                             help="Exemplar-CNN: number of seed patches (surrogate classes).")
    seeds_per_image: int = setting(0, check=NON_NEGATIVE,  # 0: see `seeds_per_image_for`
                                   help="Exemplar-CNN: seeds drawn from each chosen image (0: as few as reach "
                                        "--num_seeds, at least 1).")
    patch_size: int = setting(32, check=POSITIVE, help="Exemplar-CNN: seed patch size in pixels.")
    preset: str = setting("paper", choices=PRESETS, help="Transformation ranges (docs/method.md section 1).")
    transforms: Sequence[str] = setting(PAPER_TRANSFORMS, choices=TRANSFORMS,
                                        help="Transformations to apply: the paper's six by default (ablations: leave "
                                             "some out); add flip and/or grayscale for NPID's mirror (p 0.5) and "
                                             "grayscale (p 0.2), docs/method.md section 1.")
    scale_max: float = setting(0.0, check=NON_NEGATIVE,
                               help="Largest zoom of the chain's scale step (> 1 zooms in; log-uniform from the "
                                    "preset's smallest, 0.7 in the paper, to this). 0: the preset's (1.4 in the "
                                    "paper). 2.24 shows as little as 1/5 of the patch's area, like the smallest of "
                                    "NPID's random-resized crops (docs/method.md section 1).")
    fixed_copies: int = setting(0, check=NON_NEGATIVE, help="K > 0: the paper's fixed pool of K copies per seed; "
                                                            "0: transformations drawn afresh every time.")
    augment_on: str = setting("host", choices=AUGMENT_ON,
                              help="Run the augmentation (exemplar: sampler + transformation chain; npid: NPID's "
                                   "crop/jitter) in tf.data (host) or batched in the training step (device).")
    merge_classes_at: int = setting(0, help="Exemplar-CNN (fixed seeds): at this step embed every seed with the "
                                            "current encoder, cluster the seeds into --merge_to classes (spherical "
                                            "k-means) and train on those: a K-way softmax or K memory-bank rows "
                                            "(0: never).")
    merge_to: int = setting(0, help="Number of classes the seeds are merged into at --merge_classes_at.")
    # NPID whole-image instances.
    image_size: int = setting(32, check=POSITIVE, help="NPID: crop size of the augmented images.")
    # Model and objective.
    arch: str | None = setting(None, choices=ARCHS,
                               help="Encoder architecture (default: small for exemplar, resnet18 for npid).")
    resnet_stem: str = setting("auto", choices=RESNET_STEMS,
                               help="ResNet stem: auto (CIFAR 3x3 stem up to 64 px, ImageNet 7x7/2 + max-pool "
                                    "above), cifar or imagenet.")
    resnet_width: int = setting(64, check=Range(low=0, low_open=True, text="a positive number of channels"),
                                help="ResNet base width: channels of the stem and stage 1, doubled per stage (64 in "
                                     "the papers; 32 costs ~1/4 of the compute).")
    objective: str | None = setting(None, choices=OBJECTIVES,
                                    help="softmax: parametric N-way classifier; nonparametric: exact softmax over the "
                                         "memory bank; nce: NCE with --nce_m noise samples (default: softmax for "
                                         "exemplar, nce for npid, nonparametric for npid on the demo).")
    embedding_dim: int = setting(128, check=POSITIVE, help="Projection head / memory bank dimension.")
    head_hidden_dim: int = setting(0, check=NON_NEGATIVE,
                                   help="Bank objectives: 0 for NPID's linear projection head, > 0 for an MLP head "
                                        "(Dense(this) -> ReLU -> Dense(--embedding_dim), MoCo v2 / SimCLR); the "
                                        "export's `representation` output is then the feature to read.")
    dropout: float = setting(0.5, check=UNIT_INTERVAL_OPEN,
                             help="Dropout after the Exemplar-CNN fc layer (the paper: 0.5).")
    batch_norm: bool = setting(False, help="Exemplar-CNN: BatchNormalization before every ReLU (not in the paper; "
                                           "needed by the bank objectives, see BUILD_NOTES.md).")
    allow_unnormalised_bank: bool = setting(False, help="Run a bank objective on an Exemplar-CNN without "
                                                        "--batch_norm (it collapses; with a warning).")
    tau: float = setting(0.07, check=POSITIVE, help="Temperature of the non-parametric softmax.")
    nce_m: int = setting(4096, check=POSITIVE, help="NCE noise samples per example.")
    nce_noise: str = setting("per_example", choices=NCE_NOISE,
                             help="per_example: m fresh noise instances for every example (NPID); shared: one set "
                                  "of m for the whole batch (gathers m bank rows instead of B*m: faster).")
    nce_z_momentum: float = setting(0.99, check=UNIT_INTERVAL, help="Moving average of NCE's Z (0 freezes it after "
                                                                    "the first batch, as NPID's release does).")
    bank_momentum: float = setting(0.5, check=UNIT_INTERVAL,
                                   help="Memory-bank update: w <- norm(eta*w + (1-eta)*v).")
    bank_init: str = setting("random", choices=BANK_INITS,
                             help="Memory bank at step 0. random: random unit rows (NPID); features: row i is the "
                                  "randomly initialised encoder's code of instance i (not in the papers, see "
                                  "BUILD_NOTES.md).")
    bank_sharding: str = setting("replicated", choices=BANK_SHARDINGS,
                                 help="replicated: every replica holds the whole memory bank (N x D); sharded: "
                                      "--strategy=mirrored replicas each hold N/R rows and combine their scores "
                                      "with all-reduces (the same results up to float rounding; checkpoints hold "
                                      "the whole bank either way).")
    proximal_lambda: float = setting(0.0, check=NON_NEGATIVE, help="NPID's proximal regulariser: adds lambda * "
                                                                   "||v_i - w_i||^2, w_i the bank row before this "
                                                                   "step's update (0: off).")
    momentum_encoder: float = setting(0.0, check=UNIT_INTERVAL_OPEN,
                                      help="Momentum of a key encoder that writes the memory bank (MoCo-style): an "
                                           "EMA copy of the encoder and head, theta_k <- m theta_k + (1 - m) "
                                           "theta_q, not trained; with it on, each instance gives two views per "
                                           "batch (query: the online encoder, key: the EMA copy). 0: off (NPID).")
    bn_groups: int = setting(1, check=POSITIVE,
                             help="--momentum_encoder: BatchNorm in G groups per batch, MoCo's shuffling BN on one "
                                  "device: the queries run in G contiguous groups, the keys in G groups of a random "
                                  "permutation of the batch, so an instance's query and key are normalised with "
                                  "different batch mates. G must divide the per-replica batch (--batch_size / replicas). 1: one "
                                  "group (off).")
    neighbours: int = setting(0, check=NON_NEGATIVE,
                              help="--objective=nonparametric: from --neighbours_from of --steps on, each example's "
                                   "positive is its own bank row together with the k rows nearest to that row in "
                                   "the bank (the softmax probabilities of all 1 + k summed: AND, Huang et al. "
                                   "2019; docs/method.md section 9). 0: off (NPID: the own row only).")
    neighbours_from: float = setting(0.5, check=Range(low=0, high=1, low_open=True, high_open=True),
                                     help="--neighbours: the fraction of --steps after which the neighbours join "
                                          "the positive (the bank's neighbours are random at the start).")
    # Optimisation.
    batch_size: int = setting(128, check=POSITIVE, help="Global batch size (split across replicas).")
    steps: int = setting(10000, check=POSITIVE, help="Training steps (with --train_minutes: replaced by the steps that "
                                                     "fit the budget, which --merge_classes_at, --lr_warmup_steps "
                                                     "and the switches at fractions of it are then checked "
                                                     "against).")
    train_minutes: float = setting(0.0, check=NON_NEGATIVE,
                                   help="A wall-clock budget for the whole command, start-up to export: on a fresh "
                                        "run the step is timed on this machine once the start-up is done and --steps "
                                        "becomes the steps that fit, fitted again from the run's own pace half-way to "
                                        "the first step that depends on it (an lr drop, a switch at a fraction of "
                                        "--steps; written to the run's flags.cfg; a resumed run keeps "
                                        "them). 0: --steps as given (docs/method.md section 10).")
    lr: float | None = setting(None, check=POSITIVE,
                               help="Initial SGD learning rate (default: 0.01 exemplar, 0.03 npid).")
    lr_schedule: str = setting("step", choices=LR_SCHEDULES,
                               help="step: --lr multiplied by --lr_decay_factor at each --lr_decay_at; cosine: a "
                                    "linear warm-up over --lr_warmup_steps, then half a cosine from --lr to 0 at "
                                    "--steps (--lr_decay_at and --lr_decay_factor unused).")
    lr_warmup_steps: int = setting(0, check=NON_NEGATIVE, help="--lr_schedule=cosine: steps of linear warm-up "
                                                               "from 0 to --lr.")
    lr_decay_at: Sequence[float] = setting(
        (0.6, 0.8), check=EachIn(Range(low=0, high=1, low_open=True, high_open=True),
                                 message="--{name} are fractions of --steps {range}, got {value}"),
        help="Fractions of --steps where the lr is multiplied by --lr_decay_factor (empty: constant).")
    lr_decay_factor: float | None = setting(None, check=UNIT_INTERVAL,
                                            help="Learning-rate drop factor (default: 0.3 exemplar, 0.1 npid).")
    momentum: float = setting(0.9, check=UNIT_INTERVAL, help="SGD momentum.")
    low_res_size: int = setting(0, check=NON_NEGATIVE,
                                help="Progressive resolution (ResNets): the first --low_res_until of --steps see "
                                     "every view downsampled to this side S (convolutions cost ~(S/P)^2), the rest "
                                     "the training side P (--patch_size; npid: --image_size); P/2 <= S < P; 0: the "
                                     "full side throughout (docs/method.md section 8).")
    low_res_until: float = setting(0.0, check=UNIT_INTERVAL,
                                   help="--low_res_size: fraction of --steps trained at the low side (the switch "
                                        "is at step int(fraction * --steps), like --lr_decay_at's drops).")
    weight_decay: float | None = setting(None, check=NON_NEGATIVE, help="L2 weight decay times per-layer multipliers "
                                                                        "(default: 0.004 exemplar, 5e-4 npid).")
    # Speed.
    precision: str = setting("auto", choices=PRECISION_SETTINGS,
                             help="Keras dtype policy of the encoder: float32, or mixed_bfloat16 / mixed_float16 "
                                  "(float32 variables, 16-bit compute; mixed_float16 adds dynamic loss scaling); "
                                  "auto: mixed_bfloat16 for a ResNet on a CPU-only machine with AVX-512-BF16 or "
                                  "AMX-BF16, else float32 (the run's flags.cfg records which). Heads, losses, the memory bank, kNN "
                                  "and exports stay float32.")
    steps_per_call: int = setting(10, check=POSITIVE,
                                  help="Training steps per tf.function call (one host round trip per call; calls end "
                                       "at every log, checkpoint and kNN step).")
    jit_compile: bool = setting(False, help="XLA-compile each replica's forward/backward pass (not the input "
                                            "pipeline, device-side augmentation or the updates). Off by default: "
                                            "slower than oneDNN on CPU (BUILD_NOTES.md).")
    # Distribution.
    strategy: str = setting("default", choices=STRATEGIES, help="tf.distribute strategy.")
    tpu: str = setting("", help="TPU name or grpc:// address for --strategy=tpu.")
    data_service: str = setting("", help="grpc://HOST:PORT of a tf.data service dispatcher (python -m "
                                         "exemplar_tf.data_service): the training input runs on its workers, each "
                                         "batch number made once (distributed_epoch); a resumed run restarts at the "
                                         "checkpoint's input position, not exactly (README). Empty: in-process.")
    # Book-keeping.
    seed: int = setting(0, help="Random seed (seeds, transformations, noise, initialisation).")
    log_every: int = setting(50, check=POSITIVE, help="Steps between TensorBoard scalar summaries.")
    checkpoint_every: int = setting(500, check=POSITIVE, help="Steps between checkpoints.")
    keep_checkpoints: int = setting(3, check=POSITIVE, help="Checkpoints to keep.")
    knn_source: str = setting("auto", help="Labelled source for kNN monitoring (e.g. demo_labelled); auto: "
                                           "demo_labelled for --source=demo, none otherwise; empty: none.")
    knn_split: str = setting("test", help="Query split of --knn_source.")
    knn_train_split: str = setting("train", help="Memory split of --knn_source.")
    knn_every: int = setting(0, check=NON_NEGATIVE,
                             help="Steps between kNN evaluations (0: only at step 0 and at the end).")
    knn_max_examples: int = setting(2000, check=NON_NEGATIVE,
                                    help="Images per kNN split, evenly spread over it (0: all).")
    export_base: str = setting("savedmodels", help="Export directory base (TF Serving layout).")
    overwrite: bool = setting(False, help="Start over from step 0, moving a run already in --run_dir aside (kept "
                                          "as <run_dir>.old-<time>) whatever its settings; without it a run with "
                                          "the same training settings resumes and one with other settings is "
                                          "refused.")
    progress: bool = setting(True, help="Show a progress bar.")

    def __post_init__(self):
        """Fills the fields left at None (and knn_source=auto) from the source's and the method's defaults, and
        precision=auto from the machine (`machine.default_precision`)."""
        recipe = {**METHOD_DEFAULTS.get(self.method, METHOD_DEFAULTS["exemplar"]),
                  **SOURCE_DEFAULTS.get((self.source, self.method), {})}
        for field, value in recipe.items():
            if getattr(self, field) is None:
                object.__setattr__(self, field, value)
        if self.knn_source == "auto":
            object.__setattr__(self, "knn_source", AUTO_KNN_SOURCES.get(self.source, ""))
        if self.precision == "auto":
            object.__setattr__(self, "precision", machine.this_machines_precision(self.arch))

    @property
    def uses_bank(self) -> bool:
        return self.objective in BANK_OBJECTIVES

    @property
    def input_size(self) -> int:
        """Side of the training images: the seed patch (exemplar) or the NPID crop."""
        return self.patch_size if self.method == "exemplar" else self.image_size

    @property
    def lr_drop_steps(self) -> list[int]:
        """The step decay's boundaries (--lr_decay_at, increasing): `optim.schedules.step_decay` drops after each;
        none with --lr_schedule=cosine."""
        return drop_steps(self.steps, self.lr_decay_at) if self.lr_schedule == "step" else []

    @property
    def low_res_steps(self) -> int:
        """Steps [0, low_res_steps) train at --low_res_size (0 when progressive resolution is off)."""
        return int(self.low_res_until * self.steps) if self.low_res_size else 0

    @property
    def neighbours_from_step(self) -> int:
        """The first step whose positives include --neighbours bank neighbours."""
        return int(self.neighbours_from * self.steps)

    @property
    def step_switches(self) -> list[tuple[str, str, float, int]]:
        """(flag, what changes, fraction of --steps, step) for each switch the run makes at a fraction of --steps: to
        full resolution (--low_res_until, step `low_res_steps`) and to bank neighbours as positives
        (--neighbours_from, step `neighbours_from_step`)."""
        return (([("low_res_until", "the switch to full resolution", self.low_res_until, self.low_res_steps)]
                 if self.low_res_size else [])
                + ([("neighbours_from", "the start of the bank neighbours", self.neighbours_from,
                     self.neighbours_from_step)] if self.neighbours else []))

    def input_size_at(self, step: int) -> int:
        """Side of the views the encoder sees at `step`: --low_res_size before `low_res_steps`, else input_size."""
        return self.low_res_size if step < self.low_res_steps else self.input_size


def with_settings(config: TrainConfig, **changes) -> TrainConfig:
    """`config` with `changes`, as if it had been built with them: the fields `__post_init__` filled in (left at
    None or "auto", then set from the source's, the method's or the machine's defaults) are filled in again for
    the new settings, so `with_settings(config, method="npid")` takes NPID's objective and learning rate and a new
    `source` its own kNN source; a field given a value of its own keeps it (one equal to the filled-in value
    counts as filled in). `dataclasses.replace` would keep the old defaults."""
    values = {field.name: getattr(config, field.name) for field in dataclasses.fields(config)}
    fillable = {field.name: field.default for field in dataclasses.fields(config) if field.default in (None, "auto")}
    as_filled = TrainConfig(**{**values, **fillable})
    filled = {name: default for name, default in fillable.items() if getattr(as_filled, name) == values[name]}
    return TrainConfig(**{**values, **filled, **changes})


def seeds_per_image_for(config: TrainConfig, num_images: int) -> int:
    """--seeds_per_image, or for 0 the fewest seeds per image that reach --num_seeds from `num_images` images."""
    return config.seeds_per_image or max(1, -(-config.num_seeds // max(num_images, 1)))


# Cross-field rules: each returns the problem lines of one concern (the fields' own checks come from their
# declarations, `settings.field_problems`).

def _objective_problems(config: TrainConfig) -> list[str]:
    """The objective against the method, the network and the number of seeds."""
    problems = []
    if config.method == "npid" and config.objective == "softmax":
        problems.append("--objective=softmax needs surrogate classes: use it with --method=exemplar")
    if (config.objective == "nce" and config.method == "exemplar" and config.seed_sampling == "fixed"
            and config.nce_m >= config.num_seeds):
        problems.append(f"--nce_m={config.nce_m} must be smaller than --num_seeds={config.num_seeds}")
    if (config.uses_bank and config.arch in EXEMPLAR_ARCHS and not config.batch_norm
            and not config.allow_unnormalised_bank):
        problems.append(f"--objective={config.objective} on the {config.arch} Exemplar-CNN needs --batch_norm: without "
                        "it the bank objective kills the fc ReLUs and every image gets the same code (BUILD_NOTES.md); "
                        "--allow_unnormalised_bank runs it anyway")
    if config.method == "exemplar" and config.arch.startswith("resnet") and config.patch_size < 32:
        problems.append("--patch_size must be >= 32 for ResNet encoders")
    return problems


def _seed_sampling_problems(config: TrainConfig) -> list[str]:
    """--seed_sampling=online: Exemplar-CNN only, and no fixed pool of copies."""
    if config.seed_sampling != "online":
        return []
    problems = []
    if config.method != "exemplar":
        problems.append("--seed_sampling=online draws Exemplar-CNN seed patches: use it with --method=exemplar (npid "
                        "crops whole images its own way)")
    if config.fixed_copies:
        problems.append("--fixed_copies is a pool of copies of fixed seeds: use it with --seed_sampling=fixed, not "
                        "online (every visit draws a fresh patch)")
    return problems


def _augment_problems(config: TrainConfig) -> list[str]:
    """--scale_max widens the Exemplar chain's scale step: it needs that step, and a range with room in it."""
    if not config.scale_max:
        return []
    problems = []
    if config.method != "exemplar" or "scale" not in config.transforms:
        problems.append(f"--scale_max={config.scale_max} sets the range of the Exemplar chain's scale step: it needs "
                        f"--method=exemplar and 'scale' in --transforms")
    problem = scale_max_problem(config.preset, config.scale_max, "--scale_max")
    return problems + [problem] if problem else problems


def _needs_bank(config: TrainConfig, flag: str) -> list[str]:
    return [] if config.uses_bank else [f"{flag} needs a memory bank: use --objective=nce or nonparametric, "
                                        f"not {config.objective}"]


def _neighbour_problems(config: TrainConfig) -> list[str]:
    """--neighbours: the exact softmax on one whole bank of instance rows, and a switch inside the run."""
    problems = []
    if config.objective != "nonparametric":
        problems.append(f"--neighbours sums the exact softmax over a neighbourhood: use --objective=nonparametric, "
                        f"not {config.objective}")
    unsupported = [flag for flag, on in (("--momentum_encoder", config.momentum_encoder > 0),
                                         ("--merge_to", bool(config.merge_to)),
                                         ("--bank_sharding=sharded", config.bank_sharding == "sharded")) if on]
    if unsupported:
        problems.append(f"--neighbours is not supported with {', '.join(unsupported)}")
    return problems


def _bank_problems(config: TrainConfig) -> list[str]:
    """The settings of the memory bank need one; a few are not supported across workers or with merging."""
    problems = []
    if config.proximal_lambda > 0:
        problems += _needs_bank(config, "--proximal_lambda")
    if config.head_hidden_dim > 0:
        problems += _needs_bank(config, f"--head_hidden_dim={config.head_hidden_dim}")
    if config.bank_init == "features":
        problems += _needs_bank(config, "--bank_init=features")
        if config.strategy == "multi_worker":
            problems.append("--bank_init=features is not supported with --strategy=multi_worker (every worker would "
                            "compute its own rows)")
    if config.bank_sharding == "sharded":
        problems += _needs_bank(config, "--bank_sharding=sharded")
        if config.strategy in ("multi_worker", "tpu"):
            problems.append(f"--bank_sharding=sharded is not supported with --strategy={config.strategy} (it keeps "
                            f"each replica's rows in one process's per-device variables): use --strategy=mirrored")
        if config.jit_compile:
            problems.append("--bank_sharding=sharded is not supported with --jit_compile (its all-reduces run inside "
                            "the forward pass)")
    if config.momentum_encoder > 0:
        problems += _needs_bank(config, "--momentum_encoder")
        if config.merge_classes_at or config.merge_to:
            problems.append("--momentum_encoder is not supported with --merge_to (merging replaces the bank's "
                            "instance rows by class rows; the key encoder writes instance rows)")
    if config.neighbours:
        problems += _neighbour_problems(config)
    elif config.neighbours_from != settings.spec_map(TrainConfig)["neighbours_from"].default:
        problems.append(f"--neighbours_from={config.neighbours_from} applies with --neighbours=k > 0 (it is 0)")
    if config.bn_groups > 1 and not config.momentum_encoder > 0:
        problems.append(f"--bn_groups={config.bn_groups} shuffles the key encoder's BatchNorm groups: use it with "
                        f"--momentum_encoder > 0")
    if config.bn_groups > 0 and config.batch_size % config.bn_groups:  # per replica: momentum.grouped_forward
        problems.append(f"--bn_groups={config.bn_groups} must divide the batch size, --batch_size="
                        f"{config.batch_size} (on each replica: --batch_size / replicas)")
    return problems


def _merge_problems(config: TrainConfig) -> list[str]:
    """--merge_classes_at / --merge_to: both or neither; fixed exemplar seeds, one worker; NCE's noise must fit in
    the K classes (as it must in the N seeds)."""
    if not config.merge_classes_at and not config.merge_to:
        return []
    if config.merge_classes_at <= 0 or config.merge_to <= 0:
        return [f"--merge_classes_at and --merge_to go together (a step > 0 and a class count > 0), got "
                f"--merge_classes_at={config.merge_classes_at} --merge_to={config.merge_to}"]
    problems = []
    if config.method != "exemplar" or config.seed_sampling != "fixed":
        problems.append("--merge_classes_at merges fixed seed classes: use it with --method=exemplar "
                        "--seed_sampling=fixed")
    if config.objective == "nce" and config.nce_m >= config.merge_to:
        problems.append(f"--nce_m={config.nce_m} must be smaller than --merge_to={config.merge_to} (after the merge "
                        f"NCE draws its noise from the {config.merge_to} classes)")
    if config.objective == "nce" and config.nce_noise == "shared" and config.merge_to <= config.batch_size:
        problems.append(f"--nce_noise=shared draws noise from the classes not in the batch: --merge_to="
                        f"{config.merge_to} must be larger than --batch_size={config.batch_size}")
    if not config.merge_to < config.num_seeds:
        problems.append(f"--merge_to={config.merge_to} must be smaller than --num_seeds={config.num_seeds}")
    if config.strategy == "multi_worker":
        problems.append("--merge_classes_at is not supported with --strategy=multi_worker (every worker would "
                        "cluster the seeds on its own)")
    return problems


def _schedule_problems(config: TrainConfig) -> list[str]:
    """The learning-rate schedule's warm-up against the schedule and the run's length."""
    if config.lr_warmup_steps and config.lr_schedule != "cosine":
        return [f"--lr_warmup_steps applies to --lr_schedule=cosine, not --lr_schedule={config.lr_schedule}"]
    return []


def _length_problems(config: TrainConfig) -> list[str]:
    """The rules on the count of --steps (`validate` checks them once it is final: with --train_minutes, the fitted
    count): --merge_classes_at and --lr_warmup_steps come before the last step, and each switch at a fraction of
    --steps (`TrainConfig.step_switches`) leaves steps at both sides of it."""
    problems = []
    if config.merge_classes_at > 0 and config.merge_to > 0 and not config.merge_classes_at < config.steps:
        problems.append(f"--merge_classes_at={config.merge_classes_at} must be smaller than --steps={config.steps}")
    if config.lr_schedule == "cosine" and config.lr_warmup_steps >= config.steps:
        problems.append(f"--lr_warmup_steps={config.lr_warmup_steps} must be fewer than --steps={config.steps}")
    for flag, what, fraction, step in config.step_switches:
        if 0 < fraction < 1 and not 0 < step < config.steps:  # a fraction out of range is refused already
            problems.append(f"--{flag}={fraction} of --steps={config.steps} puts {what} at step {step}: it must "
                            f"leave steps at both sides (0 < step < --steps)")
    return problems


def _resolution_problems(config: TrainConfig) -> list[str]:
    """--low_res_size / --low_res_until: both or neither; a side from half the full one to below it (smaller sides
    shrink the ResNet's last stage to almost nothing and show the network another scale of image); a switch that
    leaves steps on both sides of it; a ResNet (global pooling; the Exemplar-CNNs' fc layer fixes the side)."""
    if not config.low_res_size and not config.low_res_until:
        return []
    if not config.low_res_size or not 0 < config.low_res_until < 1:
        return [f"--low_res_size and --low_res_until go together (a side > 0 and a fraction of --steps in (0, 1)), "
                f"got --low_res_size={config.low_res_size} --low_res_until={config.low_res_until}"]
    problems = []
    full = config.input_size
    if not full / 2 <= config.low_res_size < full:
        problems.append(f"--low_res_size={config.low_res_size} must be from half the training side {full} to below "
                        f"it ({-(-full // 2)}..{full - 1}; the side is --"
                        f"{'patch_size' if config.method == 'exemplar' else 'image_size'})")
    if config.arch in EXEMPLAR_ARCHS:
        problems.append(f"--low_res_size needs a ResNet (global pooling): the {config.arch} Exemplar-CNN's fc layer "
                        f"is sized for {config.input_size}-pixel inputs")
    return problems


def _run_problems(config: TrainConfig) -> list[str]:
    """Where the run reads from and reports to: the TPU, the kNN monitor, bad-file skipping, the time budget."""
    problems = []
    if config.strategy == "tpu" and not config.tpu:
        problems.append("--strategy=tpu needs --tpu (a TPU name or grpc:// address)")
    if config.data_service and (problem := service.address_problem("data_service", config.data_service)):
        problems.append(problem)
    if config.knn_every and not config.knn_source:
        problems.append("--knn_every needs --knn_source (a labelled source)")
    if config.train_minutes and config.strategy == "multi_worker":
        problems.append("--train_minutes is not supported with --strategy=multi_worker (every worker would time its "
                        "own steps and choose its own --steps)")
    if config.train_minutes and config.data_service:
        problems.append("--train_minutes is not supported with --data_service (timing the step would take batches "
                        "from the service's job that the run then never sees)")
    if config.skip_bad_images and not config.source.startswith("folder:"):
        problems.append(f"--skip_bad_images applies to folder:<dir> sources (their files are checked one by one), "
                        f"not --source={config.source}")
    return problems


def instance_problems(config: TrainConfig, num_instances: int) -> list[str]:
    """The rules that need N, the number of instances (bank rows) the source gave: checked once the data is open,
    before anything is written. NCE draws m noise rows out of N (uniform, Pn = 1/N): with m >= N every instance
    is scored as noise more often than as data and the codes collapse. --neighbours needs k other rows."""
    problems = []
    if config.neighbours >= num_instances:
        problems.append(f"--neighbours={config.neighbours} must be smaller than the {num_instances} instances of "
                        f"--source={config.source}")
    if config.objective != "nce":
        return problems
    if config.nce_m >= num_instances:
        problems.append(f"--nce_m={config.nce_m} must be smaller than the {num_instances} instances of --source="
                        f"{config.source}: pass --nce_m={max(1, num_instances // 2)} or --objective=nonparametric (the "
                        f"exact softmax over the bank, cheap for small sources)")
    if config.nce_noise == "shared" and num_instances <= config.batch_size:
        problems.append(f"--nce_noise=shared draws noise from the instances not in the batch: the source's "
                        f"{num_instances} instances must be more than --batch_size={config.batch_size}")
    return problems


def check_instances(config: TrainConfig, num_instances: int) -> None:
    """Raises InputError (one line) when `instance_problems` finds any."""
    problems = instance_problems(config, num_instances)
    if problems:
        raise InputError("Bad training flags for this source: " + "; ".join(problems))


CROSS_FIELD_RULES: tuple[Callable[[TrainConfig], list[str]], ...] = (
    _objective_problems, _seed_sampling_problems, _augment_problems, _bank_problems, _merge_problems, _schedule_problems,
    _resolution_problems, _run_problems)


def validate(config: TrainConfig, steps_fitted: bool = False) -> TrainConfig:
    """Raises InputError (a ValueError) listing every bad value, before any data is read or a model built: each
    field's declared checks (valid values, ranges), then the rules between fields. With --train_minutes, --steps
    is a placeholder until the budget fits it: the rules on its count (`_length_problems`) wait for `steps_fitted`
    (the fits, and a resume, whose recorded count is final)."""
    problems = settings.field_problems(config)
    for rule in CROSS_FIELD_RULES + ((_length_problems,) if steps_fitted or not config.train_minutes else ()):
        problems += rule(config)
    if problems:
        raise InputError("Bad training flags:\n  " + "\n  ".join(problems))
    return config


FLAGS_DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "docs",
                         "flags.md")


def flags_doc() -> str:
    """docs/flags.md: the flag table of `python -m exemplar_tf.train`, generated from TrainConfig."""
    per_method = {field: ", ".join(f"`{recipe[field]}` ({method})" for method, recipe in METHOD_DEFAULTS.items())
                  for field in METHOD_DEFAULTS["exemplar"]}
    for (source, method), recipe in SOURCE_DEFAULTS.items():
        for field, value in recipe.items():
            per_method[field] += f"; `{value}` ({method} on --source={source})"
    auto = ", ".join(f"`{labelled}` for --source={source}" for source, labelled in AUTO_KNN_SOURCES.items())
    per_method["knn_source"] = f"`auto`: {auto}, else none"
    per_method["run_dir"] = "`runs/<name>` (`TrainConfig` itself requires it)"
    return ("# Training flags\n\n"
            "The flags of `python -m exemplar_tf.train`, one per `TrainConfig` field "
            "(`exemplar_tf/training/config.py`), in declaration order; a run directory's `flags.cfg` holds them "
            "all, resolved. Generated from the field declarations by `python -m exemplar_tf.training.config` (a test "
            "fails when this file is out of date).\n\n" + settings.markdown_table(TrainConfig, per_method))


def write_flags_doc(path: str = FLAGS_DOC) -> str:
    with open(path, "w") as file:
        file.write(flags_doc())
    return path


if __name__ == "__main__":
    print(f"Wrote {write_flags_doc()}")
