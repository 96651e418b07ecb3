"""Has a bank-trained run learned its pretext task? Instance recognition against its own memory bank.

    python experiments/instance_recognition.py cifar10_npid

For a run of `exemplar_tf.train` whose memory bank holds one row per image (NPID, or Exemplar-CNN with
--seed_sampling=online, as flags/cifar10_cpu.cfg; fixed seeds have one row per seed patch instead), embeds
every training instance once, un-augmented, through the run's latest export, and reports the fraction whose most
similar bank row (cosine) is their own row (chance: 1 / N). A high value with a low kNN accuracy means the
objective is being learned but the features do not group classes yet (schedule), not that the bank or the loss
is broken. Reads runs/<name>/flags.cfg and runs/<name>/checkpoints, writes
experiments/results/<name>/instance_recognition.json and prints it.
"""
from __future__ import annotations

import glob
import json
import os
import sys

import numpy as np

from exemplar_tf.evaluation import knn, savedmodel
from common import RESULTS, run_flags  # experiments/ is on the path when this file is run


def own_row_top1(codes: np.ndarray, bank: np.ndarray) -> float:
    """codes [N,D], bank [N,D]: fraction of i whose most cosine-similar bank row is row i."""
    codes = codes / np.linalg.norm(codes, axis=1, keepdims=True)
    bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    nearest = np.concatenate([np.argmax(part @ bank.T, axis=1) for part in np.array_split(codes, 16)])
    return float(np.mean(nearest == np.arange(len(codes))))


def main(name: str) -> None:
    flags = run_flags(name)
    if flags["method"] != "npid" and flags.get("seed_sampling") != "online":
        raise SystemExit(f"{name}: instance recognition needs a bank row per image (--method=npid, or "
                         f"--method=exemplar with --seed_sampling=online)")
    export_dir = max(glob.glob(f"savedmodels/{name}/*"), key=lambda path: int(os.path.basename(path)))
    bank = knn.read_memory_bank(f"runs/{name}/checkpoints")
    model = savedmodel.SavedModelFeatures(export_dir)
    codes = model.extract(flags["source"], flags["split"], "embedding",
                          max_examples=int(flags.get("max_instances", "0")), desc="instances").features
    if len(codes) != len(bank):
        raise SystemExit(f"{name}: {len(codes)} instances but the bank has {len(bank)} rows")
    result = {"run": name, "savedmodel": export_dir, "instances": len(bank),
              "own_row_top1": own_row_top1(codes, bank), "chance": 1 / len(bank)}
    with open(os.path.join(RESULTS, name, "instance_recognition.json"), "w") as out:
        json.dump(result, out)
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
