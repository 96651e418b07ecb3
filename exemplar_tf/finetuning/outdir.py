"""The fine-tuning directory (`--out_dir`): its recorded settings and the rule for reusing it.

`<out_dir>/settings.json` holds the resolved settings of the comparison (source, data, labelled subset, recipe,
baselines). Re-running on a directory that holds fine-tuning checkpoints resumes it only when every setting that
defines what is trained is unchanged: otherwise the run is refused with one line naming each changed setting with
its old and new value (training's rule for its run directory), and `--overwrite` starts over, keeping the old
directory as `<out_dir>.old-<time>`. `--steps` (unless it moves a learning-rate drop a run has fine-tuned past),
`--checkpoint_every`, `--baselines`, `--test_split`, `--data_dir` and where the export goes may change on a rerun.
A directory without checkpoints takes the new settings.
"""
from __future__ import annotations

import json
import os
import time

from exemplar_tf.errors import InputError
from exemplar_tf.io.atomic import atomic_write
from exemplar_tf.io.lock import HOLDER_FILE, DirectoryLock, DirectoryLocked
from exemplar_tf.optim.drops import moved_drops
from exemplar_tf.training.rundir import checkpoint_step

SETTINGS_FILE = "settings.json"
KINDS = ("pretrained", "random", "scratch")
# May change when a fine-tuning directory is reused: length, book-keeping, which baselines run, evaluation only,
# where data and exports are. Everything else decides the weights a checkpoint holds.
RESUME_SAFE = frozenset({"steps", "checkpoint_every", "baselines", "test_split", "data_dir", "export_base",
                         "export_name"})
PATH_SETTINGS = frozenset({"savedmodel", "run_dir"})


class OutDirMismatch(InputError):
    """The fine-tuning directory holds checkpoints made with other settings."""


def has_checkpoints(out_dir: str) -> bool:
    """Whether any fine-tuning run (pretrained, random, scratch) of `out_dir` wrote a checkpoint."""
    for kind in KINDS:
        folder = os.path.join(out_dir, kind, "checkpoints")
        if os.path.isdir(folder) and any(name == "checkpoint" or name.startswith("ckpt-")
                                         for name in os.listdir(folder)):
            return True
    return False


def _same(key: str, old, new) -> bool:
    if old == new:
        return True
    if key in PATH_SETTINGS and isinstance(old, str) and isinstance(new, str):
        return os.path.normpath(old) == os.path.normpath(new) or (
            os.path.exists(old) and os.path.exists(new) and os.path.samefile(old, new))
    return False


def changed_settings(saved: dict, current: dict) -> list[tuple[str, object, object]]:
    """(setting, old, new) for every recorded setting outside RESUME_SAFE whose value differs."""
    return [(key, saved[key], value) for key, value in current.items()
            if key not in RESUME_SAFE and key in saved and not _same(key, saved[key], value)]


def moved_rates(out_dir: str, saved: dict, settings: dict) -> list[str]:
    """For a new --steps with the same --lr_decay_at: each learning-rate drop it moves within the steps a run of
    `out_dir` has fine-tuned (its newest checkpoint; `optim.drops.moved_drops`), so that a resumed run stays the run
    of its final --steps rather than training some steps again at a rate it had left."""
    old_steps, new_steps, decay_at = saved.get("steps"), settings["steps"], settings["lr_decay_at"]
    if old_steps in (None, new_steps) or saved.get("lr_decay_at") != decay_at:
        return []
    moved = []
    for kind in KINDS:
        trained_to = checkpoint_step(os.path.join(out_dir, kind))
        if trained_to is None or trained_to > new_steps:  # past --steps: `run._check_steps` says so in its words
            continue
        moved += [f"--steps was {old_steps}, now {new_steps}: with --lr_decay_at={fraction} it moves a learning-rate "
                  f"drop the {kind} run has fine-tuned past from step {was} to {now}"
                  for fraction, was, now in moved_drops(decay_at, old_steps, new_steps, trained_to)]
    return moved


def _describe(key: str, old, new) -> str:
    if key == "source_step":
        return f"the source's checkpoint step was {old}, now {new}"
    return f"--{key} was {_flag_value(old)}, now {_flag_value(new)}"


def _flag_value(value) -> str:
    if isinstance(value, list):
        return repr(",".join(map(str, value)))
    return "unset" if value is None else repr(value)


def check_usable(out_dir: str) -> None:
    """Raises InputError when `out_dir` exists and is not a folder (before anything is created)."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise InputError(f"{out_dir}: --out_dir is a file, not a folder; give a folder path")


def locked(out_dir: str) -> DirectoryLock:
    """An exclusive lock on `out_dir` (created if missing) for one fine-tuning run: two in one directory would
    write each other's settings, checkpoints and results. A held one raises InputError naming its holder."""
    check_usable(out_dir)
    try:
        return DirectoryLock(out_dir, user="fine-tuning run", flag="--out_dir")
    except DirectoryLocked as error:
        raise InputError(str(error)) from None


def check_reuse(out_dir: str, settings: dict, overwrite: bool = False) -> str | None:
    """Before anything is fine-tuned: raises OutDirMismatch (one line) if `out_dir` holds fine-tuning checkpoints
    made with other settings, or with no recorded settings (directories written before they were recorded), unless
    `overwrite`, which moves an existing `out_dir` aside (unless it holds only the lock's holder file, `locked`)
    and returns where to. Then records `settings` (JSON values; the resume-safe ones as given this time) in
    `<out_dir>/settings.json`."""
    check_usable(out_dir)
    kept = None
    if overwrite and os.path.isdir(out_dir) and set(os.listdir(out_dir)) - {HOLDER_FILE}:
        kept = f"{out_dir.rstrip(os.sep)}.old-{time.strftime('%Y%m%d-%H%M%S')}"
        os.replace(out_dir, kept)
    elif has_checkpoints(out_dir):
        advice = (f"Use another --out_dir, or --overwrite to start over (the old directory is kept as "
                  f"{out_dir.rstrip(os.sep)}.old-<time>)")
        path = os.path.join(out_dir, SETTINGS_FILE)
        if not os.path.exists(path):
            raise OutDirMismatch(f"{out_dir} holds fine-tuning checkpoints whose settings were not recorded (made "
                                 f"before {SETTINGS_FILE} was written), so they may differ from these. {advice}")
        with open(path) as f:
            saved = json.load(f)
        changes = [_describe(*change) for change in changed_settings(saved, settings)]
        changes += moved_rates(out_dir, saved, settings)
        if changes:
            listed = "; ".join(changes)
            raise OutDirMismatch(f"{out_dir} holds fine-tuning checkpoints made with other settings ({listed}). "
                                 f"{advice}")
    os.makedirs(out_dir, exist_ok=True)
    atomic_write(os.path.join(out_dir, SETTINGS_FILE), (json.dumps(settings, indent=2) + "\n").encode())
    return kept
