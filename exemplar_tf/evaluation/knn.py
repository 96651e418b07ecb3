"""What the kNN evaluation reads; the classifier itself is `metrics.knn`. The training features are codes of an
export (`savedmodel.SavedModelFeatures`) or a run's memory bank (row i = training example with index i), read
from the checkpoint file and never written (`read_memory_bank`).
"""
from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from exemplar_tf import errors
from exemplar_tf.data import sources
from exemplar_tf.training.rundir import FLAGFILE, read_flagfile


def read_memory_bank(checkpoint: str) -> np.ndarray:
    """The memory bank float32 [N,D] stored in a training checkpoint (a file prefix or a checkpoint folder).

    Reads the checkpoint file with `tf.train.load_checkpoint`; no model is built and nothing is written.
    """
    prefix = tf.train.latest_checkpoint(checkpoint) or checkpoint
    if not tf.io.gfile.glob(f"{prefix}.index"):
        raise errors.InputError(f"{checkpoint}: no training checkpoint (neither a checkpoint folder nor a prefix "
                                "with a .index file)")
    reader = tf.train.load_checkpoint(prefix)
    keys = [key for key, shape in reader.get_variable_to_shape_map().items()
            if key.startswith("bank/") and key.endswith("VARIABLE_VALUE") and len(shape) == 2]
    if len(keys) != 1:
        raise errors.InputError(f"{prefix}: expected one memory bank variable under 'bank/', found {keys or 'none'}")
    return reader.get_tensor(keys[0]).astype(np.float32)


def check_bank_rows_are_examples(checkpoint: str) -> None:
    """Raises InputError when the run that wrote `checkpoint` kept bank rows that are not the examples of its
    split: fixed-seed Exemplar-CNN has one row per seed patch, --max_instances one per image of a renumbered
    subset. The run's settings are its flags.cfg, beside the `checkpoints/` folder; without one only the row count
    is checked (`bank_labels`)."""
    prefix = tf.train.latest_checkpoint(checkpoint) or checkpoint
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(prefix))), FLAGFILE)
    if not os.path.isfile(path):
        return
    recorded = read_flagfile(path)
    if recorded.get("method") == "exemplar" and recorded.get("seed_sampling") == "fixed":
        raise errors.InputError(f"{checkpoint}: its run ({path}) trained Exemplar-CNN on fixed seeds: its bank has "
                                f"one row per seed patch (--num_seeds={recorded.get('num_seeds')}), not one per "
                                f"training image; classify with the SavedModel's codes (leave out --checkpoint)")
    if recorded.get("max_instances", "0") != "0":
        raise errors.InputError(f"{checkpoint}: its run ({path}) trained on --max_instances="
                                f"{recorded['max_instances']} images renumbered from 0, so bank row i is not "
                                f"example i of the split; classify with the SavedModel's codes (leave out "
                                f"--checkpoint)")


def bank_labels(labels_by_index: dict[int, int], num_rows: int) -> np.ndarray:
    """int64 [num_rows]: the label of bank row i, i.e. of the training example whose `index` is i.

    The bank must have one row per example of the split: a run trained on a renumbered subset
    (--max_instances) has a smaller bank whose row i is not example i of the split, so it is refused.
    """
    missing = [i for i in range(num_rows) if i not in labels_by_index]
    if missing:
        raise errors.InputError(f"no training label for bank rows {missing[:10]} (of {len(missing)} missing)")
    if len(labels_by_index) != num_rows:
        raise errors.InputError(f"the memory bank has {num_rows} rows but the training split has {len(labels_by_index)} "
                         "examples (was the run trained with --max_instances?); use the SavedModel's codes "
                         "instead of --checkpoint")
    return np.array([labels_by_index[i] for i in range(num_rows)], np.int64)


def source_labels(spec: str, split: str, data_dir: str | None = None) -> dict[int, int]:
    """{index: label} of every example of a labelled source split (images are decoded but not kept)."""
    source = sources.load_source(spec, split, data_dir=data_dir)
    if source.num_classes is None:
        raise errors.InputError(f"{spec} split {split!r} has no labels")
    pairs = source.dataset.map(lambda e: (e["index"], e["label"]), num_parallel_calls=tf.data.AUTOTUNE)
    return {int(index): int(label) for index, label in pairs.as_numpy_iterator()}
