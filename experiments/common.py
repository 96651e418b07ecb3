"""What the experiments' scripts share: where results live and how to read a run's saved flags."""
from __future__ import annotations

RESULTS = "experiments/results"


def run_flags(name: str) -> dict[str, str]:
    """The flags a training run saved to runs/<name>/flags.cfg, as {flag name: value string}."""
    from exemplar_tf.training.rundir import read_flagfile

    return read_flagfile(f"runs/{name}/flags.cfg")
