"""Chooses the CNN descriptor's defaults on the synthetic matching benchmark (never on real pairs): mean AP of
every (patch contrast, descriptor normalisation) combination over the six families, one JSON line per
combination, all from the same regions and the same CNN forward passes (one per patch contrast).

    python benchmarks/match_cnn_normalisation.py --savedmodel=savedmodels/demo/1 [--num_images=4]
"""
import json

import numpy as np
from absl import app, flags

from exemplar_tf.matching import benchmark, images, report
from exemplar_tf.matching.descriptors import (NORMALISATIONS, PATCH_CONTRASTS, Descriptor, SavedModelDescriptors,
                                              feature_layer_blocks, normalise_descriptors,
                                              standardise_patch_contrast)
from machine import cpu_name  # benchmarks/ is on the path when run

flags.DEFINE_string("savedmodel", None, "Export to score.", required=True)
flags.DEFINE_integer("num_images", 4, "Demo base images.")
flags.DEFINE_string("strengths", "1,2,3,4", "Levels of each family.")
flags.DEFINE_integer("max_regions", 150, "Regions per image.")
flags.DEFINE_integer("max_side", 320, "Image side.")




def main(argv):
    del argv
    values = flags.FLAGS
    model = SavedModelDescriptors(values.savedmodel)
    blocks = feature_layer_blocks(values.savedmodel)
    cache = {}

    def raw(patches, contrast):
        key = (hash(patches.tobytes()), contrast)  # every descriptor of one image sees the same patches
        if key not in cache:
            if len(cache) >= len(PATCH_CONTRASTS):
                cache.clear()
            cache[key] = model.raw(standardise_patch_contrast(patches) if contrast == "standardise" else patches)
        return cache[key]

    def compute(contrast, mode):
        return lambda patches: normalise_descriptors(raw(patches, contrast), mode, blocks=blocks)

    descriptors = [Descriptor(f"{contrast}/{mode}", 113, compute(contrast, mode))
                   for contrast in PATCH_CONTRASTS for mode in NORMALISATIONS]
    settings = benchmark.Settings(max_regions=values.max_regions, max_side=values.max_side)
    levels = [int(level) for level in values.strengths.split(",")]
    results = benchmark.run_synthetic(images.demo_images(values.num_images), descriptors, levels=levels,
                                      settings=settings, progress=False)
    rows = report.summarise(results)
    cpu = cpu_name()
    for descriptor in descriptors:
        per_family = {}
        for row in rows:
            per_family.setdefault(row["family"], []).append(row["mean_ap"][descriptor.name])
        contrast, mode = descriptor.name.split("/")
        print(json.dumps({"figure": "synthetic_mean_ap", "savedmodel": values.savedmodel, "patch_contrast": contrast,
                          "normalisation": mode, "mean_ap": round(report.overall_means(rows, "synthetic",
                                                                                       "upright")[descriptor.name], 4),
                          "per_family": {family: round(float(np.mean(aps)), 4) for family, aps in per_family.items()},
                          "base_images": values.num_images, "levels": levels, "cpu": cpu}))


if __name__ == "__main__":
    app.run(main)
