"""What the experiments' scripts share: where results live and how to read a run's saved flags."""
from __future__ import annotations

RESULTS = "experiments/results"


def run_flags(name: str) -> dict[str, str]:
    """The flags a training run saved to runs/<name>/flags.cfg, as {flag name: value string}."""
    pairs = (line.strip()[2:].split("=", 1) for line in open(f"runs/{name}/flags.cfg") if line.startswith("--"))
    return {key: value for key, value in pairs}
