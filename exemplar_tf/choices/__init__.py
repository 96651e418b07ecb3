"""The valid values of the choices that flags, configuration and library share, each listed once.

No TensorFlow import: `train.py` defines its flags and validates them (`training.config`) before TensorFlow loads,
and the packages that act on a choice (models, objectives, data) check their arguments against the same lists.
The training settings declare theirs with these (`training.config.TrainConfig`, `choices=`); the flags, the
validation and docs/flags.md read them from there.
"""
EXEMPLAR_ARCHS = ("small", "medium", "large")  # the Exemplar-CNNs (models.exemplar_cnn)
RESNET_ARCHS = ("resnet18", "resnet50")  # models.resnet
ARCHS = EXEMPLAR_ARCHS + RESNET_ARCHS
RESNET_STEMS = ("auto", "cifar", "imagenet")  # models.resnet: auto picks by input size
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")  # Keras dtype policies (models.precision)
PRECISION_SETTINGS = ("auto",) + PRECISIONS  # --precision: auto picks one for the machine (training.machine)
OBJECTIVES = ("softmax", "nonparametric", "nce")  # objectives.objective
BANK_OBJECTIVES = ("nonparametric", "nce")  # the objectives that keep a memory bank
NCE_NOISE = ("per_example", "shared")  # how NCE draws its noise instances (objectives)
BANK_INITS = ("random", "features")  # the memory bank at step 0
BANK_SHARDINGS = ("replicated", "sharded")  # every replica holds the whole bank, or N/R rows of it
LR_SCHEDULES = ("step", "cosine")  # optim.schedules: step decay, or cosine decay after a linear warm-up
AUGMENT_ON = ("host", "device")  # where the augmentation runs (augment.surrogate, augment.npid): tf.data or the step
METHODS = ("exemplar", "npid")  # Exemplar-CNN surrogate classes, or NPID's one instance per image
SEED_SAMPLINGS = ("fixed", "online")  # Exemplar-CNN: seeds drawn once, or a fresh patch per visit
PRESETS = ("paper", "release_code")  # Exemplar-CNN transformation ranges (augment.presets.PRESETS, keyed alike)
PAPER_TRANSFORMS = ("translate", "scale", "rotate", "pca_color", "saturation_value", "hue")  # the paper's chain
# The chain's steps: the paper's, then two of NPID's view changes that the paper's chain lacks (off by default). The
# order gives each step its random sub-seed, so a new step goes at the end and leaves the others' draws unchanged.
TRANSFORMS = PAPER_TRANSFORMS + ("flip", "grayscale")
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")  # tf.distribute strategies (training.distribute)
# Image files the TensorFlow decoders read (data.sources.folder); the matching benchmark's OpenCV reads more.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
