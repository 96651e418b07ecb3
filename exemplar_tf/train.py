"""Train an encoder by instance discrimination.

    python -m exemplar_tf.train --flagfile=flags/stl10.cfg [--flag=value ...]

Flags given after the flagfile override it. The run directory gets the resolved flagfile (flags.cfg),
checkpoints/, tensorboard/ and, at the end, the export under --export_base/<name>/<version>/.
Re-running the same command resumes from the last checkpoint.
"""
from __future__ import annotations

import os
import sys

from absl import app, flags

from exemplar_tf import errors
from exemplar_tf.errors import cli
from exemplar_tf.training import config as cfg
from exemplar_tf.training import rundir, settings


def _define(spec: settings.Spec) -> flags.FlagHolder:
    """The absl flag of one TrainConfig field: its type from the field's type, enum where it lists valid values
    (lists stay comma-separated lists: their items are checked by `validate`)."""
    if spec.kind == "list":
        return flags.DEFINE_list(spec.name, spec.flag_default, spec.help)
    if spec.choices is not None:
        return flags.DEFINE_enum(spec.name, spec.flag_default, spec.choices, spec.help)
    define = {"str": flags.DEFINE_string, "bool": flags.DEFINE_boolean, "int": flags.DEFINE_integer,
              "float": flags.DEFINE_float}[spec.kind]
    return define(spec.name, spec.flag_default, spec.help)


_FLAGS = {spec.name: _define(spec) for spec in settings.specs(cfg.TrainConfig)}  # one flag per field


def _value(spec: settings.Spec, value):
    """A parsed flag value as the field's value: list items stripped and typed, an empty optional string None."""
    if spec.kind == "list":
        try:
            return settings.list_items(spec, value)
        except ValueError as error:
            raise errors.InputError(str(error)) from None
    return None if spec.optional and value == "" else value


def _range_check(spec: settings.Spec):
    """The field's own range check as a flag check, run while the flags are parsed (one line, exit 2)."""
    return lambda value: spec.check.problem(spec.name, _value(spec, value))


def _config_problems(values: flags.FlagValues) -> str | None:
    """cfg.validate's problems (the rules between fields) as one line: "--a ...; --b ..."."""
    del values  # config_from_flags reads the parsed flags
    try:
        config_from_flags()
    except errors.InputError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        return "; ".join(lines[1:] if len(lines) > 1 and lines[0].endswith(":") else lines)
    return None


for _spec in settings.specs(cfg.TrainConfig):  # each field's range, then the rules between fields, while parsing
    if isinstance(_spec.check, (settings.Range, settings.EachIn)):
        cli.check(_spec.name, _range_check(_spec))
cli.check_flags(_config_problems)


def config_from_flags() -> cfg.TrainConfig:
    """Builds the TrainConfig from the parsed flags (the only place global flag values are read)."""
    values = {spec.name: _value(spec, _FLAGS[spec.name].value) for spec in settings.specs(cfg.TrainConfig)}
    values["run_dir"] = values["run_dir"] or os.path.join("runs", values["name"])
    return cfg.validate(cfg.TrainConfig(**values))


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = config_from_flags()
    print(f"Loading TensorFlow for {config.run_dir} ...", flush=True)
    from exemplar_tf.serving import runs  # after flag validation: importing TensorFlow takes seconds
    from exemplar_tf.io.lock import DirectoryLocked
    from exemplar_tf.training import loop

    try:
        result = runs.train(config)
    except (rundir.RunDirMismatch, DirectoryLocked) as error:  # bad input: one line, as errors.run prints it
        print(f"Error: {error}", file=sys.stderr)
        return 2
    except (loop.TrainingDiverged, loop.WriteFailed, loop.WorkerLost) as error:
        print(f"Training stopped: {error}", file=sys.stderr)
        return 3
    if result.export_dir:
        trained = f"final loss {result.loss:.4f}" if result.steps_run else "nothing left to train"
        print(f"Finished {result.step} steps, {trained}")
        print(f"Export:      {result.export_dir}")
        print(f"TensorBoard: tensorboard --logdir {result.log_dir}")
        print(f"Checkpoints: {result.checkpoint_dir}")
    return 0


if __name__ == "__main__":
    errors.run(main)
