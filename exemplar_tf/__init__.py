"""exemplar_tf: unsupervised feature learning by instance discrimination.

Exemplar-CNN surrogate classes (Dosovitskiy et al. 2014) and NPID's non-parametric
memory bank (Wu et al. 2018) on TensorFlow 2 / Keras 3.
"""
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

__version__ = "0.1.0"
