"""Image retrieval with an export's 128-d `embedding`: index a collection, query it, write the results.

A collection is a folder of image files (searched recursively) or a source spec of `exemplar_tf.data.sources`.
`retrieve` writes to its output folder:
  index.npz       codes [N,D] (float16 by default, or float32), ids [N] (file paths or spec:split:index)
  thumbs/*.png    thumbnails of every query and every retrieved image
  results.html    one row per query: the query, then its k neighbours (cosine similarity), relative img links
  neighbours.png  the same as a grid: one row per query, query in the first column
Each phase prints a status line on stderr before it starts, and the passes over the images show progress bars.
"""
from __future__ import annotations

import dataclasses
import html
import os
import sys
import time

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from exemplar_tf.data import sources
from exemplar_tf.data.images import resize_uint8, tile, to_uint8
from exemplar_tf.evaluation.savedmodel import SavedModelFeatures
from exemplar_tf.io.status import status

THUMB_SIZE = 96
GRID_CELL = 64
GRID_GAP = 4


@dataclasses.dataclass
class Collection:
    """Images to embed: dataset of {"image": uint8 [H,W,3], "index": int64 position}, and one id per image."""

    dataset: tf.data.Dataset
    ids: list[str]


def image_files(folder: str) -> list[str]:
    """Sorted paths of the image files under `folder` (recursive, hidden files and folders skipped)."""
    paths = sources.image_files_under(folder)
    if not paths:
        raise sources.SourceError(f"{folder}: no image files ({', '.join(sources.IMAGE_EXTENSIONS)})")
    return paths


def open_collection(where: str, split: str, *, data_dir: str | None = None, limit: int = 0) -> Collection:
    """A folder of image files (ids: paths), or a source spec (ids: spec:split:index); at most `limit` if > 0,
    evenly spread (folders and sources are often sorted by class)."""
    if os.path.isdir(where):
        files = image_files(where)
        paths = [files[i] for i in sources.spread_positions(len(files), limit)]
        problems = sources.header_problems(paths, 0)
        if problems:
            raise sources.SourceError(f"{paths[min(problems)]}: {problems[min(problems)]}")
        return Collection(sources.decoded_image_files(paths, None), paths)  # a file that fails to decode is named
    source = sources.load_source(where, split, data_dir=data_dir)
    subset, _ = sources.spread_subset(source.dataset, source.num_examples, limit)
    dataset = subset.enumerate().map(lambda position, example: {"image": example["image"], "index": position})
    return Collection(dataset, [f"{where}:{split}:{i}" for i in sources.spread_positions(source.num_examples, limit)])


def nearest(index_codes: np.ndarray, query_codes: np.ndarray, k: int, batch: int = 1024):
    """Cosine top-k: (rows int32 [Q,k'], similarities float32 [Q,k']) best first, k' = min(k, N)."""
    index_unit = tf.math.l2_normalize(tf.constant(index_codes, tf.float32), axis=-1)
    k = min(k, len(index_codes))
    rows, similarities = [], []
    for start in range(0, len(query_codes), batch):
        queries = tf.math.l2_normalize(tf.constant(query_codes[start:start + batch], tf.float32), axis=-1)
        top = tf.math.top_k(tf.matmul(queries, index_unit, transpose_b=True), k=k)
        rows.append(top.indices.numpy())
        similarities.append(top.values.numpy())
    return np.concatenate(rows), np.concatenate(similarities)


def save_index(path: str, codes: np.ndarray, ids: list[str], dtype: str = "float16") -> None:
    """index.npz with codes [N,D] in `dtype` and ids [N] (str)."""
    np.savez(path, codes=codes.astype(dtype), ids=np.array(ids))


def load_index(path: str) -> tuple[np.ndarray, list[str]]:
    with np.load(path) as index:
        return index["codes"].astype(np.float32), index["ids"].tolist()


def thumbnail(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H,W,3] -> uint8 image fitting in size x size, aspect kept (never enlarged)."""
    scale = min(1.0, size / max(image.shape[:2]))
    target = (max(1, round(image.shape[0] * scale)), max(1, round(image.shape[1] * scale)))
    return resize_uint8(image, target).numpy()


def grid_cell(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H,W,3] -> uint8 [size,size,3], aspect kept, padded with black."""
    padded = tf.image.resize_with_pad(tf.cast(image, tf.float32), size, size, antialias=True)
    return to_uint8(padded).numpy()



def write_thumbnails(collection: Collection, positions: set[int], folder: str, prefix: str,
                     desc: str = "thumbnails") -> dict[int, tuple]:
    """Writes `<folder>/<prefix><position>.png` for the wanted positions (one more pass over the images, no
    model; a progress bar `desc` over the pass on stderr). Returns {position: (file name, grid cell uint8
    [GRID_CELL,GRID_CELL,3])}."""
    written = {}
    examples = tqdm(collection.dataset.as_numpy_iterator(), total=len(collection.ids), desc=desc, unit="img",
                    dynamic_ncols=True, file=sys.stderr)
    for example in examples:
        position = int(example["index"])
        if position in positions:
            name = f"{prefix}{position}.png"
            tf.io.write_file(os.path.join(folder, name), tf.io.encode_png(thumbnail(example["image"], THUMB_SIZE)))
            written[position] = (name, grid_cell(example["image"], GRID_CELL))
    return written


def results_html(query_ids, query_thumbs, index_ids, index_thumbs, rows, similarities) -> str:
    """The results page: per query a row of <img> with paths relative to the page (thumbs/...)."""
    parts = ["<!doctype html><meta charset='utf-8'><title>retrieval</title>",
             "<style>td{vertical-align:top;font:11px sans-serif;max-width:110px;word-wrap:break-word}"
             " .q{border-right:3px solid #444}</style><table>"]
    for q, (neighbours, scores) in enumerate(zip(rows, similarities)):
        cells = [f"<td class=q><img src='thumbs/{query_thumbs[q]}'><br>query: {html.escape(query_ids[q])}</td>"]
        cells += [f"<td><img src='thumbs/{index_thumbs[r]}'><br>{s:.3f} {html.escape(index_ids[r])}</td>"
                  for r, s in zip(neighbours, scores)]
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</table>")
    return "\n".join(parts)


def results_grid(query_cells: list[np.ndarray], neighbour_cells: list[list[np.ndarray]]) -> np.ndarray:
    """uint8 [Q*(c+g), (1+k)*(c+g)+g, 3]: query column, a gap, then the neighbours; white background."""
    below_and_right = (0, 0, GRID_GAP, GRID_GAP)  # (top, left, bottom, right)
    queries = tile([[cell] for cell in query_cells], gap=GRID_GAP, margin=below_and_right, fill=255)
    neighbours = tile(neighbour_cells, num_rows=len(query_cells), gap=GRID_GAP,
                      margin=(0, GRID_GAP, GRID_GAP, GRID_GAP), fill=255)
    return np.concatenate([queries, neighbours], axis=1)


def retrieve(savedmodel: str, index: str, queries: str, out: str, *, k: int = 8, index_split: str = "train",
             query_split: str = "test", data_dir: str | None = None, eval_size: int | None = None,
             codes_dtype: str = "float16", max_index: int = 0, max_queries: int = 0, batch_size: int = 128) -> dict:
    """Indexes, queries and writes everything listed in the module docstring; returns a summary dict."""
    status(f"Loading the SavedModel {savedmodel} ...", sys.stderr)
    model = SavedModelFeatures(savedmodel, batch_size)
    status(f"Indexing {index} ...", sys.stderr)
    index_collection = open_collection(index, index_split, data_dir=data_dir, limit=max_index)
    start = time.perf_counter()
    index_codes = model.extract_dataset(index_collection.dataset, len(index_collection.ids), "embedding",
                                        eval_size=eval_size, desc="index")
    codes_per_second = len(index_codes.features) / (time.perf_counter() - start)
    os.makedirs(os.path.join(out, "thumbs"), exist_ok=True)
    save_index(os.path.join(out, "index.npz"), index_codes.features, index_collection.ids, codes_dtype)
    codes, ids = load_index(os.path.join(out, "index.npz"))  # search what was saved (float16 if so)

    status(f"Querying with {queries} ...", sys.stderr)
    query_collection = open_collection(queries, query_split, data_dir=data_dir, limit=max_queries)
    query_codes = model.extract_dataset(query_collection.dataset, len(query_collection.ids), "embedding",
                                        eval_size=eval_size, desc="queries")
    rows, similarities = nearest(codes, query_codes.features, k)

    thumbs_dir = os.path.join(out, "thumbs")
    retrieved = set(rows.ravel().tolist())
    status(f"Writing the thumbnails of the {len(rows)} queries and their {len(retrieved)} distinct neighbours to "
           f"{thumbs_dir} ...", sys.stderr)
    query_thumbs = write_thumbnails(query_collection, set(range(len(query_collection.ids))), thumbs_dir, "q",
                                    "query thumbnails")
    index_thumbs = write_thumbnails(index_collection, retrieved, thumbs_dir, "i", "index thumbnails")
    page = results_html(query_collection.ids, {q: name for q, (name, _) in query_thumbs.items()}, ids,
                        {r: name for r, (name, _) in index_thumbs.items()}, rows, similarities)
    with open(os.path.join(out, "results.html"), "w") as f:
        f.write(page)
    grid = results_grid([query_thumbs[q][1] for q in range(len(rows))],
                        [[index_thumbs[r][1] for r in neighbours] for neighbours in rows])
    status(f"Writing {os.path.join(out, 'neighbours.png')} ({grid.shape[1]} x {grid.shape[0]} px) ...", sys.stderr)
    tf.io.write_file(os.path.join(out, "neighbours.png"), tf.io.encode_png(grid))
    return {
        "index_images": len(ids),
        "queries": len(rows),
        "codes_per_second": codes_per_second,
        "bytes_per_image": int(codes.shape[1] * np.dtype(codes_dtype).itemsize),
        "neighbours": rows.tolist(),
        "similarities": similarities.tolist(),
    }
