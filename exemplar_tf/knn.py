"""Weighted k-nearest-neighbour classification (NPID's evaluation): cosine similarity to every training feature,
the k most similar vote for their class with weight exp(similarity / tau).

    python -m exemplar_tf.knn --savedmodel=savedmodels/<name>/<v> --train=cifar10 --test=cifar10
    python -m exemplar_tf.knn --savedmodel=... --checkpoint=runs/<name>/checkpoints --train=cifar10 --test=cifar10

With --checkpoint the training features are the run's memory bank (row i = training example with index i),
read from the checkpoint file and never written; queries always go through the SavedModel's `embedding`
(`exemplar_tf.evaluation.knn`, `exemplar_tf.evaluation.savedmodel`).
"""
from __future__ import annotations

import json

from absl import app, flags

from exemplar_tf import errors
from exemplar_tf.evaluation import knn, savedmodel
from exemplar_tf.metrics.knn import DEFAULT_K, DEFAULT_TAU, knn_accuracy

flags.DEFINE_string("savedmodel", None, "Export folder savedmodels/<name>/<version>.", required=True)
flags.DEFINE_string("train", None, "Labelled source spec for the neighbours (and the bank's labels).",
                    required=True)
flags.DEFINE_string("test", None, "Labelled source spec for the queries.", required=True)
flags.DEFINE_string("train_split", "train", "Split of --train.")
flags.DEFINE_string("test_split", "test", "Split of --test.")
flags.DEFINE_string("checkpoint", "", "Training checkpoint (file prefix or folder): use its memory bank as "
                    "the training features (read only).")
flags.DEFINE_string("data_dir", None, "tensorflow-datasets data_dir.")
flags.DEFINE_integer("k", DEFAULT_K, "Neighbours.")
flags.DEFINE_float("tau", DEFAULT_TAU, "Vote temperature: weight exp(cos / tau).")
flags.DEFINE_integer("eval_size", 0, "Resize images to this square size before the SavedModel (0: as stored).")
flags.DEFINE_integer("max_train", 0, "Use at most this many training images (0: all).")
flags.DEFINE_integer("max_test", 0, "Use at most this many test images (0: all).")
flags.DEFINE_integer("batch_size", 128, "Images per SavedModel call.")


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    values = flags.FLAGS
    model = savedmodel.SavedModelFeatures(values.savedmodel, batch_size=values.batch_size)
    load = dict(key="embedding", eval_size=values.eval_size or None, data_dir=values.data_dir)
    test = model.extract(values.test, values.test_split, max_examples=values.max_test, desc="test", **load)
    if values.checkpoint:
        train_codes = knn.read_memory_bank(values.checkpoint)
        train_labels = knn.bank_labels(knn.source_labels(values.train, values.train_split, values.data_dir),
                                       len(train_codes))
    else:
        train = model.extract(values.train, values.train_split, max_examples=values.max_train, desc="train",
                              **load)
        train_codes, train_labels = train.features, train.labels
    num_classes = int(max(train_labels.max(), test.labels.max()) + 1)
    accuracy = knn_accuracy(train_codes, train_labels, test.features, test.labels, k=values.k,
                                tau=values.tau, num_classes=num_classes)
    print(json.dumps({"savedmodel": values.savedmodel, "bank": "checkpoint" if values.checkpoint else "savedmodel",
                      "k": values.k, "tau": values.tau, "train": len(train_labels), "test": len(test.labels),
                      **accuracy}))


if __name__ == "__main__":
    errors.run(main)
