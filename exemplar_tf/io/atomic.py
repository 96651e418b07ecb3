"""Atomic file replacement: a reader sees the old file or the whole new one, never a half-written one."""
from __future__ import annotations

import os
import tempfile


def current_umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str, data: bytes) -> None:
    """Writes `data` to `path` through a uniquely named temporary file in the same folder, fsynced, then renamed
    over `path` (readers see the old file or the whole new one; concurrent writers never share a temporary).
    The file gets the permissions any new file gets under the user's umask (mkstemp's own are 0600)."""
    folder = os.path.dirname(os.path.abspath(path))
    descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        os.fchmod(descriptor, 0o666 & ~current_umask())
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    directory = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
