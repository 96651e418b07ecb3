"""The training run's configuration: one frozen dataclass, validated before any work starts."""
from __future__ import annotations

import dataclasses
from typing import Sequence

METHODS = ("exemplar", "npid")
OBJECTIVES = ("softmax", "nonparametric", "nce")
ARCHS = ("small", "medium", "large", "resnet18", "resnet50")
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
PRESETS = ("paper", "release_code")
AUGMENT_ON = ("host", "device")
NCE_NOISE = ("per_example", "shared")
BANK_INITS = ("random", "features")


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
    # Exemplar-CNN surrogate data.
    num_seeds: int = 8000
    seeds_per_image: int = 1
    patch_size: int = 32
    preset: str = "paper"
    transforms: Sequence[str] = ("translate", "scale", "rotate", "pca_color", "saturation_value", "hue")
    fixed_copies: int = 0
    augment_on: str = "host"
    # NPID whole-image instances.
    image_size: int = 32
    # Model and objective.
    arch: str = "medium"
    objective: str = "nce"
    embedding_dim: int = 128
    dropout: float = 0.5
    batch_norm: bool = False
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
    lr: float = 0.01
    lr_decay_at: Sequence[float] = (0.6, 0.8)
    lr_decay_factor: float = 0.3
    momentum: float = 0.9
    weight_decay: float = 0.004
    # Distribution.
    strategy: str = "default"
    tpu: str = ""
    # Book-keeping.
    seed: int = 0
    log_every: int = 50
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    knn_source: str = ""
    knn_split: str = "test"
    knn_train_split: str = "train"
    knn_every: int = 0
    knn_max_examples: int = 2000
    export_base: str = "savedmodels"
    progress: bool = True

    @property
    def uses_bank(self) -> bool:
        return self.objective in ("nonparametric", "nce")


def _check_choice(name: str, value: str, choices: Sequence[str]) -> list[str]:
    return [] if value in choices else [f"--{name}={value!r} is not one of {', '.join(choices)}"]


def validate(config: TrainConfig) -> TrainConfig:
    """Raises ValueError listing every bad value, before any data is read or a model built."""
    from exemplar_tf.augment.presets import ALL_TRANSFORMS

    problems: list[str] = []
    problems += _check_choice("method", config.method, METHODS)
    problems += _check_choice("objective", config.objective, OBJECTIVES)
    problems += _check_choice("arch", config.arch, ARCHS)
    problems += _check_choice("strategy", config.strategy, STRATEGIES)
    problems += _check_choice("preset", config.preset, PRESETS)
    problems += _check_choice("augment_on", config.augment_on, AUGMENT_ON)
    problems += _check_choice("nce_noise", config.nce_noise, NCE_NOISE)
    problems += _check_choice("bank_init", config.bank_init, BANK_INITS)
    unknown = [t for t in config.transforms if t not in ALL_TRANSFORMS]
    if unknown:
        problems.append(f"--transforms has unknown names {unknown}; valid: {', '.join(ALL_TRANSFORMS)}")
    positive_ints = ("num_seeds", "seeds_per_image", "patch_size", "image_size", "embedding_dim", "batch_size",
                     "steps", "log_every", "checkpoint_every", "keep_checkpoints", "nce_m")
    for field in positive_ints:
        if getattr(config, field) <= 0:
            problems.append(f"--{field} must be > 0, got {getattr(config, field)}")
    for field in ("max_instances", "fixed_copies", "knn_every", "knn_max_examples"):
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
    if config.objective == "nce" and config.method == "exemplar" and config.nce_m >= config.num_seeds:
        problems.append(f"--nce_m={config.nce_m} must be smaller than --num_seeds={config.num_seeds}")
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
    if config.strategy == "tpu" and not config.tpu:
        problems.append("--strategy=tpu needs --tpu (a TPU name or grpc:// address)")
    if config.knn_every and not config.knn_source:
        problems.append("--knn_every needs --knn_source (a labelled source)")
    if not config.run_dir:
        problems.append("--run_dir must be set")
    if problems:
        raise ValueError("Bad training flags:\n  " + "\n  ".join(problems))
    return config
