"""The encoder registry: arch name -> `Encoder` class, and the options that rebuild an encoder.

Every encoder class records its own options (`Encoder.options()`: arch, input_size and the `build_encoder`
keywords its class takes, `Encoder.OPTIONS`), and `encoder_from_options` builds the same architecture from them,
so float32 copies, exports, restores and fine-tuning rebuild encoders without knowing any class. Options are
plain JSON values (the export writes them into export_info.json); the mean RGB is a weight and the precision a
dtype policy, so neither is an option.
"""
from __future__ import annotations

import itertools
from typing import Mapping, Sequence

import keras

from exemplar_tf.choices import ARCHS
from exemplar_tf.models.layers import Encoder
from exemplar_tf.models.precision import dtype_policy

ENCODERS: dict[str, type[Encoder]] = {}  # arch -> class; filled by `register_encoder`


def register_encoder(*archs: str):
    """Class decorator: `build_encoder` builds `archs` with this `Encoder` subclass."""

    def register(cls: type[Encoder]) -> type[Encoder]:
        for arch in archs:
            if arch in ENCODERS:
                raise ValueError(f"arch {arch!r} is already registered to {ENCODERS[arch].__name__}")
            ENCODERS[arch] = cls
        return cls

    return register


def encoder_class(arch: str) -> type[Encoder]:
    if arch not in ENCODERS:
        raise ValueError(f"unknown arch {arch!r}; use one of {ARCHS}")
    return ENCODERS[arch]


def create(arch: str, *, input_size: int, mean_rgb: Sequence[float], precision: str = "float32",
           **options) -> Encoder:
    """An encoder `arch` with its class's `options` (missing ones take the class defaults) and its variables (one
    forward pass on a zero batch at `input_size`); its layers compute in `precision` (`models.PRECISIONS`)."""
    cls = encoder_class(arch)
    unknown = set(options) - set(cls.OPTIONS)
    if unknown:
        raise TypeError(f"{arch} encoders have no options {sorted(unknown)}; they take {sorted(cls.OPTIONS)}")
    with dtype_policy(precision):
        encoder = cls.from_options(arch, input_size=input_size, mean_rgb=mean_rgb, **{**cls.OPTIONS, **options})
    encoder(keras.ops.zeros((1, input_size, input_size, 3)))
    return encoder


def encoder_from_options(options: Mapping, *, mean_rgb: Sequence[float] = (0.0, 0.0, 0.0),
                         precision: str = "float32") -> Encoder:
    """The encoder `options` describe (`Encoder.options()`: arch, input_size and its class's options), with
    fresh weights; the mean is `mean_rgb` until weights are copied in."""
    options = dict(options)
    return create(options.pop("arch"), input_size=int(options.pop("input_size")), mean_rgb=mean_rgb,
                  precision=precision, **options)


def resolved_options(options: Mapping) -> dict:
    """`options` (`Encoder.options()` form) with every "auto" choice resolved as its class resolves it when it
    builds the encoder (`Encoder.resolve_options`): the options an encoder built from them would record."""
    return encoder_class(options["arch"]).resolve_options(dict(options))


def recorded_options(settings) -> list[dict]:
    """Option sets (`Encoder.options()` form) for the encoder that `settings` describe: a mapping (an export's
    export_info.json) or an object (a training run's TrainConfig) with "arch", "input_size" and some of the arch's
    options under their own names; anything else in it is ignored.

    One set when every option is there. Exports written before the options were recorded lack some: those take
    every value of the class's `UNRECORDED_GUESSES` (one set per combination, in order; the caller keeps the
    first whose variables match) or else the class default.
    """
    get = settings.get if isinstance(settings, Mapping) else (lambda name: getattr(settings, name, None))
    arch = get("arch")
    cls = encoder_class(arch)
    recorded = {name: get(name) for name in cls.OPTIONS if get(name) is not None}
    missing = [name for name in cls.OPTIONS if name not in recorded]
    guesses = [cls.UNRECORDED_GUESSES.get(name, (cls.OPTIONS[name],)) for name in missing]
    sets = []
    for values in itertools.product(*guesses):
        chosen = {**recorded, **dict(zip(missing, values))}
        sets.append({"arch": arch, "input_size": int(get("input_size")),
                     **{name: chosen[name] for name in cls.OPTIONS}})
    return sets
