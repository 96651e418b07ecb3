"""Descriptor-matching benchmark of the Exemplar-CNN paper: MSER ellipses, normalised patches, nearest-neighbour
matching, area under precision-recall; CNN (a SavedModel's `features`) against SIFT and raw pixels.

    python -m exemplar_tf.match [--savedmodel=savedmodels/<name>/<v>] [--images=<dir>] [--num_images=16]
        [--strengths=1,2,3,4] [--families=rotation,zoom,...] [--oxford=<dir>] [--nosynthetic]
        [--orientation=upright,dominant] [--cnn_normalisation=none|l2|l2_layer|clip]
        [--cnn_patch_contrast=none|standardise]
        [--max_regions=300] [--region_mode=cap|fixed] [--mser_delta=5 ...]
        [--cnn_patch_size=113] [--sift_patch_size=157] [--out_dir=runs/match] [--seed=0]

Base images: the embedded demo photographs, or every image in --images; each is shrunk to --max_side and
transformed by six families (rotation, zoom, perspective, nonlinear warp, lighting, blur) at the chosen strength
levels (4 by default: 24 pairs per image). --oxford adds real pairs with known homographies (a folder with
img1..imgN + H1to2p..H1toNp, or a folder of such folders). Patches are upright on the synthetic pairs (the rotation
family measures each descriptor's own invariance) and both dominant-orientation and upright on the Oxford pairs
(their protocol turns each region to its dominant gradient orientation), unless --orientation names them.
Writes <out_dir>/match.json, synthetic.png and oxford.png, and prints the table of mean AP per family, strength
and orientation, with each row's regions and true correspondences.
"""
from __future__ import annotations

import dataclasses
import os

from absl import flags

from exemplar_tf import errors
from exemplar_tf.errors import cli
from exemplar_tf.matching import benchmark, descriptors, ellipses, images, orientation, report, warps


SYNTHETIC_ORIENTATIONS = ("upright",)
OXFORD_ORIENTATIONS = ("dominant", "upright")

_MSER = ellipses.MserParameters()

flags.DEFINE_string("savedmodel", None, "Export folder savedmodels/<name>/<v> (serving_default: images -> "
                    "features); without it only SIFT and raw pixels are compared.")
flags.DEFINE_enum("cnn_output", "features", ["features", "embedding"], "Which output of the export is the "
                  "CNN descriptor.")
flags.DEFINE_enum("cnn_normalisation", descriptors.DEFAULT_CNN_NORMALISATION, list(descriptors.NORMALISATIONS),
                  "CNN descriptor normalisation before Euclidean matching: none, l2 (whole descriptor), "
                  "l2_layer (each layer's block; needs feature_channels in export_info.json), clip (SIFT's "
                  "unit norm, clip at 0.2, unit norm).")
flags.DEFINE_enum("cnn_patch_contrast", descriptors.DEFAULT_CNN_PATCH_CONTRAST, list(descriptors.PATCH_CONTRASTS),
                  "standardise: each patch shifted and scaled to one mean and standard deviation before the CNN "
                  "(gain/offset invariance the network's own mean subtraction prevents); none: as cut.")
flags.DEFINE_string("orientation", "", "Comma-separated patch orientations to score, of upright, dominant "
                    "(each region turned to its dominant gradient orientation). Empty: upright on synthetic "
                    "pairs, dominant,upright on --oxford pairs.")
flags.DEFINE_string("images", None, "Folder of base images (default: the embedded demo photographs).")
flags.DEFINE_integer("num_images", 16, "Use at most this many base images.")
flags.DEFINE_bool("synthetic", True, "Run the synthetic transformations on the base images.")
flags.DEFINE_string("families", ",".join(warps.FAMILIES), "Comma-separated transformation families.")
flags.DEFINE_string("strengths", "1,2,3,4", "Comma-separated 1-based strength levels of each family.")
flags.DEFINE_string("oxford", None, "Oxford-format folder (img1..imgN, H1to2p..H1toNp) or a folder of them.")
flags.DEFINE_integer("max_regions", 300, "MSER regions kept per image (the most stable): at most this many, "
                     "or exactly this many with --region_mode=fixed.")
flags.DEFINE_enum("region_mode", "cap", list(ellipses.REGION_MODES), "cap: at most --max_regions of the regions the "
                  "detector finds; fixed: the same number in every image, relaxing the detector (lower delta, "
                  "higher max_variation) on images that yield fewer.")
flags.DEFINE_integer("mser_delta", _MSER.delta, "MSER threshold step.")
flags.DEFINE_integer("mser_min_area", _MSER.min_area, "MSER smallest region (pixels).")
flags.DEFINE_float("mser_max_area", _MSER.max_area_fraction, "MSER largest region (fraction of the image).")
flags.DEFINE_float("mser_max_variation", _MSER.max_variation, "MSER largest accepted area variation.")
flags.DEFINE_float("mser_min_diversity", _MSER.min_diversity, "MSER pruning of similar nested regions.")
flags.DEFINE_float("context", 3.0, "Patch = region ellipse enlarged this many times.")
flags.DEFINE_float("iou_threshold", 0.5, "Ellipse IoU above which two regions correspond.")
flags.DEFINE_integer("max_side", 480, "Shrink images to this longer side (0: keep their size).")
flags.DEFINE_integer("cnn_patch_size", 113, "Patch side for the CNN and raw-pixel descriptors.")
flags.DEFINE_integer("sift_patch_size", 157, "Patch side for SIFT.")
flags.DEFINE_string("out_dir", "runs/match", "Where match.json and the PNG plots go.")
flags.DEFINE_integer("seed", 0, "Seed of the random transformation parameters.")
for _name in ("num_images", "max_regions", "mser_delta", "mser_min_area", "cnn_patch_size", "sift_patch_size"):
    cli.check(_name, cli.POSITIVE)
cli.check("mser_max_area", cli.Bound(low=0, high=1, low_open=True))
cli.check("mser_max_variation", cli.POSITIVE)
cli.check("mser_min_diversity", cli.UNIT_INTERVAL)
cli.check("context", cli.POSITIVE)
cli.check("iou_threshold", cli.Bound(low=0, high=1, low_open=True))
cli.check("max_side", cli.NON_NEGATIVE)


def _families(text: str) -> list[str]:
    return [name for name in text.split(",") if name]


def _levels(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def _orientations(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _known_names(values: flags.FlagValues) -> str | None:
    """--families, --orientation and --strengths name known families, orientations and levels."""
    unknown = sorted(set(_families(values.families)) - set(warps.FAMILIES))
    if unknown:
        return f"--families has unknown names {unknown}; valid: {', '.join(warps.FAMILIES)}"
    unknown = sorted(set(_orientations(values.orientation)) - set(orientation.ORIENTATIONS))
    if unknown:
        return f"--orientation has unknown names {unknown}; valid: {', '.join(orientation.ORIENTATIONS)}"
    try:
        levels = _levels(values.strengths)
    except ValueError:
        return f"--strengths must be comma-separated integers, got {values.strengths!r}"
    top = min(len(warps.FAMILIES[name].strengths) for name in _families(values.families) or warps.FAMILIES)
    if any(not 1 <= level <= top for level in levels):
        return f"--strengths are levels 1..{top}, got {values.strengths!r}"
    return None


cli.check_flags(_known_names)


def main(argv) -> None:
    del argv  # errors.run refuses positional arguments
    values = flags.FLAGS
    families = _families(values.families)
    chosen = _orientations(values.orientation)
    mser = ellipses.MserParameters(delta=values.mser_delta, min_area=values.mser_min_area,
                                   max_area_fraction=values.mser_max_area, max_variation=values.mser_max_variation,
                                   min_diversity=values.mser_min_diversity)
    settings = benchmark.Settings(max_regions=values.max_regions, context=values.context,
                                  iou_threshold=values.iou_threshold, max_side=values.max_side or None,
                                  region_mode=values.region_mode, mser=mser)
    described = descriptors.standard_descriptors(savedmodel=values.savedmodel, cnn_patch_size=values.cnn_patch_size,
                                                 sift_patch_size=values.sift_patch_size,
                                                 cnn_output=values.cnn_output,
                                                 cnn_normalisation=values.cnn_normalisation,
                                                 cnn_patch_contrast=values.cnn_patch_contrast)
    os.makedirs(values.out_dir, exist_ok=True)  # before the benchmark: a bad --out_dir fails at once
    results = []
    if values.synthetic:
        base = (images.folder_images(values.images, values.num_images) if values.images
                else images.demo_images(values.num_images))
        results += benchmark.run_synthetic(base, described, families=families, levels=_levels(values.strengths),
                                           settings=dataclasses.replace(
                                               settings, orientations=chosen or SYNTHETIC_ORIENTATIONS),
                                           seed=values.seed)
    if values.oxford:
        results += benchmark.run_oxford(images.load_sequences(values.oxford), described, settings=dataclasses.replace(
            settings, orientations=chosen or OXFORD_ORIENTATIONS))

    rows = report.summarise(results)
    print(report.format_table(rows))
    config = {name: values[name].value for name in (
        "savedmodel", "cnn_output", "cnn_normalisation", "cnn_patch_contrast", "images", "oxford", "num_images",
        "strengths", "families",
        "orientation", "max_regions", "region_mode", "mser_delta", "mser_min_area", "mser_max_area",
        "mser_max_variation", "mser_min_diversity", "context", "iou_threshold", "max_side", "cnn_patch_size",
        "sift_patch_size", "seed")}
    report.write_json(os.path.join(values.out_dir, "match.json"), results, rows, config)
    written = [os.path.join(values.out_dir, "match.json")]
    for name in ("synthetic", "oxford"):
        path = os.path.join(values.out_dir, f"{name}.png")
        if report.plot_curves(rows, path, name):
            written.append(path)
    print("wrote " + ", ".join(written))


if __name__ == "__main__":
    errors.run(main)
