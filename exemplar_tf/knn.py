"""Weighted k-nearest-neighbour classification (NPID's evaluation): cosine similarity to every training feature,
the k most similar vote for their class with weight exp(similarity / tau).

    python -m exemplar_tf.knn --savedmodel=savedmodels/<name>/<v> --train=cifar10 --test=cifar10
    python -m exemplar_tf.knn --savedmodel=... --checkpoint=runs/<name>/checkpoints --train=cifar10 --test=cifar10

With --checkpoint the training features are the run's memory bank (row i = training example with index i: NPID
and online Exemplar-CNN runs on the whole of --train's split, at --savedmodel's step; the run's flags.cfg and the
export's info refuse the others, `evaluation.knn.bank_problem`), read from the checkpoint file and never written; queries always go through the SavedModel's `embedding`
(`exemplar_tf.evaluation.knn`, `exemplar_tf.evaluation.savedmodel`). With --baseline_savedmodel (a path, or
`auto` for the run's `<name>_random` export) the randomly initialised encoder is classified the same way beside it.

Output: one human line on stderr (top-1, top-5, the random baseline's and the gain over it) and the results as one
JSON line on stdout (`> knn.json` keeps only it): savedmodel, bank, k, tau, train, test, top1, top5,
random_baseline ({savedmodel, train, top1, top5} or null), gain_over_random (trained minus random top-1, or null).
"""
from __future__ import annotations

import json
import sys

from absl import flags

from exemplar_tf import errors
from exemplar_tf.errors import cli

DEFAULT_K = 200  # metrics.knn.DEFAULT_K, DEFAULT_TAU (read here without importing TensorFlow; a test holds them equal)
DEFAULT_TAU = 0.07

flags.DEFINE_string("savedmodel", None, "Export folder savedmodels/<name>/<version>.", required=True)
flags.DEFINE_string("train", None, "Labelled source spec for the neighbours (and the bank's labels).",
                    required=True)
flags.DEFINE_string("test", None, "Labelled source spec for the queries.", required=True)
flags.DEFINE_string("train_split", "train", "Split of --train.")
flags.DEFINE_string("test_split", "test", "Split of --test.")
flags.DEFINE_string("checkpoint", "", "Training checkpoint (file prefix or folder): use its memory bank as "
                    "the training features (read only). Runs whose bank row i is training image i: NPID and "
                    "online Exemplar-CNN on the whole of --train's split, at the step of --savedmodel (the run's "
                    "flags.cfg and the export's info are checked).")
flags.DEFINE_string("baseline_savedmodel", "", "Randomly initialised export of the same architecture, classified "
                    "the same way beside --savedmodel (its own codes as neighbours, also with --checkpoint); 'auto': "
                    "the newest <name>_random version next to --savedmodel exported by the same training run (as "
                    "evaluate finds it); empty: none.")
flags.DEFINE_enum("output", "embedding", ["embedding", "representation"], "Export output classified: the embedding "
                  "(the projection head's codes, what the memory bank holds) or the representation below the head "
                  "(L2-normalised; the feature to read when the head is an MLP, --head_hidden_dim).")
flags.DEFINE_string("data_dir", None, "tensorflow-datasets data_dir.")
flags.DEFINE_integer("k", DEFAULT_K, "Neighbours.")
flags.DEFINE_float("tau", DEFAULT_TAU, "Vote temperature: weight exp(cos / tau).")
flags.DEFINE_integer("eval_size", 0, "Resize images to this square size before the SavedModel (0: as stored).")
flags.DEFINE_integer("max_train", 0, "Use at most this many training images (0: all; not with --checkpoint, whose "
                     "neighbours are the whole memory bank).")
flags.DEFINE_integer("max_test", 0, "Use at most this many test images (0: all).")
flags.DEFINE_integer("batch_size", 128, "Images per SavedModel call.")


def _checkpoint_problem(values: flags.FlagValues) -> str | None:
    """What --checkpoint cannot go with: the bank holds embeddings, one per training image of the whole split."""
    if values.checkpoint and values.output != "embedding":
        return (f"--checkpoint: the memory bank holds embeddings; --output={values.output} cannot be compared "
                f"against it")
    if values.checkpoint and values.max_train:
        return ("--max_train: with --checkpoint the neighbours are the whole memory bank, one row per training "
                "image (the random baseline would see a subset); leave out one of the two")
    return None


cli.check_flags(_checkpoint_problem)


def baseline_path(savedmodel: str, flag: str) -> str | None:
    """The random baseline export --baseline_savedmodel names (None: none); 'auto' finds it as evaluate does."""
    from exemplar_tf.evaluation import protocols

    if not flag:
        return None
    path = protocols.random_baseline_path(savedmodel) if flag == "auto" else flag
    if path is None:
        print(protocols.missing_baseline_message(savedmodel), file=sys.stderr)
        return None
    mismatch = protocols.baseline_mismatch(savedmodel, path)
    if mismatch:
        raise errors.InputError(mismatch)
    return path


def human_line(report: dict) -> str:
    """One line: top-1/top-5 of the trained encoder and, with a baseline, the random one's and the gain."""
    line = (f"kNN (k={report['k']}, tau={report['tau']:g}, {report['test']} queries, {report['train']} training "
            f"{'bank rows' if report['bank'] == 'checkpoint' else 'images'}): top-1 {100 * report['top1']:.2f}%, "
            f"top-5 {100 * report['top5']:.2f}%")
    baseline = report["random_baseline"]
    if baseline is None:
        return line + "; no random baseline (--baseline_savedmodel)"
    return (line + f"; random baseline top-1 {100 * baseline['top1']:.2f}%, top-5 {100 * baseline['top5']:.2f}%; "
            f"gain over random {100 * report['gain_over_random']:+.2f} points")


def main(argv) -> None:
    del argv  # errors.run refuses positional arguments
    from exemplar_tf.data import sources
    from exemplar_tf.evaluation import knn, savedmodel
    from exemplar_tf.metrics.knn import knn_accuracy

    values = flags.FLAGS
    baseline = baseline_path(values.savedmodel, values.baseline_savedmodel)
    if problem := sources.same_images_problem(values.train, values.train_split, values.test, values.test_split):
        raise errors.InputError(problem)
    if problem := sources.class_names_problem(values.train, values.train_split, values.test, values.test_split,
                                              data_dir=values.data_dir):
        raise errors.InputError(problem)
    if values.checkpoint and (problem := knn.bank_problem(values.checkpoint, values.savedmodel, values.train,
                                                          values.train_split)):
        raise errors.InputError(problem)
    load = dict(key=values.output, eval_size=values.eval_size or None, data_dir=values.data_dir)

    def classify(path: str, bank: str):
        model = savedmodel.SavedModelFeatures(path, batch_size=values.batch_size)
        test = model.extract(values.test, values.test_split, max_examples=values.max_test, desc="test", **load)
        if bank:
            train_codes = knn.read_memory_bank(bank)
            train_labels = knn.bank_labels(knn.source_labels(values.train, values.train_split, values.data_dir),
                                           len(train_codes))
        else:
            train = model.extract(values.train, values.train_split, max_examples=values.max_train, desc="train",
                                  **load)
            train_codes, train_labels = train.features, train.labels
        num_classes = int(max(train_labels.max(), test.labels.max()) + 1)
        accuracy = knn_accuracy(train_codes, train_labels, test.features, test.labels, k=values.k, tau=values.tau,
                                num_classes=num_classes)
        return accuracy, len(train_labels), len(test.labels)

    accuracy, num_train, num_test = classify(values.savedmodel, values.checkpoint)
    report = {"savedmodel": values.savedmodel, "output": values.output,
              "bank": "checkpoint" if values.checkpoint else "savedmodel",
              "k": values.k, "tau": values.tau, "train": num_train, "test": num_test, **accuracy,
              "random_baseline": None, "gain_over_random": None}
    if baseline:
        baseline_accuracy, baseline_train, _ = classify(baseline, "")
        report["random_baseline"] = {"savedmodel": baseline, "train": baseline_train, **baseline_accuracy}
        report["gain_over_random"] = accuracy["top1"] - baseline_accuracy["top1"]
    print(human_line(report), file=sys.stderr)  # stdout is the JSON alone: scripts redirect it to a .json file
    print(json.dumps(report))


if __name__ == "__main__":
    errors.run(main)
