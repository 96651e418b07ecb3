"""Bad user input ends in one stderr line naming the file and exit status 2, not a traceback; --skip_bad_images
leaves unreadable and too-small image files out, with dense indices, and lists them in the run directory."""
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from exemplar_tf import errors
from exemplar_tf.augment import preview
from exemplar_tf.data.sources import SourceError, load_source
from exemplar_tf.evaluation import knn, retrieval, savedmodel
from exemplar_tf.matching import images as match_images
from exemplar_tf.serving import runs
from exemplar_tf.training import inputs, loop
from exemplar_tf.training.config import TrainConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNDECODABLE = "cannot be read or decoded (corrupt, truncated or unsupported image file)"
NOT_AN_IMAGE = "not a PNG, JPEG, GIF or BMP image"


def write_image(path, height, width, value):
    Image.fromarray(np.full((height, width, 3), value, np.uint8)).save(path, quality=95)


def write_truncated_jpeg(path):
    write_image(path, 40, 40, 0)
    path.write_bytes(path.read_bytes()[:200])  # the JPEG header survives, the scan data does not


@pytest.fixture
def bad_folder(tmp_path):
    """cat/: a1 40×40 (value 10), a2 truncated JPEG, a3 40×48 (30); dog/: b1 20×40 (too small for 32),
    b2 40×40 (50), b3.png holding text. Returns (folder, {name: path})."""
    folder = tmp_path / "images"
    for name in ("cat", "dog"):
        (folder / name).mkdir(parents=True)
    paths = {name: folder / {"a": "cat", "b": "dog"}[name[0]] / f"{name}.{ext}"
             for name, ext in (("a1", "jpg"), ("a2", "jpg"), ("a3", "png"), ("b1", "png"), ("b2", "jpg"),
                               ("b3", "png"))}
    write_image(paths["a1"], 40, 40, 10)
    write_truncated_jpeg(paths["a2"])
    write_image(paths["a3"], 40, 48, 30)
    write_image(paths["b1"], 20, 40, 90)
    write_image(paths["b2"], 40, 40, 50)
    paths["b3"].write_text("<html>404 not found</html>")
    return folder, {name: str(path) for name, path in paths.items()}


def elements(source):
    return list(source.dataset.as_numpy_iterator())


# --- the folder source ---------------------------------------------------------------------------------------------

def test_folder_errors_name_the_first_bad_file_and_count_the_others(bad_folder):
    folder, paths = bad_folder
    with pytest.raises(SourceError, match=f"^{paths['b3']}: {NOT_AN_IMAGE}"):
        load_source(f"folder:{folder}", "train")
    with pytest.raises(SourceError) as error:
        load_source(f"folder:{folder}", "train", min_size=32)
    assert str(error.value) == (f"{paths['b1']}: image is 20×40, smaller than the 32×32 needed "
                                "(and 1 more bad image files)")
    os.remove(paths["b3"])
    assert load_source(f"folder:{folder}", "train", min_size=20).num_examples == 5


def test_skip_bad_images_keeps_the_good_files_with_dense_indices_and_lists_the_rest(bad_folder):
    folder, paths = bad_folder
    source = load_source(f"folder:{folder}", "train", min_size=32, skip_bad_images=True)
    got = elements(source)
    assert source.num_examples == 3 and source.num_classes == 2
    assert [int(e["index"]) for e in got] == [0, 1, 2]
    assert [int(e["label"]) for e in got] == [0, 0, 1]
    assert [int(np.median(e["image"])) for e in got] == [10, 30, 50]  # a1, a3, b2
    assert [e["image"].shape for e in got] == [(40, 40, 3), (40, 48, 3), (40, 40, 3)]
    assert [path for path, _ in source.skipped] == [paths["a2"], paths["b1"], paths["b3"]]
    reasons = [reason for _, reason in source.skipped]
    assert reasons[0] == UNDECODABLE
    assert reasons[1] == "image is 20×40, smaller than the 32×32 needed"
    assert reasons[2].startswith(NOT_AN_IMAGE)


def test_skip_bad_images_refuses_a_folder_with_no_usable_file(tmp_path):
    write_truncated_jpeg(tmp_path / "a.jpg")
    write_image(tmp_path / "b.png", 8, 8, 0)
    with pytest.raises(SourceError, match=f"{tmp_path}: none of its 2 image files can be used .*a.jpg"):
        load_source(f"folder:{tmp_path}", "train", min_size=32, skip_bad_images=True)


def test_an_undecodable_file_found_while_reading_gives_a_one_line_message_naming_it(bad_folder):
    folder, paths = bad_folder
    os.remove(paths["b3"])
    source = load_source(f"folder:{folder}", "train")
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        elements(source)
    assert errors.user_error_message(error.value) == f"{paths['a2']}: {UNDECODABLE}"
    assert errors.user_error_message(tf.errors.InvalidArgumentError(None, None, "a bug, not a file")) is None


# --- the shared program wrapper ------------------------------------------------------------------------------------

def raising(error):
    def main(argv):
        raise error
    return main


@pytest.mark.parametrize("error, line", [
    (errors.InputError("/data/x.png: image is 20×40, smaller than the 32×32 needed"),
     "Error: /data/x.png: image is 20×40, smaller than the 32×32 needed"),
    (FileNotFoundError(2, "No such file or directory", "/runs/x/flags.cfg"),
     "Error: /runs/x/flags.cfg: No such file or directory"),
    (FileNotFoundError("no checkpoint in /runs/x/checkpoints"), "Error: no checkpoint in /runs/x/checkpoints"),
])
def test_call_main_turns_user_errors_into_one_line_and_status_2(capsys, error, line):
    assert errors.call_main(raising(error), ["prog"]) == errors.EXIT_INPUT_ERROR
    assert capsys.readouterr().err == line + "\n"


def test_call_main_keeps_tracebacks_for_bugs_and_when_verbose(capsys):
    with pytest.raises(KeyError):
        errors.call_main(raising(KeyError("arch")), ["prog"])
    with pytest.raises(ValueError):  # a plain ValueError is not known to be the user's
        errors.call_main(raising(ValueError("shapes do not match")), ["prog"])
    with pytest.raises(errors.InputError):
        errors.call_main(raising(errors.InputError("x.png: bad")), ["prog"], verbose=True)
    assert errors.call_main(lambda argv: None, ["prog"]) == 0
    assert errors.call_main(lambda argv: 3, ["prog"]) == 3
    assert capsys.readouterr().err == ""


# --- each program's library entry point raises a user error naming the path ----------------------------------------

def test_program_entry_points_name_the_bad_path(tmp_path, bad_folder):
    folder, paths = bad_folder
    with pytest.raises(errors.InputError, match=f"{tmp_path / 'nothing'}: no such SavedModel folder"):
        savedmodel.SavedModelFeatures(str(tmp_path / "nothing"))
    with pytest.raises(errors.InputError, match=f"{tmp_path}: not a SavedModel folder"):
        savedmodel.SavedModelFeatures(str(tmp_path))
    with pytest.raises(errors.InputError, match=f"{tmp_path / 'ckpt'}: no training checkpoint"):
        knn.read_memory_bank(str(tmp_path / "ckpt"))
    with pytest.raises(FileNotFoundError) as error:
        runs.export_run(str(tmp_path / "run"))
    assert errors.user_error_message(error.value) == f"{tmp_path / 'run' / 'flags.cfg'}: No such file or directory"
    with pytest.raises(SourceError, match=f"^{paths['b3']}: {NOT_AN_IMAGE}"):
        retrieval.open_collection(str(folder), "train")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "x.jpg").write_text("not a jpeg")
    with pytest.raises(errors.InputError, match=f"{tmp_path / 'flat' / 'x.jpg'}: not an image OpenCV can read"):
        match_images.folder_images(str(tmp_path / "flat"))
    os.remove(paths["b3"])
    with pytest.raises(SourceError, match=f"^{paths['b1']}: image is 20×40, smaller than the 32×32 needed"):
        preview.write_preview(str(tmp_path / "p.png"), source=f"folder:{folder}", num_seeds=2, patch_size=32)


def test_training_data_with_skip_bad_images_has_one_instance_per_good_file(tmp_path, bad_folder):
    folder, paths = bad_folder
    config = TrainConfig(run_dir=str(tmp_path / "run"), source=f"folder:{folder}", method="npid", arch="small",
                         objective="nce", nce_m=2, batch_norm=True, image_size=16, batch_size=2,
                         skip_bad_images=True)
    data = inputs.training_data(config)
    assert data.num_instances == 4
    assert [path for path, _ in data.skipped] == [paths["a2"], paths["b3"]]  # npid: small images are fine
    rows = sorted(int(e["index"]) for e in data.instances().as_numpy_iterator())
    assert rows == [0, 1, 2, 3]


# --- the programs themselves ---------------------------------------------------------------------------------------

def run_program(module, *args, timeout=600):
    return subprocess.run([sys.executable, "-m", f"exemplar_tf.{module}", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def assert_one_line_error(result, *fragments):
    assert result.returncode == errors.EXIT_INPUT_ERROR, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: ") and all(fragment in last for fragment in fragments), result.stderr


TRAIN_TINY = ("--method=exemplar", "--arch=small", "--objective=softmax", "--num_seeds=6", "--seeds_per_image=2",
              "--batch_size=4", "--progress=false")


def test_train_names_an_undecodable_jpeg(tmp_path, bad_folder):
    folder, paths = bad_folder
    os.remove(paths["b3"])
    os.remove(paths["b1"])
    failed = run_program("train", f"--source=folder:{folder}", f"--run_dir={tmp_path / 'run'}", "--steps=2",
                         f"--export_base={tmp_path / 'sm'}", *TRAIN_TINY)
    assert_one_line_error(failed, paths["a2"], UNDECODABLE)
    assert not (tmp_path / "sm").exists()


def test_record_skipped_lists_path_and_reason_per_line(tmp_path):
    skipped = (("/d/a.jpg", UNDECODABLE), ("/d/b.png", "image is 20×40, smaller than the 32×32 needed"))
    assert loop.record_skipped(str(tmp_path), skipped) == (
        f"Skipped 2 unreadable or too-small image files, listed in {tmp_path / 'skipped_images.txt'}")
    assert (tmp_path / "skipped_images.txt").read_text() == (
        f"/d/a.jpg\t{UNDECODABLE}\n/d/b.png\timage is 20×40, smaller than the 32×32 needed\n")
    assert loop.record_skipped(str(tmp_path), ()) == "Skipped 0 unreadable or too-small image files"
    assert (tmp_path / "skipped_images.txt").read_text() == ""


@pytest.mark.slow
def test_train_with_skip_bad_images_trains_on_the_rest_and_says_so(tmp_path, bad_folder):
    folder, paths = bad_folder
    os.remove(paths["b3"])
    run_dir = tmp_path / "run"
    done = run_program("train", f"--source=folder:{folder}", f"--run_dir={run_dir}", "--steps=2", "--skip_bad_images",
                       f"--export_base={tmp_path / 'sm'}", *TRAIN_TINY)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"Skipped 2 unreadable or too-small image files, listed in {run_dir / 'skipped_images.txt'}" in done.stdout
    lines = (run_dir / "skipped_images.txt").read_text().splitlines()
    assert lines == [f"{paths['a2']}\t{UNDECODABLE}", f"{paths['b1']}\timage is 20×40, smaller than the 32×32 needed"]


@pytest.mark.slow
@pytest.mark.parametrize("module, args, fragments", [
    ("evaluate", ["--savedmodel={tmp}/none", "--dataset=demo_labelled"], ["{tmp}/none: no such SavedModel folder"]),
    ("knn", ["--savedmodel={tmp}/none", "--train=demo_labelled", "--test=demo_labelled"],
     ["{tmp}/none: no such SavedModel folder"]),
    ("retrieve", ["--savedmodel={tmp}", "--index={folder}", "--queries={folder}", "--out={tmp}/out"],
     ["{tmp}: not a SavedModel folder"]),
    ("export", ["--run_dir={tmp}/none"], ["{tmp}/none/flags.cfg: No such file or directory"]),
    ("match", ["--images={folder}/dog", "--num_images=3", "--out_dir={tmp}/match"],
     ["{folder}/dog/b3.png: not an image OpenCV can read"]),
    ("preview", ["--source=folder:{folder}/dog", "--num_seeds=1", "--out={tmp}/p.png"],
     ["{folder}/dog/b1.png: image is 20×40, smaller than the 32×32 needed"]),
])
def test_every_program_prints_one_line_naming_the_path(tmp_path, bad_folder, module, args, fragments):
    folder, _ = bad_folder
    fill = dict(tmp=tmp_path, folder=folder)
    result = run_program(module, *(arg.format(**fill) for arg in args))
    assert_one_line_error(result, *(fragment.format(**fill) for fragment in fragments))
