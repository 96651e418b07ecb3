"""What a person sees in TensorBoard for a tiny real training run, read through TensorBoard's own backend.

The event multiplexer, its data provider and the projector / hparams plugin classes run in-process on the run's
log directory (the command the training program prints) and on the folder above several runs (`--logdir runs/`).
"""
import io
import json

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorboard import context as tb_context
from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
from tensorboard.plugins import base_plugin
from tensorboard.plugins.hparams import hparams_plugin
from tensorboard.plugins.projector import projector_plugin
from werkzeug import test as werkzeug_test

from exemplar_tf.data import sources
from exemplar_tf.evaluation.savedmodel import SavedModelFeatures
from exemplar_tf.metrics.knn import knn_accuracy
from exemplar_tf.serving import runs
from exemplar_tf.training import summaries
from exemplar_tf.training.config import TrainConfig

KNN_EXAMPLES = 40


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 4-step NCE run (bank statistics) with an MLP head and the kNN monitor on the demo's labelled crops, in
    runs/tiny."""
    root = tmp_path_factory.mktemp("tb")
    config = TrainConfig(run_dir=str(root / "runs" / "tiny"), name="tiny", source="demo", method="exemplar",
                         arch="small", objective="nce", batch_norm=True, num_seeds=64, seeds_per_image=8, nce_m=32,
                         head_hidden_dim=32, batch_size=16, steps=4, log_every=2, checkpoint_every=4, knn_source="demo_labelled",
                         knn_max_examples=KNN_EXAMPLES, export_base=str(root / "sm"), progress=False)
    result = runs.train(config)
    return config, result, str(root / "runs")


def _context(logdir):
    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(logdir)
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, logdir)
    return base_plugin.TBContext(logdir=logdir, multiplexer=multiplexer, data_provider=provider)


def _get(plugin, route, **args):
    response = werkzeug_test.Client(plugin.get_plugin_apps()[route]).get("/", query_string=args)
    assert response.status_code == 200, f"{route} {args}: {response.get_data(as_text=True)}"
    return response.get_data()


def test_scalars_images_and_config_text(run):
    config, result, _ = run
    context, ctx = _context(result.log_dir), tb_context.RequestContext()
    scalars = context.data_provider.list_scalars(ctx, experiment_id="", plugin_name="scalars")
    assert list(scalars) == ["."]
    for tag in ("loss", "learning_rate", "examples_per_second", "nce_z", "knn_top1", "bank/mean_norm",
                "bank/mean_cosine", "bank/max_cosine", "representation/active_units",
                "representation/code_mean_cosine"):
        assert tag in scalars["."], f"missing scalar {tag}; have {sorted(scalars['.'])}"
    knn = context.data_provider.read_scalars(ctx, experiment_id="", plugin_name="scalars", downsample=100,
                                             run_tag_filter=_filter(".", "knn_top1"))["."]["knn_top1"]
    assert [point.step for point in knn] == [0, 4] and all(0 <= point.value <= 1 for point in knn)
    below_head = context.data_provider.read_scalars(
        ctx, experiment_id="", plugin_name="scalars", downsample=100,
        run_tag_filter=_filter(".", "knn_top1_representation"))["."]["knn_top1_representation"]
    assert [point.step for point in below_head] == [0, 4] and all(0 <= point.value <= 1 for point in below_head)
    # the step-4 reading is the kNN of the step-4 export's `representation` output on the monitor's images
    train, test = (summaries.labelled_images(config.knn_source, split, config.input_size, KNN_EXAMPLES)
                   for split in (config.knn_train_split, config.knn_split))
    export = SavedModelFeatures(result.export_dir)
    expected = knn_accuracy(export(train.images, "representation"), train.labels,
                            export(test.images, "representation"), test.labels,
                            num_classes=int(max(train.labels.max(), test.labels.max())) + 1)["top1"]
    assert below_head[-1].value == pytest.approx(expected, abs=1.5 / len(test.labels))

    images = context.data_provider.list_blob_sequences(ctx, experiment_id="", plugin_name="images")
    assert list(images["."]) == ["surrogate_samples"]
    blobs = context.data_provider.read_blob_sequences(ctx, experiment_id="", plugin_name="images", downsample=1,
                                                      run_tag_filter=_filter(".", "surrogate_samples"))
    (datum,) = blobs["."]["surrogate_samples"]
    width, height, png = (context.data_provider.read_blob(ctx, blob_key=b.blob_key) for b in datum.values)
    grid = Image.open(io.BytesIO(png))
    assert grid.size == (int(width), int(height)) and grid.size[0] == 8 * config.patch_size

    texts = context.data_provider.read_tensors(ctx, experiment_id="", plugin_name="text", downsample=1,
                                               run_tag_filter=_filter(".", "config"))
    table = texts["."]["config"][0].numpy.item().decode()
    assert "| objective | nce |" in table and f"| lr | {config.lr} |" in table


def _filter(run, tag):
    from tensorboard.data import provider

    return provider.RunTagFilter(runs=[run], tags=[tag])


@pytest.mark.parametrize("where", ["run", "runs"])
def test_projector_lists_the_run_with_codes_labels_and_sprite(run, where):
    config, result, runs_dir = run
    logdir, run_name = (result.log_dir, ".") if where == "run" else (runs_dir, "tiny/tensorboard")
    plugin = projector_plugin.ProjectorPlugin(_context(logdir))
    assert json.loads(_get(plugin, "/runs")) == [run_name]
    (embedding,) = json.loads(_get(plugin, "/info", run=run_name))["embeddings"]
    assert embedding["tensorName"] == "knn_test_codes/.ATTRIBUTES/VARIABLE_VALUE"
    assert [int(d) for d in embedding["tensorShape"]] == [KNN_EXAMPLES, config.embedding_dim]

    tensor = np.frombuffer(_get(plugin, "/tensor", run=run_name, name=embedding["tensorName"]), np.float32)
    codes = tensor.reshape(KNN_EXAMPLES, config.embedding_dim)
    np.testing.assert_allclose(np.linalg.norm(codes, axis=1), 1.0, rtol=1e-5)  # L2-normalised kNN codes

    test = summaries.labelled_images("demo_labelled", "test", config.input_size, KNN_EXAMPLES)
    names = sources.load_source("demo_labelled", "test").class_names
    metadata = _get(plugin, "/metadata", run=run_name, name=embedding["tensorName"]).decode().splitlines()
    assert metadata == ["label\tclass"] + [f"{label}\t{names[label]}" for label in test.labels]
    assert len(set(test.labels)) > 1

    assert [int(d) for d in embedding["sprite"]["singleImageDim"]] == [config.input_size, config.input_size]
    sprite = np.asarray(Image.open(io.BytesIO(_get(plugin, "/sprite_image", run=run_name, name=embedding["tensorName"]))))
    side = config.input_size
    columns = int(np.ceil(np.sqrt(KNN_EXAMPLES)))
    assert sprite.shape == (columns * side, columns * side, 3)
    np.testing.assert_array_equal(sprite[:side, side:2 * side], test.images[1])  # row-major thumbnails
    np.testing.assert_array_equal(sprite[-side:, -side:], 0)  # the cell after the last image is empty


def test_hparams_lists_the_run_with_its_config_and_final_knn(run):
    config, result, runs_dir = run
    context = _context(runs_dir)
    plugin = hparams_plugin.HParamsPlugin(context)
    post = werkzeug_test.Client(plugin.get_plugin_apps()["/experiment"]).post(
        "/", data=json.dumps({"experimentName": ""}))
    assert post.status_code == 200, post.get_data(as_text=True)
    experiment = json.loads(post.get_data())
    hparams = {info["name"]: info for info in experiment["hparamInfos"]}
    assert {"objective", "arch", "tau", "lr", "batch_norm", "method"} <= set(hparams)
    assert set(hparams["objective"]["domainDiscrete"]) == {"softmax", "nonparametric", "nce"}
    assert [m["name"]["tag"] for m in experiment["metricInfos"]] == ["knn_top1", "loss"]

    request = {"experimentName": "", "startIndex": 0, "sliceSize": 10, "allowedStatuses": ["STATUS_UNKNOWN"],
               "colParams": [{"hparam": "objective"}, {"metric": {"tag": "knn_top1"}}]}
    post = werkzeug_test.Client(plugin.get_plugin_apps()["/session_groups"]).post("/", data=json.dumps(request))
    assert post.status_code == 200, post.get_data(as_text=True)
    (group,) = json.loads(post.get_data())["sessionGroups"]
    assert group["name"] == "tiny"  # the run's row is labelled by its run directory, not by a hash of its values
    assert group["hparams"]["objective"] == "nce" and group["hparams"]["arch"] == "small"
    assert group["hparams"]["tau"] == pytest.approx(config.tau) and group["hparams"]["batch_norm"] is True
    (session,) = group["sessions"]
    assert session["name"] == "tiny/tensorboard"
    knn_metric = next(m for m in session["metricValues"] if m["name"]["tag"] == "knn_top1")
    final_knn = context.multiplexer.Tensors("tiny/tensorboard", "knn_top1")[-1]
    assert int(knn_metric["trainingStep"]) == config.steps
    assert knn_metric["value"] == pytest.approx(float(tf.make_ndarray(final_knn.tensor_proto)))
