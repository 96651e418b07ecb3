"""kNN on held-out *training* images, for choosing between recipes without reading the test folder.

    python experiments/heldout_knn.py --savedmodel=savedmodels/<name>/<v> --data=folder:/tmp/cifar10

Embeds --images training images evenly spread over the (class-sorted) folder, keeps every --query_every-th of them
as queries and the rest as the kNN memory (disjoint), and prints one JSON line: weighted kNN (k 200, tau 0.07)
top-1 of the queries. The figures RESULTS.md reports come from the test folder, read once per finished run.
"""
from __future__ import annotations

import json

import numpy as np
from absl import app, flags

from exemplar_tf.evaluation import savedmodel
from exemplar_tf.metrics.knn import knn_accuracy

flags.DEFINE_string("savedmodel", None, "Export folder.", required=True)
flags.DEFINE_string("data", "folder:/tmp/cifar10", "Labelled source with a train split.")
flags.DEFINE_enum("output", "embedding", ["embedding", "representation"], "Export output classified.")
flags.DEFINE_integer("images", 12000, "Training images embedded (evenly spread).")
flags.DEFINE_integer("query_every", 6, "Every n-th embedded image is a query, the others the memory.")
FLAGS = flags.FLAGS


def main(argv) -> None:
    del argv
    model = savedmodel.SavedModelFeatures(FLAGS.savedmodel)
    train = model.extract(FLAGS.data, "train", key=FLAGS.output, max_examples=FLAGS.images, desc="train")
    query = np.arange(len(train.labels)) % FLAGS.query_every == 0
    accuracy = knn_accuracy(train.features[~query], train.labels[~query], train.features[query], train.labels[query],
                            num_classes=int(train.labels.max()) + 1)
    print(json.dumps({"savedmodel": FLAGS.savedmodel, "memory": int((~query).sum()), "queries": int(query.sum()),
                      "output": FLAGS.output,
                      "heldout_knn_top1": accuracy["top1"]}))


if __name__ == "__main__":
    app.run(main)
