"""What the experiments' scripts share: where results live and how to read a run's saved flags."""
from __future__ import annotations

import os

RESULTS = "experiments/results"


def run_flags(name: str) -> dict[str, str]:
    """The flags a training run saved (experiments/results/<name>/flags.cfg, a copy of runs/<name>/flags.cfg; the
    run directory itself for runs from before the copy), as {flag name: value string}."""
    from exemplar_tf.training.rundir import read_flagfile

    saved = os.path.join(RESULTS, name, "flags.cfg")
    return read_flagfile(saved if os.path.exists(saved) else f"runs/{name}/flags.cfg")
