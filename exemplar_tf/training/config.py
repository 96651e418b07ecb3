"""The training run's configuration: one frozen dataclass, validated before any work starts."""
from __future__ import annotations

import dataclasses
from typing import Sequence

from exemplar_tf.choices import (ARCHS, AUGMENT_ON, BANK_OBJECTIVES, EXEMPLAR_ARCHS, OBJECTIVES,  # noqa: F401
                                 PRECISIONS)
from exemplar_tf.errors import InputError

METHODS = ("exemplar", "npid")
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
PRESETS = ("paper", "release_code")
SEED_SAMPLINGS = ("fixed", "online")
NCE_NOISE = ("per_example", "shared")
BANK_INITS = ("random", "features")
RESNET_STEMS = ("auto", "cifar", "imagenet")

# What a field left at None becomes, per method: each paper's own recipe. Exemplar-CNN (Dosovitskiy et al.'s
# release): the small network, the parametric softmax over the surrogate classes, lr 0.01, weight decay 0.004,
# lr x0.3 at each drop. NPID (Wu et al.): ResNet-18, NCE, lr 0.03, weight decay 5e-4, lr x0.1 at each drop.
METHOD_DEFAULTS = {
    "exemplar": {"arch": "small", "objective": "softmax", "lr": 0.01, "weight_decay": 0.004, "lr_decay_factor": 0.3},
    "npid": {"arch": "resnet18", "objective": "nce", "lr": 0.03, "weight_decay": 5e-4, "lr_decay_factor": 0.1},
}
# --knn_source=auto: the labelled set that goes with a source, where there is one without asking.
AUTO_KNN_SOURCES = {"demo": "demo_labelled"}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs; `train.py` fills it from absl flags, tests build it directly."""

    run_dir: str
    name: str = "exemplar"
    # Data.
    source: str = "demo"
    split: str = "train"
    data_dir: str | None = None
    method: str = "exemplar"
    max_instances: int = 0
    skip_bad_images: bool = False  # folder sources: leave out unreadable / too-small files (run_dir/skipped_images.txt)
    # Exemplar-CNN surrogate data.
    seed_sampling: str = "fixed"  # fixed: num_seeds seeds drawn once, one class each; online: one class per image
    num_seeds: int = 8000
    seeds_per_image: int = 0  # 0: ceil(num_seeds / source images), at least 1 (see `seeds_per_image_for`)
    patch_size: int = 32
    preset: str = "paper"
    transforms: Sequence[str] = ("translate", "scale", "rotate", "pca_color", "saturation_value", "hue")
    fixed_copies: int = 0
    augment_on: str = "host"
    merge_classes_at: int = 0  # > 0: at this step cluster the seeds into merge_to classes (data/merging.py)
    merge_to: int = 0
    # NPID whole-image instances.
    image_size: int = 32
    # Model and objective.
    arch: str | None = None  # None: METHOD_DEFAULTS
    resnet_stem: str = "auto"
    resnet_width: int = 64
    objective: str | None = None  # None: METHOD_DEFAULTS
    embedding_dim: int = 128
    dropout: float = 0.5
    batch_norm: bool = False
    allow_unnormalised_bank: bool = False
    tau: float = 0.07
    nce_m: int = 4096
    nce_noise: str = "per_example"
    nce_z_momentum: float = 0.99
    bank_momentum: float = 0.5
    bank_init: str = "random"
    proximal_lambda: float = 0.0
    # Optimisation.
    batch_size: int = 128
    steps: int = 10000
    lr: float | None = None  # None: METHOD_DEFAULTS
    lr_decay_at: Sequence[float] = (0.6, 0.8)
    lr_decay_factor: float | None = None  # None: METHOD_DEFAULTS
    momentum: float = 0.9
    weight_decay: float | None = None  # None: METHOD_DEFAULTS
    # Speed.
    precision: str = "float32"
    steps_per_call: int = 10
    jit_compile: bool = False
    # Distribution.
    strategy: str = "default"
    tpu: str = ""
    # Book-keeping.
    seed: int = 0
    log_every: int = 50
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    knn_source: str = "auto"  # auto: AUTO_KNN_SOURCES[source], else none; "": none
    knn_split: str = "test"
    knn_train_split: str = "train"
    knn_every: int = 0
    knn_max_examples: int = 2000
    export_base: str = "savedmodels"
    overwrite: bool = False  # an existing run directory with other training settings is moved aside
    progress: bool = True

    def __post_init__(self):
        """Fills the fields left at None (and knn_source=auto) from the method's defaults."""
        for field, value in METHOD_DEFAULTS.get(self.method, METHOD_DEFAULTS["exemplar"]).items():
            if getattr(self, field) is None:
                object.__setattr__(self, field, value)
        if self.knn_source == "auto":
            object.__setattr__(self, "knn_source", AUTO_KNN_SOURCES.get(self.source, ""))

    @property
    def uses_bank(self) -> bool:
        return self.objective in BANK_OBJECTIVES

    @property
    def input_size(self) -> int:
        """Side of the training images: the seed patch (exemplar) or the NPID crop."""
        return self.patch_size if self.method == "exemplar" else self.image_size


def seeds_per_image_for(config: TrainConfig, num_images: int) -> int:
    """--seeds_per_image, or for 0 the fewest seeds per image that reach --num_seeds from `num_images` images."""
    return config.seeds_per_image or max(1, -(-config.num_seeds // max(num_images, 1)))


def _check_choice(name: str, value: str, choices: Sequence[str]) -> list[str]:
    return [] if value in choices else [f"--{name}={value!r} is not one of {', '.join(choices)}"]


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
    if not config.merge_classes_at < config.steps:
        problems.append(f"--merge_classes_at={config.merge_classes_at} must be smaller than --steps={config.steps}")
    if config.strategy == "multi_worker":
        problems.append("--merge_classes_at is not supported with --strategy=multi_worker (every worker would "
                        "cluster the seeds on its own)")
    return problems


def validate(config: TrainConfig) -> TrainConfig:
    """Raises InputError (a ValueError) listing every bad value, before any data is read or a model built."""
    from exemplar_tf.augment.presets import ALL_TRANSFORMS

    problems: list[str] = []
    problems += _check_choice("method", config.method, METHODS)
    problems += _check_choice("objective", config.objective, OBJECTIVES)
    problems += _check_choice("arch", config.arch, ARCHS)
    problems += _check_choice("strategy", config.strategy, STRATEGIES)
    problems += _check_choice("preset", config.preset, PRESETS)
    problems += _check_choice("augment_on", config.augment_on, AUGMENT_ON)
    problems += _check_choice("seed_sampling", config.seed_sampling, SEED_SAMPLINGS)
    problems += _check_choice("nce_noise", config.nce_noise, NCE_NOISE)
    problems += _check_choice("bank_init", config.bank_init, BANK_INITS)
    problems += _check_choice("resnet_stem", config.resnet_stem, RESNET_STEMS)
    if config.resnet_width < 1:
        problems.append(f"--resnet_width must be a positive number of channels, got {config.resnet_width}")
    problems += _check_choice("precision", config.precision, PRECISIONS)
    unknown = [t for t in config.transforms if t not in ALL_TRANSFORMS]
    if unknown:
        problems.append(f"--transforms has unknown names {unknown}; valid: {', '.join(ALL_TRANSFORMS)}")
    positive_ints = ("num_seeds", "patch_size", "image_size", "embedding_dim", "batch_size",
                     "steps", "log_every", "checkpoint_every", "keep_checkpoints", "nce_m",
                     "steps_per_call")
    for field in positive_ints:
        if getattr(config, field) <= 0:
            problems.append(f"--{field} must be > 0, got {getattr(config, field)}")
    for field in ("max_instances", "seeds_per_image", "fixed_copies", "knn_every", "knn_max_examples"):
        if getattr(config, field) < 0:
            problems.append(f"--{field} must be >= 0, got {getattr(config, field)}")
    if not config.tau > 0:
        problems.append(f"--tau must be > 0, got {config.tau}")
    if not config.lr > 0:
        problems.append(f"--lr must be > 0, got {config.lr}")
    for field in ("nce_z_momentum", "bank_momentum", "momentum", "lr_decay_factor"):
        value = getattr(config, field)
        if not 0.0 <= value <= 1.0:
            problems.append(f"--{field} must be in [0, 1], got {value}")
    if not 0.0 <= config.dropout < 1.0:
        problems.append(f"--dropout must be in [0, 1), got {config.dropout}")
    if config.weight_decay < 0:
        problems.append(f"--weight_decay must be >= 0, got {config.weight_decay}")
    if any(not 0.0 < f < 1.0 for f in config.lr_decay_at):
        problems.append(f"--lr_decay_at are fractions of --steps in (0, 1), got {list(config.lr_decay_at)}")
    if config.method == "npid" and config.objective == "softmax":
        problems.append("--objective=softmax needs surrogate classes: use it with --method=exemplar")
    if config.method == "exemplar" and config.arch.startswith("resnet") and config.patch_size < 32:
        problems.append("--patch_size must be >= 32 for ResNet encoders")
    if config.seed_sampling == "online" and config.method != "exemplar":
        problems.append("--seed_sampling=online draws Exemplar-CNN seed patches: use it with --method=exemplar (npid "
                        "crops whole images its own way)")
    if config.seed_sampling == "online" and config.fixed_copies:
        problems.append("--fixed_copies is a pool of copies of fixed seeds: use it with --seed_sampling=fixed, not "
                        "online (every visit draws a fresh patch)")
    if (config.objective == "nce" and config.method == "exemplar" and config.seed_sampling == "fixed"
            and config.nce_m >= config.num_seeds):
        problems.append(f"--nce_m={config.nce_m} must be smaller than --num_seeds={config.num_seeds}")
    if (config.uses_bank and config.arch in EXEMPLAR_ARCHS and not config.batch_norm
            and not config.allow_unnormalised_bank):
        problems.append(f"--objective={config.objective} on the {config.arch} Exemplar-CNN needs --batch_norm: without "
                        "it the bank objective kills the fc ReLUs and every image gets the same code (BUILD_NOTES.md); "
                        "--allow_unnormalised_bank runs it anyway")
    if config.proximal_lambda < 0:
        problems.append(f"--proximal_lambda must be >= 0, got {config.proximal_lambda}")
    if config.proximal_lambda > 0 and not config.uses_bank:
        problems.append(f"--proximal_lambda needs a memory bank: use --objective=nce or nonparametric, "
                        f"not {config.objective}")
    if config.bank_init == "features" and not config.uses_bank:
        problems.append(f"--bank_init=features needs a memory bank: use --objective=nce or nonparametric, "
                        f"not {config.objective}")
    if config.bank_init == "features" and config.strategy == "multi_worker":
        problems.append("--bank_init=features is not supported with --strategy=multi_worker (every worker would "
                        "compute its own rows)")
    problems += _merge_problems(config)
    if config.strategy == "tpu" and not config.tpu:
        problems.append("--strategy=tpu needs --tpu (a TPU name or grpc:// address)")
    if config.knn_every and not config.knn_source:
        problems.append("--knn_every needs --knn_source (a labelled source)")
    if config.skip_bad_images and not config.source.startswith("folder:"):
        problems.append(f"--skip_bad_images applies to folder:<dir> sources (their files are checked one by one), "
                        f"not --source={config.source}")
    if not config.run_dir:
        problems.append("--run_dir must be set")
    if problems:
        raise InputError("Bad training flags:\n  " + "\n  ".join(problems))
    return config
