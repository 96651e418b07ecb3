"""Errors a user causes, and how the programs show them: one line on stderr naming the file and the problem.

`InputError` is bad user input (a missing, unreadable or unsuitable file or folder, a bad flag value); its message
names the file and what is wrong. `run(main)` replaces `absl.app.run(main)` in every program. A bad command line
(unknown flag, bad value, unreadable --flagfile) is refused by `cli.parse_flags` before `main` runs, as one stderr
line and `EXIT_INPUT_ERROR`, and TensorFlow's own logging is quieted unless --verbosity (`errors.cli`). Then an
`InputError`, a `FileNotFoundError`/`NotADirectoryError`/`IsADirectoryError`/`PermissionError` (a path the user
gave), or a TensorFlow error from an image that fails to decode inside tf.data (`DECODE_FAILURE`, raised by
`exemplar_tf.data.sources`) becomes one stderr line and exit status `EXIT_INPUT_ERROR`; a full disk, a read-only
file system or TensorFlow out of memory one line and `EXIT_ENVIRONMENT`. Any other exception is a
bug and keeps its traceback; with `--verbosity=1` (or higher) user errors keep theirs too.

Imports no TensorFlow: the matching benchmark's program runs without it.
"""
from __future__ import annotations

import errno
import re
import sys
from typing import Callable

EXIT_INPUT_ERROR = 2
EXIT_ENVIRONMENT = 3  # the machine, not the input: a full disk, a read-only file system, out of memory
ENVIRONMENT_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EDQUOT)
# Message of the tf.debugging.Assert that names an image file that failed to decode (sources.decoded_image_files).
DECODE_FAILURE = "cannot read or decode image file (corrupt, truncated or unsupported):"
PATH_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)


class InputError(ValueError):
    """Bad user input; the message names the file, folder or flag and the problem."""


def check_savedmodel_folder(path: str) -> None:
    """Raise InputError unless `path` is a SavedModel folder (holds saved_model.pb)."""
    import os

    if not os.path.isdir(path):
        raise InputError(f"{path}: no such SavedModel folder")
    if not os.path.isfile(os.path.join(path, "saved_model.pb")):
        raise InputError(f"{path}: not a SavedModel folder (no saved_model.pb)")


def user_error_message(error: BaseException) -> str | None:
    """The one-line message for a user error, or None if `error` is not one (a bug)."""
    if isinstance(error, InputError):
        return str(error)
    if isinstance(error, PATH_ERRORS):
        if error.filename is not None and error.strerror:
            return f"{error.filename}: {error.strerror}"
        return str(error)
    tensorflow = sys.modules.get("tensorflow")  # a TensorFlow error needs TensorFlow imported
    if tensorflow is not None and isinstance(error, tensorflow.errors.InvalidArgumentError):
        found = re.search(re.escape(DECODE_FAILURE) + r"\] \[(.+)\]", str(error))
        if found:
            return f"{found.group(1)}: cannot be read or decoded (corrupt, truncated or unsupported image file)"
    return None


def environment_error_message(error: BaseException) -> str | None:
    """The one-line message for a problem of the machine (disk full, read-only file system, TensorFlow out of
    space or memory), or None."""
    if isinstance(error, OSError) and error.errno in ENVIRONMENT_ERRNOS:
        return f"{error.filename}: {error.strerror}" if error.filename else (error.strerror or str(error))
    tensorflow = sys.modules.get("tensorflow")
    if tensorflow is not None and isinstance(error, tensorflow.errors.ResourceExhaustedError):
        return " ".join(error.message.split())[:300]
    return None


def call_main(main: Callable[[list[str]], int | None], argv: list[str], *, verbose: bool = False) -> int:
    """`main(argv)`'s exit status; a user error is printed as one stderr line and gives EXIT_INPUT_ERROR, a
    problem of the machine EXIT_ENVIRONMENT (re-raised with its traceback when `verbose`)."""
    try:
        return main(argv) or 0
    except Exception as error:  # noqa: BLE001 -- sorted into user errors, the machine's and bugs below
        environment = environment_error_message(error)
        message = user_error_message(error)
        if (message is None and environment is None) or verbose:
            raise
        print(f"Error: {environment or message}", file=sys.stderr)
        return EXIT_ENVIRONMENT if environment else EXIT_INPUT_ERROR


def run(main: Callable[[list[str]], int | None], argv: list[str] | None = None) -> None:
    """`absl.app.run(main)` with a bad command line and user errors shown as one line (see the module docstring).

    Flags are parsed and checked by `cli.parse_flags` before `main` runs, so a program that imports TensorFlow
    only inside `main` refuses a bad flag in well under a second, and TensorFlow is quiet unless --verbosity."""
    from absl import app, flags

    from exemplar_tf.errors import cli

    def checked_main(argv: list[str]) -> int:
        cli.quiet_logging()
        return call_main(main, argv, verbose=flags.FLAGS.verbosity >= 1)

    app.run(checked_main, argv=argv, flags_parser=cli.parse_flags)
