"""Descriptor-matching benchmark (Exemplar-CNN paper, Fischer et al. 2014); the program is `exemplar_tf.match`.

    ellipses     MSER ellipses, local affine mapping, ellipse IoU
    warps        the six transformation families with exact point maps and Jacobians
    descriptors  normalised patches; SIFT, raw pixels, SavedModel features
    images       demo / folder base images, Oxford-format sequences
    benchmark    pair scoring (nearest neighbour, precision-recall, AP), synthetic and Oxford runs
    report       table, JSON, plots
"""
from exemplar_tf.matching.benchmark import PairResult, Settings, average_precision, run_oxford, run_synthetic
from exemplar_tf.matching.descriptors import Descriptor, SavedModelDescriptors, standard_descriptors
from exemplar_tf.matching.ellipses import Ellipses, detect_mser_ellipses, pairwise_iou
from exemplar_tf.matching.warps import FAMILIES

__all__ = ["Descriptor", "Ellipses", "FAMILIES", "PairResult", "SavedModelDescriptors", "Settings",
           "average_precision", "detect_mser_ellipses", "pairwise_iou", "run_oxford", "run_synthetic",
           "standard_descriptors"]
