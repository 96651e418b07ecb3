"""exemplar_tf: unsupervised feature learning by instance discrimination.

Exemplar-CNN surrogate classes (Dosovitskiy et al. 2014) and NPID's non-parametric
memory bank (Wu et al. 2018) on TensorFlow 2 / Keras 3.
"""
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# TensorFlow turns its oneDNN kernels on by default only on x86 CPUs with AVX-512 VNNI/BF16/AMX; on others
# (AVX2 AMD EPYC, say) convolutions fall back to Eigen: measured 2x slower training for the small Exemplar-CNN,
# 1.5x for ResNet-18 (BUILD_NOTES.md). Takes effect only if TensorFlow is imported after this package; a
# value the user set wins (TF_ENABLE_ONEDNN_OPTS=0 turns it off).
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

__version__ = "0.1.0"
