"""An exclusive lock on a directory that dies with its process: `flock` on the directory itself (Linux, macOS).

The kernel drops the lock when the holder's file descriptor closes, including on SIGKILL, so no stale lock is ever
left. The holder also writes "<pid> <host>" to `<dir>/.lock` so that a refused process can say who holds it
(the file is information only: the lock is the flock).
"""
from __future__ import annotations

import fcntl
import os
import socket

HOLDER_FILE = ".lock"


class DirectoryLocked(RuntimeError):
    """Another process holds the directory's lock."""


class DirectoryLock:
    """Holds an exclusive lock on `path` (created if missing) until `release()` or the process ends; a held one
    raises DirectoryLocked naming its holder, the `user` kind of program and the `flag` that picks another path."""

    def __init__(self, path: str, *, user: str = "trainer", flag: str = "--run_dir"):
        self.path = path
        os.makedirs(path, exist_ok=True)
        self._descriptor = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(self._descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._descriptor)
            raise DirectoryLocked(f"{path} is in use by another {user} ({holder(path)}); wait for it to finish, "
                                  f"or use another {flag}") from None
        with open(os.path.join(path, HOLDER_FILE), "w") as file:
            file.write(f"{os.getpid()} {socket.gethostname()}\n")

    def release(self) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)  # closing the descriptor drops the flock
            self._descriptor = None

    def __enter__(self) -> "DirectoryLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def holder(path: str) -> str:
    """"PID <pid> on <host>" from the holder file, or what is known when it cannot be read."""
    try:
        with open(os.path.join(path, HOLDER_FILE)) as file:
            pid, host = file.read().split()
        return f"PID {pid} on {host}"
    except (OSError, ValueError):
        return "holder unknown"
