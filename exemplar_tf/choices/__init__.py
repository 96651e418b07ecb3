"""The valid values of the choices that flags, configuration and library share, each listed once.

No TensorFlow import: `train.py` defines its flags and validates them (`training.config`) before TensorFlow loads,
and the packages that act on a choice (models, objectives, data) check their arguments against the same lists.
"""
EXEMPLAR_ARCHS = ("small", "medium", "large")  # the Exemplar-CNNs (models.exemplar_cnn)
RESNET_ARCHS = ("resnet18", "resnet50")  # models.resnet
ARCHS = EXEMPLAR_ARCHS + RESNET_ARCHS
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")  # Keras dtype policies (models.precision)
OBJECTIVES = ("softmax", "nonparametric", "nce")  # objectives.objective
BANK_OBJECTIVES = ("nonparametric", "nce")  # the objectives that keep a memory bank
AUGMENT_ON = ("host", "device")  # where the augmentation runs (data.surrogate, augment.npid): tf.data or the step
# Image files the TensorFlow decoders read (data.sources.folder); the matching benchmark's OpenCV reads more.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
