"""Image retrieval with an exported encoder's 128-d `embedding`: index a collection, query it, show the results.

    python -m exemplar_tf.retrieve --savedmodel=savedmodels/<name>/<v> --index=<folder or source spec>
        --queries=<folder or source spec> [--k=8] --out=<dir>

`--index` / `--queries` are a folder of image files (searched recursively) or a source spec of
`exemplar_tf.data.sources` (e.g. `stl10`, `folder:<dir>`, with --index_split / --query_split).
Writes to --out:
  index.npz       codes [N,D] (float16 by default, --codes=float32), ids [N] (file paths or spec:split:index)
  thumbs/*.png    thumbnails of every query and every retrieved image
  results.html    one row per query: the query, then its k neighbours (cosine similarity), relative img links
  neighbours.png  the same as a grid: one row per query, query in the first column
(`exemplar_tf.evaluation.retrieval`). Prints the indexing speed (codes per second) and the code size (bytes per image);
a status line before each phase and progress bars over the images (embedding, thumbnails) go to stderr.
"""
from __future__ import annotations

import os
import sys

from absl import flags

from exemplar_tf import errors
from exemplar_tf.errors import cli

flags.DEFINE_string("savedmodel", None, "Export folder savedmodels/<name>/<version>.", required=True)
flags.DEFINE_string("index", None, "Folder of images, or a source spec, to index.", required=True)
flags.DEFINE_string("queries", None, "Folder of images, or a source spec, to query with.", required=True)
flags.DEFINE_string("out", None, "Output folder (index.npz, results.html, neighbours.png, thumbs/).",
                    required=True)
flags.DEFINE_integer("k", 8, "Neighbours per query.")
flags.DEFINE_string("index_split", "train", "Split of --index when it is a source spec.")
flags.DEFINE_string("query_split", "test", "Split of --queries when it is a source spec.")
flags.DEFINE_string("data_dir", None, "tensorflow-datasets data_dir.")
flags.DEFINE_integer("eval_size", 0, "Resize images to this square size before the SavedModel (0: as stored; "
                     "the embedding resizes to the encoder's input size inside).")
flags.DEFINE_enum("codes", "float16", ["float16", "float32"], "Stored code precision.")
flags.DEFINE_integer("max_index", 0, "Index at most this many images (0: all).")
flags.DEFINE_integer("max_queries", 0, "Use at most this many queries (0: all).")
flags.DEFINE_integer("batch_size", 128, "Images per SavedModel call.")
cli.check("max_index", cli.NON_NEGATIVE)
cli.check("max_queries", cli.NON_NEGATIVE)


def main(argv) -> None:
    del argv  # errors.run refuses positional arguments
    from exemplar_tf.evaluation import retrieval

    values = flags.FLAGS
    summary = retrieval.retrieve(values.savedmodel, values.index, values.queries, values.out, k=values.k,
                       index_split=values.index_split, query_split=values.query_split, data_dir=values.data_dir,
                       eval_size=values.eval_size or None, codes_dtype=values.codes, max_index=values.max_index,
                       max_queries=values.max_queries, batch_size=values.batch_size)
    print(f"indexed {summary['index_images']} images at {summary['codes_per_second']:.1f} codes per second; "
          f"{summary['bytes_per_image']} bytes per image ({values.codes})", file=sys.stdout)
    print(f"{summary['queries']} queries -> {os.path.join(values.out, 'results.html')}, "
          f"{os.path.join(values.out, 'neighbours.png')}")


if __name__ == "__main__":
    errors.run(main)
