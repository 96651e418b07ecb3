"""exemplar_tf: unsupervised feature learning by instance discrimination.

Exemplar-CNN surrogate classes (Dosovitskiy et al. 2014) and NPID's non-parametric
memory bank (Wu et al. 2018) on TensorFlow 2 / Keras 3.

The Python API (`exemplar_tf.api`, README "Python API"), loaded on first use so that `import exemplar_tf` stays
cheap (the programs import the package before parsing their flags, without TensorFlow):

    exemplar_tf.TrainConfig(...)             the training settings (one field per `python -m exemplar_tf.train` flag)
    exemplar_tf.train_encoder(config)        train / resume the run and export it -> RunResult (.export_dir)
    exemplar_tf.load_encoder(path, output)   an export as a keras.Model: uint8 [B,H,W,3] -> float32 [B,D]
    exemplar_tf.embed(encoder, images)       np.ndarray float32 [N,D]
    exemplar_tf.knn_accuracy(...)            weighted kNN top-1 / top-5 on feature arrays
    exemplar_tf.linear_probe(...)            the paper's linear SVM probe on feature arrays
"""
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# TensorFlow turns its oneDNN kernels on by default only on x86 CPUs with AVX-512 VNNI/BF16/AMX; on others
# (AVX2 AMD EPYC, say) convolutions fall back to Eigen: measured 2x slower training for the small Exemplar-CNN,
# 1.5x for ResNet-18 (BUILD_NOTES.md). Takes effect only if TensorFlow is imported after this package; a
# value the user set wins (TF_ENABLE_ONEDNN_OPTS=0 turns it off).
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

__version__ = "0.1.0"

# name -> the module that defines it. None of them is a program's name (`exemplar_tf.train` is the training program's
# module: a package attribute of that name would hide it from `from exemplar_tf import train`).
_API = {"TrainConfig": "exemplar_tf.training.config", "train_encoder": "exemplar_tf.api",
        "load_encoder": "exemplar_tf.api", "embed": "exemplar_tf.api", "knn_accuracy": "exemplar_tf.api",
        "linear_probe": "exemplar_tf.api"}
__all__ = sorted(_API)


def __getattr__(name: str):
    """The API's names, imported on first use (PEP 562); anything else is missing as usual, so that
    `from exemplar_tf import <program>` still imports the program's module."""
    if name not in _API:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
