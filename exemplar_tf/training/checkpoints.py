"""Which checkpoint a run resumes from, after checking that it can be read.

The checkpoint state file (`checkpoints/checkpoint`) lists the kept checkpoints, newest last. Before resuming, the
newest one is read whole (every tensor, so a truncated data file or a checksum mismatch shows); an unreadable one
is moved aside into `ckpt-N.corrupt-<time>/` (never deleted) and the previous one is tried. A state that names
checkpoints whose files are gone, or checkpoint files without a state, is refused: resuming from nothing would
silently restart at step 0 over the user's checkpoints (--overwrite starts over and keeps the old directory).
"""
from __future__ import annotations

import glob
import os
import shutil
import time

import tensorflow as tf

from exemplar_tf.errors import InputError


class CheckpointsMissing(InputError):
    """The run directory's checkpoint state and its checkpoint files disagree."""


def files_of(prefix: str) -> list[str]:
    """The files of checkpoint `prefix` (its .index and .data-* shards)."""
    return sorted(glob.glob(f"{prefix}.index") + glob.glob(f"{prefix}.data-*"))


def holds_part(prefix: str, part: str) -> bool:
    """Whether checkpoint `prefix` saved anything under the `tf.train.Checkpoint` keyword `part` (checkpoints
    written before a part was added lack it, and are restored without it)."""
    return any(name.startswith(f"{part}/") for name, _ in tf.train.list_variables(prefix))


def read_problem(prefix: str) -> str | None:
    """Why checkpoint `prefix` cannot be read (every tensor is read), or None when it can."""
    try:
        reader = tf.train.load_checkpoint(prefix)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except (tf.errors.OpError, OSError, IndexError, ValueError) as error:
        return " ".join(str(error).split())[:200] or type(error).__name__
    return None


def move_aside(prefix: str) -> str:
    """Moves checkpoint `prefix`'s files into `<prefix>.corrupt-<time>/` and returns that folder."""
    folder = f"{prefix}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}"
    os.makedirs(folder, exist_ok=True)
    for path in files_of(prefix):
        shutil.move(path, os.path.join(folder, os.path.basename(path)))
    return folder


def _listed(directory: str) -> list[str]:
    """The checkpoint prefixes the state file lists, oldest first (joined to `directory` by TensorFlow when the
    state stores them relative), or [] without a state file."""
    state = tf.train.get_checkpoint_state(directory)
    return [] if state is None else list(state.all_model_checkpoint_paths)


def resume_checkpoint(directory: str, say=print) -> str | None:
    """The newest readable checkpoint of `directory` (None: a fresh run). Unreadable newer ones are moved aside
    (one line each through `say`) and the state file is rewritten to list the readable ones. Raises
    CheckpointsMissing when the state names files that are gone or files exist without a state."""
    listed = _listed(directory)
    if not listed:
        stray = glob.glob(os.path.join(directory, "ckpt-*.index"))
        if stray:
            raise CheckpointsMissing(f"{directory}: checkpoint files ({', '.join(sorted(map(os.path.basename, stray)))})"
                                     f" but no checkpoint state file; not starting over at step 0 on top of them "
                                     f"(--overwrite starts over and keeps the old run directory)")
        return None
    missing = [os.path.basename(prefix) for prefix in listed if not files_of(prefix)]
    if missing:
        raise CheckpointsMissing(f"{directory}: the checkpoint state names {', '.join(missing)} but its files are "
                                 f"missing; not resuming from an older step or starting over silently (restore the "
                                 f"files, or --overwrite to start over and keep the old run directory)")
    readable = list(listed)
    while readable:
        problem = read_problem(readable[-1])
        if problem is None:
            break
        say(f"{readable[-1]}: cannot be read ({problem}); moved to {move_aside(readable[-1])}, trying the previous "
            f"checkpoint")
        readable.pop()
    if readable != listed:
        if not readable:
            raise CheckpointsMissing(f"{directory}: no readable checkpoint left (the unreadable ones were moved to "
                                     f"*.corrupt-*); --overwrite starts over and keeps the old run directory")
        tf.compat.v1.train.update_checkpoint_state(directory, readable[-1], all_model_checkpoint_paths=readable)
    return readable[-1]
