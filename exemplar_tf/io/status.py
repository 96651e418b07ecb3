"""One status line before a phase that takes seconds: printed at once (flushed), so piped logs show it too."""
from __future__ import annotations

import sys
from typing import TextIO


def status(line: str, stream: TextIO | None = None) -> None:
    """Prints `line` to `stream` (default stdout; programs whose stdout carries results pass sys.stderr)."""
    print(line, file=stream or sys.stdout, flush=True)
