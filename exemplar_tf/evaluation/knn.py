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
from exemplar_tf.evaluation.savedmodel import read_export_info
from exemplar_tf.training.rundir import FLAGFILE, SKIPPED_IMAGES_FILE, checkpoint_number, read_flagfile, run_id


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


def _skipped_any(run_dir: str) -> bool:
    """Whether --skip_bad_images left any file out of the run (its list unwritten: assume so)."""
    try:
        return os.path.getsize(os.path.join(run_dir, SKIPPED_IMAGES_FILE)) > 0
    except FileNotFoundError:
        return True


def bank_problem(checkpoint: str, savedmodel: str, train: str, train_split: str) -> str | None:
    """One line when the memory bank in `checkpoint` cannot serve as the training features of `savedmodel` with
    the labels of `train` split `train_split`, else None. Read from the run's flags.cfg (beside `checkpoints/`)
    and the export's export_info.json: the bank's rows must be the training images (not fixed-seed Exemplar-CNN's
    seed patches, not a --max_instances subset or the files --skip_bad_images kept, renumbered from 0) of that
    very split in its order, and the export must be the same run at the same step. Without a flags.cfg only the
    row count is checked (`bank_labels`)."""
    prefix = tf.train.latest_checkpoint(checkpoint) or checkpoint
    run_dir = os.path.dirname(os.path.dirname(os.path.abspath(prefix)))
    path = os.path.join(run_dir, FLAGFILE)
    if not os.path.isfile(path):
        return None
    recorded = read_flagfile(path)
    ours = f"{checkpoint}: its run ({path})"
    use_codes = "classify with the SavedModel's codes (leave out --checkpoint)"
    if recorded.get("method") == "exemplar" and recorded.get("seed_sampling") == "fixed":
        return (f"{ours} trained Exemplar-CNN on fixed seeds: its bank has one row per seed patch "
                f"(--num_seeds={recorded.get('num_seeds')}), not one per training image; {use_codes}")
    if recorded.get("max_instances", "0") != "0":
        return (f"{ours} trained on --max_instances={recorded['max_instances']} images renumbered from 0, so bank "
                f"row i is not example i of the split; {use_codes}")
    if recorded.get("skip_bad_images") == "True" and _skipped_any(run_dir):
        return (f"{ours} trained with --skip_bad_images and left files out ({SKIPPED_IMAGES_FILE}), its rows "
                f"renumbered over the files it kept, so bank row i is not example i of --train; {use_codes}")
    source, split = recorded.get("source", ""), recorded.get("split", "")
    if source and not (sources.spec_parts(source) == sources.spec_parts(train) and split == train_split):
        return (f"{ours} trained on --source={source} split {split!r}: bank row i is image i there, so --train="
                f"{train} --train_split={train_split} would label it with another image's class; give those")
    info = read_export_info(savedmodel)
    step = checkpoint_number(prefix)
    if info.get("run_dir") and os.path.realpath(info["run_dir"]) != os.path.realpath(run_dir):
        return f"{savedmodel} was exported from the run {info['run_dir']}, not from {run_dir}; {use_codes}"
    if info.get("run_id") and info["run_id"] != (ours_id := run_id(run_dir)):
        return (f"{savedmodel} was exported from an earlier run in {run_dir}, started over since (the export's "
                f"run_id {info['run_id']}, the directory's {ours_id}); {use_codes}")
    if info.get("step") is not None and step is not None and step != info["step"]:
        return (f"{savedmodel} holds the encoder of step {info['step']} but {prefix} the bank of step {step}: give "
                f"--checkpoint={os.path.join(os.path.dirname(prefix), 'ckpt-' + str(info['step']))}, or export "
                f"step {step} (python -m exemplar_tf.export --run_dir={run_dir})")
    return None


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
