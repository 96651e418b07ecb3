"""The run directory: its resolved flagfile, the rule for reusing it, and atomic writes of shared files.

A run directory holds `flags.cfg` (the resolved TrainConfig, one `--flag=value` per line), `run_id`, `seeds.npz`
(exemplar), `checkpoints/`, `tensorboard/` and, under multi-worker training, `tmp_worker_<id>/` while a run is
going. Only the chief writes shared files. Re-running a command on an existing run directory resumes it when
the settings that define what is trained are unchanged; `--overwrite` starts over and keeps the old directory
as `<run_dir>.old-<time>`.
"""
from __future__ import annotations

import dataclasses
import os
import time
import uuid

from exemplar_tf.errors import InputError
from exemplar_tf.io.atomic import atomic_write
from exemplar_tf.optim.drops import moved_drops
from exemplar_tf.training import settings
from exemplar_tf.training.config import TrainConfig

FLAGFILE = "flags.cfg"
SEEDS_FILE = "seeds.npz"  # the exemplar seed cache (training.inputs.load_or_sample_seeds)
SKIPPED_IMAGES_FILE = "skipped_images.txt"  # what --skip_bad_images left out, one "<path>\t<reason>" line each
RUN_ID_FILE = "run_id"  # one id per run: written when its directory's run starts, kept on resume, new after --overwrite
# Settings that may change when a run resumes: length, book-keeping, monitoring, where things go and how fast
# the step runs. Every other setting defines what is trained (data, seeds, model, objective, N, optimiser).
RESUME_SAFE = frozenset({
    "run_dir", "name", "data_dir", "steps", "log_every", "checkpoint_every", "keep_checkpoints", "knn_source",
    "knn_split", "knn_train_split", "knn_every", "knn_max_examples", "export_base", "progress", "strategy", "tpu",
    "overwrite", "precision", "steps_per_call", "jit_compile", "data_service", "bank_sharding", "train_minutes",
})


class RunDirMismatch(ValueError):
    """An existing run directory was made with settings that change what is trained."""


def flag_line(name: str, value) -> str:
    """`--name=value` as a flagfile line (sequences comma-joined)."""
    return f"--{name}={','.join(map(str, value)) if isinstance(value, (list, tuple)) else value}"


def config_lines(config: TrainConfig) -> list[str]:
    """Every TrainConfig field as resolved (method defaults filled in), `None` fields and --overwrite left out:
    --overwrite is what one command did to the directory, not a setting of the run, and a flags.cfg holding it
    would start the run over when given back to resume it."""
    return [flag_line(field.name, getattr(config, field.name)) for field in dataclasses.fields(config)
            if getattr(config, field.name) is not None and field.name != "overwrite"]


def read_flagfile(path: str) -> dict[str, str]:
    """`--key=value` lines of a resolved flagfile as {key: value string} (other lines ignored)."""
    values = {}
    with open(path) as file:
        for line in file:
            line = line.strip()
            if line.startswith("--") and "=" in line:
                key, value = line[2:].split("=", 1)
                values[key] = value
    return values


def changed_settings(saved: dict[str, str], config: TrainConfig) -> list[tuple[str, str, str]]:
    """(flag, old, new) for every setting outside RESUME_SAFE whose value differs from the saved flagfile's.

    A setting the saved file does not name (a flag added since it was written) is compared with its default, the
    value that run trained with.
    """
    current = dict(line[2:].split("=", 1) for line in config_lines(config))
    defaults = {field.name: flag_line(field.name, field.default)[len(field.name) + 3:]
                for field in dataclasses.fields(TrainConfig) if field.default not in (None, dataclasses.MISSING)}
    before = {key: saved.get(key, defaults.get(key)) for key in current}
    changes = []
    for key, value in current.items():
        old = before[key]
        if old is None or old == value:
            continue
        if key == "steps" and (moved := _moved_by_steps(config, int(old), checkpoint_step(config.run_dir))):
            changes.append((moved, old, value))
        elif key not in RESUME_SAFE or _changes_optimizer(key, old, value):
            changes.append((key, old, value))
    return changes


def _moved_by_steps(config: TrainConfig, old_steps: int, trained_to: int | None) -> str:
    """For a changed --steps: "steps" named with what it moves, each a fraction of --steps ("" when it moves
    nothing): the switch to full resolution (--low_res_until; a resumed run could go back to the low side after the
    full one), the start of bank neighbours as positives (--neighbours_from; it could turn them off again), and the
    learning rate of a step the run has already trained (`trained_to`, its newest checkpoint's step; None: unknown),
    so that a resumed run stays the run of its final --steps: a step decay's passed drop moved later would raise
    the rate again, and a cosine's rate after the warm-up depends on --steps at every step."""
    before = dataclasses.replace(config, steps=old_steps)
    moved = [f"with --{flag}={fraction} it moves {what} from step {was} to {now}"
             for (flag, what, fraction, now), (*_, was) in zip(config.step_switches, before.step_switches, strict=True)
             if was != now]
    if trained_to is not None:
        moved += _moved_rates(before, config, trained_to)
    return f"steps ({'; '.join(moved)})" if moved else ""


def _moved_rates(before: TrainConfig, after: TrainConfig, trained_to: int) -> list[str]:
    """What the change of --steps from `before` to `after` does to the rates of the steps [0, trained_to) a run has
    trained: step i trains at the rate the schedule gives optimizer iteration i (`optim.schedules`: a drop at
    boundary b applies from iteration b + 1; a cosine after --lr_warmup_steps bends over --steps)."""
    if after.lr_schedule == "cosine":
        if trained_to <= after.lr_warmup_steps + 1:
            return []
        return [f"with --lr_schedule=cosine it changes the learning rate of every step after the warm-up, and the "
                f"run has trained {trained_to} steps at the rates of --steps={before.steps}"]
    return [f"with --lr_decay_at={fraction} it moves a learning-rate drop the run has trained past from step {was} "
            f"to {now}" for fraction, was, now in moved_drops(after.lr_decay_at, before.steps, after.steps, trained_to)]


def _changes_optimizer(key: str, old: str, new: str) -> bool:
    """A precision switch to or from mixed_float16 adds or drops the loss-scale optimizer's variables: the
    checkpoint no longer fits, so it is not resume-safe although other precision switches are."""
    return key == "precision" and "mixed_float16" in (old, new)


def has_checkpoint(run_dir: str) -> bool:
    """Whether training wrote anything to resume from (a checkpoint state or checkpoint files)."""
    folder = os.path.join(run_dir, "checkpoints")
    return os.path.isdir(folder) and any(name == "checkpoint" or name.startswith("ckpt-") for name in os.listdir(folder))


def checkpoint_number(prefix: str) -> int | None:
    """The step of checkpoint `prefix` (`.../ckpt-<step>`: training and fine-tuning number their checkpoints by
    step), None for a prefix not named so."""
    name = os.path.basename(prefix)
    number = name.removeprefix("ckpt-")
    return int(number) if number != name and number.isdecimal() else None


def checkpoint_step(run_dir: str) -> int | None:
    """The step of the newest checkpoint file in `run_dir`/checkpoints (`ckpt-<step>.index`), None without one."""
    folder = os.path.join(run_dir, "checkpoints")
    names = os.listdir(folder) if os.path.isdir(folder) else []
    steps = [checkpoint_number(name.removesuffix(".index")) for name in names if name.endswith(".index")]
    return max((step for step in steps if step is not None), default=None)


def with_recorded_steps(config: TrainConfig) -> TrainConfig:
    """`config` with --train_minutes on a run directory that holds a checkpoint: its --steps replaced by the ones
    recorded in the run's flags.cfg (fitted to the budget when the run started; a resume keeps that schedule
    and does not time the step again). Otherwise `config` as it is."""
    path = os.path.join(config.run_dir, FLAGFILE)
    if not (config.train_minutes and has_checkpoint(config.run_dir) and os.path.exists(path)):
        return config
    recorded = read_flagfile(path).get("steps", "")
    if not recorded.isdigit() or not int(recorded):
        raise InputError(f"{path}: --steps={recorded!r} is not a positive step count; the resume needs the steps "
                         f"the run was fitted to")
    return dataclasses.replace(config, steps=int(recorded))


def unbudgeted_resume_note(config: TrainConfig) -> str:
    """The line a resume owes the user when it passes --train_minutes=0 to a run whose --steps a budget fitted, and
    --steps differs from the fitted count: it trains to the given --steps, the schedule on them. "" otherwise
    (the resume then records --train_minutes=0: a later one is a run of a fixed --steps)."""
    path = os.path.join(config.run_dir, FLAGFILE)
    if config.train_minutes or not (has_checkpoint(config.run_dir) and os.path.exists(path)):
        return ""
    recorded = read_flagfile(path)
    minutes, steps = recorded.get("train_minutes", "0"), recorded.get("steps", "")
    try:
        budgeted = float(minutes) > 0
    except ValueError:  # a hand-edited file: check_reuse names what differs
        return ""
    if not budgeted or steps == str(config.steps):
        return ""
    return (f"Note: {config.run_dir} was fitted to --steps={steps} by --train_minutes={minutes}; with "
            f"--train_minutes=0 it trains to --steps={config.steps} instead, its learning-rate schedule laid over "
            f"those (resume with --train_minutes={minutes} or --steps={steps} to keep its schedule)")


def check_usable(run_dir: str) -> None:
    """Raises InputError when `run_dir` exists and is not a folder (before anything is created)."""
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise InputError(f"{run_dir}: --run_dir is a file, not a folder; give a folder path")


def check_reuse(config: TrainConfig, overwrite: bool) -> str | None:
    """Before a run starts: raises RunDirMismatch if `config.run_dir` holds checkpoints of a run with other
    training settings (unless `overwrite`); with `overwrite`, moves an existing run directory aside and returns
    where to. A run directory with no checkpoint yet (a start that failed before training) takes the new
    settings; a seed cache drawn for other (or unrecorded) settings is removed."""
    path = os.path.join(config.run_dir, FLAGFILE)
    if overwrite and os.path.exists(path):
        kept = f"{config.run_dir.rstrip(os.sep)}.old-{time.strftime('%Y%m%d-%H%M%S')}"
        os.replace(config.run_dir, kept)
        return kept
    if not has_checkpoint(config.run_dir):
        seeds = os.path.join(config.run_dir, SEEDS_FILE)
        if os.path.exists(seeds) and (not os.path.exists(path) or changed_settings(read_flagfile(path), config)):
            os.remove(seeds)
        return None
    trained_to = checkpoint_step(config.run_dir)
    if trained_to is not None and trained_to > config.steps:
        raise RunDirMismatch(f"{config.run_dir} has trained {trained_to} steps (its newest checkpoint), past "
                             f"--steps={config.steps}: nothing would train, and the run would be recorded as one of "
                             f"{config.steps} steps. Give --steps={trained_to} or more to resume it, another --run_dir "
                             f"for a shorter run, or --overwrite to start over (the old directory is kept as "
                             f"{config.run_dir.rstrip(os.sep)}.old-<time>)")
    if not os.path.exists(path):
        return None
    changes = changed_settings(read_flagfile(path), config)
    if changes:
        listed = "; ".join(f"--{key} was {old!r}, now {new!r}" for key, old, new in changes)
        raise RunDirMismatch(f"{config.run_dir} holds a run trained with other settings ({listed}). Use another "
                             f"--run_dir, or --overwrite to start over (the old directory is kept as "
                             f"{config.run_dir.rstrip(os.sep)}.old-<time>)")
    return None


def run_id(run_dir: str) -> str | None:
    """The id of the run in `run_dir` (`RUN_ID_FILE`): None before a run started there, or for a directory written
    before ids were. Exports record it, so an export of an earlier run in the same directory (started over with
    --overwrite) is told from one of this run."""
    try:
        with open(os.path.join(run_dir, RUN_ID_FILE)) as file:
            return file.read().strip() or None
    except FileNotFoundError:
        return None


def write_flagfile(config: TrainConfig) -> str:
    """Writes `<run_dir>/flags.cfg` (atomically), and the run's id when it has none yet, and returns the flagfile's
    path. Only the chief calls it."""
    os.makedirs(config.run_dir, exist_ok=True)
    if run_id(config.run_dir) is None:
        atomic_write(os.path.join(config.run_dir, RUN_ID_FILE), f"{uuid.uuid4().hex}\n".encode())
    path = os.path.join(config.run_dir, FLAGFILE)
    atomic_write(path, ("\n".join(config_lines(config)) + "\n").encode())
    return path


def wait_for_file(path: str, timeout_s: float = 600.0, poll_s: float = 0.5) -> None:
    """Blocks until the chief has written `path` (non-chief workers read shared files only once they exist)."""
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path}: not written by the chief worker within {timeout_s:.0f} s")
        time.sleep(poll_s)


def _flagfile_values(path: str, booleans: set[str]) -> dict[str, str]:
    """`read_flagfile`, and absl's bare `--flag` / `--noflag` lines of the boolean flags `booleans` (hand-written
    flagfiles use them) as "true" / "false"; a later line wins, as in absl."""
    values = {}
    with open(path) as file:
        for line in file:
            line = line.strip()
            key, equals, value = line[2:].partition("=") if line.startswith("--") else ("", "", "")
            if equals:
                values[key] = value
            elif key in booleans:
                values[key] = "true"
            elif key.startswith("no") and key[2:] in booleans:
                values[key[2:]] = "false"
    return values


def config_from_flagfile(path: str) -> TrainConfig:
    """The TrainConfig of a run from its resolved `flags.cfg` (`--key=value` lines written by train.py). Values
    are typed by the fields' declarations (`settings.from_text`: an empty value of an optional field is None;
    absl's bare `--flag` / `--noflag` set a boolean); keys that are not fields are ignored (flags since removed),
    missing ones keep the default (flags added since the file was written; run_dir: the flagfile's folder). Not
    validated: a run trained under older rules can still be exported. A value that does not parse as its field's
    type raises InputError naming the file and the flag."""
    declared = settings.spec_map(TrainConfig)
    booleans = {name for name, spec in declared.items() if spec.kind == "bool"}
    typed = {}
    for key, raw in _flagfile_values(path, booleans).items():
        if key in declared:
            try:
                typed[key] = settings.from_text(declared[key], raw)
            except ValueError as error:
                raise InputError(f"{path}: {error}") from None
    return TrainConfig(**{"run_dir": os.path.dirname(os.path.abspath(path)), **typed})


def read_run_config(run_dir: str) -> TrainConfig:
    """The TrainConfig of the run in `run_dir` (its `flags.cfg`, `config_from_flagfile`), run_dir as given."""
    return dataclasses.replace(config_from_flagfile(os.path.join(run_dir, FLAGFILE)), run_dir=run_dir)
