"""Fine-tuning an encoder with a linear classifier: data, step, checkpoints/resume, test accuracy, export.

The classifier is `Dense(num_classes)` on the encoder's representation. Encoder and head have their own SGD
optimizer and learning rate (both dropped by `lr_decay_factor` at the `lr_decay_at` fractions of `steps`).
Training images get NPID's augmentation at the encoder's input size; test images are resized to that size, by
the same function the export's `classify` signature runs.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from exemplar_tf import errors, models
from exemplar_tf.augment.npid import npid_augment
from exemplar_tf.optim.schedules import step_decay
from exemplar_tf.serving import export
from exemplar_tf.training import checkpoints
from exemplar_tf.training.rundir import checkpoint_number

CLASSIFY_SIGNATURE = "classify"


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How one encoder is fine-tuned (the comparison's `run.Options` holds one; each run sets its own lrs)."""

    steps: int = 1000
    batch_size: int = 64
    encoder_lr: float = 0.01
    head_lr: float = 0.1
    lr_decay_at: tuple[float, ...] = (0.6, 0.8)
    lr_decay_factor: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    checkpoint_every: int = 500


def _optimizer(lr: float, recipe: Recipe) -> keras.optimizers.Optimizer:
    """SGD with momentum at `lr`, step-decayed (a constant rate stays a float: the checkpoint layout of
    fine-tuning runs, see `optim.schedules.step_decay`)."""
    schedule = step_decay(lr, recipe.steps, recipe.lr_decay_at, recipe.lr_decay_factor, constant_as_float=True)
    return keras.optimizers.SGD(schedule, momentum=recipe.momentum)


def training_batches(dataset: tf.data.Dataset, rows: np.ndarray, total: int, size: int, recipe: Recipe):
    """Endless augmented batches {"image": float32 [B,size,size,3], "label"} of the examples whose "index" is in
    `rows` (the labelled subset; `total` = number of examples in `dataset`)."""
    keep = np.zeros(total, bool)
    keep[rows] = True
    keep = tf.constant(keep)
    seeds = tf.data.Dataset.random(seed=recipe.seed).batch(2)
    labelled = dataset.filter(lambda e: tf.gather(keep, e["index"])).cache()
    return (tf.data.Dataset.zip(labelled.shuffle(len(rows), seed=recipe.seed).repeat(), seeds)
            .map(lambda e, s: {"image": npid_augment(e["image"], size, s), "label": e["label"]},
                 num_parallel_calls=tf.data.AUTOTUNE)
            .batch(recipe.batch_size, drop_remainder=False).prefetch(tf.data.AUTOTUNE))


def classify_fn(encoder, head):
    """uint8 images [B,H,W,3] -> float32 probabilities [B,C] (resized to encoder.input_size, bilinear)."""
    size = int(encoder.input_size)

    def classify(images):
        x = tf.cast(tf.ensure_shape(images, [None, None, None, 3]), tf.float32) / 255.0
        x = tf.image.resize(x, (size, size), method="bilinear", antialias=True)
        return {"probabilities": tf.nn.softmax(tf.cast(head(encoder(x, training=False)), tf.float32), axis=-1)}

    return classify


def test_accuracy(encoder, head, dataset: tf.data.Dataset, batch_size: int = 128) -> float:
    """Top-1 accuracy of `classify_fn` over {"image": uint8 [H,W,3], "label"} (one image at a time if sizes differ)."""
    classify = tf.function(classify_fn(encoder, head))
    correct = count = 0
    batches = {}  # images of one size share batches
    for image, label in dataset.map(lambda e: (e["image"], e["label"])).as_numpy_iterator():
        batches.setdefault(image.shape, []).append((image, label))
    for group in batches.values():
        for start in range(0, len(group), batch_size):
            images, labels = zip(*group[start:start + batch_size])
            predicted = np.argmax(classify(tf.constant(np.stack(images)))["probabilities"].numpy(), axis=1)
            correct += int(np.sum(predicted == np.array(labels)))
            count += len(labels)
    if not count:
        raise ValueError("no test images")
    return correct / count


def finetune(encoder, num_classes: int, batches: tf.data.Dataset, recipe: Recipe, out_dir: str, *,
             desc: str = "fine-tuning"):
    """Trains encoder + a new linear head for `recipe.steps` steps, resuming from `<out_dir>/checkpoints` (on the
    batches after those it trained, `batches` being the same seeded stream each time, and with the dropout masks'
    random generators where they stopped), with a progress bar
    named `desc` on stderr. Returns (head, the last step's loss, or None when no step ran: a finished
    run resumed). A checkpoint past `recipe.steps` is refused (errors.InputError) rather than reported as a run of
    `recipe.steps` steps."""
    head = keras.layers.Dense(num_classes, name="classifier")
    head.build((None, encoder.representation_dim))
    encoder_opt = _optimizer(recipe.encoder_lr, recipe)
    head_opt = _optimizer(recipe.head_lr, recipe)
    encoder_opt.build(encoder.trainable_variables)
    head_opt.build(head.trainable_variables)
    step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    parts = {"encoder": encoder, "head": head, "encoder_opt": encoder_opt, "head_opt": head_opt, "step": step_var}
    checkpoint = tf.train.Checkpoint(**parts, random=tf.train.Checkpoint(**models.seed_generator_states([encoder])))
    manager = tf.train.CheckpointManager(checkpoint, os.path.join(out_dir, "checkpoints"), max_to_keep=2)
    if manager.latest_checkpoint:
        # the dropout masks' generators; checkpoints written before they were saved resume without them
        restoring = (checkpoint if checkpoints.holds_part(manager.latest_checkpoint, "random")
                     else tf.train.Checkpoint(**parts))
        restoring.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        if int(step_var) > recipe.steps:
            raise errors.InputError(f"{out_dir} is fine-tuned to step {int(step_var)}, past --steps={recipe.steps}: "
                                    f"give --steps={int(step_var)} or more, or another --out_dir")
        print(f"Resuming {out_dir} from step {int(step_var)}/{recipe.steps}")
    decayed = [v for v in encoder.trainable_variables + head.trainable_variables if len(v.shape) > 1]

    @tf.function
    def train_step(batch):
        with tf.GradientTape() as tape:
            logits = tf.cast(head(encoder(batch["image"], training=True)), tf.float32)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(batch["label"], logits))
            total = loss + recipe.weight_decay * 0.5 * tf.add_n([tf.reduce_sum(tf.square(v)) for v in decayed])
        grads = tape.gradient(total, encoder.trainable_variables + head.trainable_variables)
        n = len(encoder.trainable_variables)
        encoder_opt.apply_gradients(zip(grads[:n], encoder.trainable_variables))
        head_opt.apply_gradients(zip(grads[n:], head.trainable_variables))
        step_var.assign_add(1)
        return loss

    loss = None
    iterator = iter(batches.skip(int(step_var)))  # a resumed run goes on with the batches it had not yet trained
    with tqdm(total=recipe.steps, initial=int(step_var), desc=desc, unit="step", dynamic_ncols=True,
              file=sys.stderr) as progress:
        while int(step_var) < recipe.steps:
            loss = float(train_step(next(iterator)))
            if not np.isfinite(loss):
                raise FloatingPointError(f"fine-tuning loss became {loss} at step {int(step_var)}; try lower lrs")
            progress.update(1)
            progress.set_postfix(loss=f"{loss:.4f}", refresh=False)
            if int(step_var) % recipe.checkpoint_every == 0:
                manager.save(checkpoint_number=int(step_var))
    if manager.latest_checkpoint is None or checkpoint_number(manager.latest_checkpoint) != int(step_var):
        manager.save(checkpoint_number=int(step_var))
    return head, loss


def classifier_identity(encoder, num_classes: int) -> dict:
    """The export_info.json fields every version of one classifier name must share (`export.check_model_name`)."""
    return {"arch": getattr(encoder, "arch", type(encoder).__name__), "input_size": int(encoder.input_size),
            "num_classes": int(num_classes)}


def export_classifier(encoder, head, *, export_dir_base: str, name: str, class_names=None,
                      origin: dict | None = None) -> str:
    """SavedModel `<base>/<name>/<next version>` with signature `classify`: `images` uint8 [B,H,W,3] ->
    {"probabilities": float32 [B,C]}, written to a temporary folder and renamed into place.

    origin: {"run_dir": the fine-tuning directory, "source", "step"}; assets.extra/export_info.json records it (the
    directory absolute and relative to the export base, as training's exports do) with the classifier's
    identity. A name whose versions come from another fine-tuning directory, or are another network or class
    count, is refused (`export.check_model_name`, ExportNameTaken)."""
    num_classes = int(head.units)
    run_dir = origin.get("run_dir") if origin else None
    identity = classifier_identity(encoder, num_classes)
    export.check_model_name(export_dir_base, name, run_dir, identity, flag="--export_name")
    info = {"name": name, **export.origin_fields(run_dir, export_dir_base), "kind": "classifier",
            "source": origin.get("source") if origin else None,
            "step": int(origin["step"]) if origin and origin.get("step") is not None else None,
            "created": time.strftime(export.CREATED_FORMAT), **identity,
            **(encoder.options() if hasattr(encoder, "options") else {})}
    archive = keras.export.ExportArchive()
    archive.track(encoder)
    archive.track(head)
    archive.add_endpoint(CLASSIFY_SIGNATURE, classify_fn(encoder, head),
                         input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])

    def write(path: str) -> None:
        archive.write_out(path, verbose=False)
        os.makedirs(os.path.join(path, "assets.extra"), exist_ok=True)
        with open(os.path.join(path, export.INFO_PATH), "w") as f:
            json.dump(info, f, indent=2)
        if class_names:
            with open(os.path.join(path, "assets.extra", "class_names.txt"), "w") as f:
                f.write("\n".join(class_names) + "\n")

    return export.write_version(os.path.join(export_dir_base, name), write)
