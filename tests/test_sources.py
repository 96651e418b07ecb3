"""Image sources: tfds (mocked), STL-10 binary files, image folders and the embedded demo — exact pixels, indices
and labels, and errors that name the file."""
import os

import cv2
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from exemplar_tf.data import sources
from exemplar_tf.data.sources import SourceError, load_source


def elements(source):
    return list(source.dataset.as_numpy_iterator())


# --- tensorflow-datasets (mocked) ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name, split, num_classes", [
    ("stl10", "unlabelled", None), ("stl10", "train", 10), ("stl10", "test", 10),
    ("cifar10", "train", 10), ("cifar10", "test", 10), ("caltech101", "train", 102),
    ("imagenet2012", "train", 1000), ("imagenet2012", "validation", 1000),
])
def test_tfds_elements_are_the_tfds_examples_with_an_index(name, split, num_classes, tmp_path):
    with tfds.testing.mock_data(num_examples=7):
        source = load_source(name, split, data_dir=str(tmp_path))
        got = elements(source)
        expected = list(tfds.load(name, split=split, data_dir=str(tmp_path), shuffle_files=False).as_numpy_iterator())
    assert (source.num_examples, source.num_classes) == (7, num_classes)
    assert [e["index"] for e in got] == list(range(7))
    assert source.dataset.element_spec["index"].dtype == tf.int64
    for element, example in zip(got, expected, strict=True):
        assert element["image"].dtype == np.uint8 and element["image"].shape[2] == 3
        np.testing.assert_array_equal(element["image"], example["image"])
        if num_classes is None:
            assert set(element) == {"image", "index"}
        else:
            assert element["label"] == example["label"] and element["label"].dtype == np.int64
    if num_classes:
        assert len(source.class_names) == num_classes


def test_tfds_split_and_fold_errors(tmp_path):
    with pytest.raises(SourceError, match="cifar10 has no split 'unlabelled'"):
        load_source("cifar10", "unlabelled", data_dir=str(tmp_path))
    with pytest.raises(SourceError, match="fold=0 exists only for the STL-10 train split"):
        load_source("cifar10", "train", data_dir=str(tmp_path), fold=0)
    with pytest.raises(SourceError, match="fold=0 exists only"):
        load_source("stl10", "test", data_dir=str(tmp_path), fold=0)
    with pytest.raises(SourceError, match="stl10 folds need the original fold_indices.txt.*stl10_binary"):
        load_source("stl10", "train", data_dir=str(tmp_path), fold=0)


# --- STL-10 binary files -------------------------------------------------------------------------------------------

TRAIN, TEST, UNLABELLED = 12, 3, 4
FOLDS = [[(k + 7) % TRAIN, k, (k + 2) % TRAIN] for k in range(10)]  # listed unsorted, as in the real file


def markers(i):
    """{(y, x, c): value} of the pixels that are not zero in image i."""
    return {(3 + i % 80, 60, 0): 1 + i, (90, 2 + i % 80, 2): 255 - i, (40, 41, 1): 77}


def stl10_record(i):
    """27648 bytes: planes R, G, B; within a plane byte x*96 + y holds pixel (y, x) (column-major)."""
    record = np.zeros(3 * 96 * 96, np.uint8)
    for (y, x, c), value in markers(i).items():
        record[c * 96 * 96 + x * 96 + y] = value
    return record.tobytes()


def expected_image(i):
    image = np.zeros((96, 96, 3), np.uint8)
    for (y, x, c), value in markers(i).items():
        image[y, x, c] = value
    return image


def write_stl10(directory):
    """Train images 0..11 (labels (i % 10) + 1), test 100..102, unlabelled 200..203, and FOLDS."""
    os.makedirs(directory, exist_ok=True)
    files = {
        "train_X.bin": b"".join(stl10_record(i) for i in range(TRAIN)),
        "train_y.bin": bytes((i % 10) + 1 for i in range(TRAIN)),
        "test_X.bin": b"".join(stl10_record(100 + i) for i in range(TEST)),
        "test_y.bin": bytes([10, 1, 5]),
        "unlabeled_X.bin": b"".join(stl10_record(200 + i) for i in range(UNLABELLED)),
    }
    for filename, content in files.items():
        with open(os.path.join(directory, filename), "wb") as file:
            file.write(content)
    with open(os.path.join(directory, "fold_indices.txt"), "w") as file:
        file.write("\n".join(" ".join(map(str, fold)) for fold in FOLDS) + "\n")
    return str(directory)


@pytest.fixture
def stl10_dir(tmp_path):
    return write_stl10(tmp_path / "stl10_binary")


def test_stl10_binary_pixels_land_at_y_x_c_and_labels_start_at_zero(stl10_dir):
    train = load_source(f"stl10_binary:{stl10_dir}", "train")
    got = elements(train)
    assert (train.num_examples, train.num_classes, len(got)) == (TRAIN, 10, TRAIN)
    assert train.class_names[:2] == ("airplane", "bird")
    for i, element in enumerate(got):
        np.testing.assert_array_equal(element["image"], expected_image(i))
        assert (element["index"], element["label"]) == (i, i % 10)
    test = elements(load_source(f"stl10_binary:{stl10_dir}", "test"))
    assert [e["label"] for e in test] == [9, 0, 4]
    np.testing.assert_array_equal(test[2]["image"], expected_image(102))


def test_stl10_binary_unlabelled_has_no_labels(stl10_dir):
    source = load_source(f"stl10_binary:{stl10_dir}", "unlabelled")
    got = elements(source)
    assert (source.num_examples, source.num_classes) == (UNLABELLED, None)
    assert all(set(e) == {"image", "index"} for e in got)
    np.testing.assert_array_equal(got[3]["image"], expected_image(203))


@pytest.mark.parametrize("fold", [0, 6, 9])
def test_stl10_fold_is_the_listed_train_images_in_file_order(stl10_dir, fold):
    source = load_source(f"stl10_binary:{stl10_dir}", "train", fold=fold)
    got = elements(source)
    chosen = sorted(FOLDS[fold])
    assert source.num_examples == len(chosen) == len(got)
    assert [e["index"] for e in got] == [0, 1, 2]
    assert [e["label"] for e in got] == [i % 10 for i in chosen]
    for i, element in zip(chosen, got):
        np.testing.assert_array_equal(element["image"], expected_image(i))


@pytest.mark.parametrize("where", ["stl10_binary", "downloads/extracted/TAR_GZ.stl10_binary.tar.gz/stl10_binary"])
def test_tfds_stl10_folds_come_from_the_original_files_in_data_dir(tmp_path, where):
    write_stl10(tmp_path / where)
    got = elements(load_source("stl10", "train", data_dir=str(tmp_path), fold=3))
    assert [e["label"] for e in got] == [i % 10 for i in sorted(FOLDS[3])]
    np.testing.assert_array_equal(got[0]["image"], expected_image(sorted(FOLDS[3])[0]))


def test_stl10_binary_errors_name_the_file(stl10_dir):
    spec = f"stl10_binary:{stl10_dir}"
    with pytest.raises(SourceError, match="fold_indices.txt: no fold 10"):
        load_source(spec, "train", fold=10)
    with pytest.raises(SourceError, match="no split 'validation'"):
        load_source(spec, "validation")
    with open(os.path.join(stl10_dir, "test_X.bin"), "ab") as file:
        file.write(b"\0" * 5)
    with pytest.raises(SourceError, match=r"test_X.bin: 82949 bytes is not a positive multiple of 27648"):
        load_source(spec, "test")
    with open(os.path.join(stl10_dir, "train_y.bin"), "wb") as file:
        file.write(bytes([1] * 11 + [11]))
    with pytest.raises(SourceError, match=r"train_y.bin: labels must lie in 1..10"):
        load_source(spec, "train")
    os.remove(os.path.join(stl10_dir, "unlabeled_X.bin"))
    with pytest.raises(SourceError, match="unlabeled_X.bin: missing"):
        load_source(spec, "unlabelled")


# --- image folders -------------------------------------------------------------------------------------------------

GRAY = np.arange(4 * 6, dtype=np.uint8).reshape(4, 6) * 10
RGBA = np.dstack([np.full((5, 3), 200), np.full((5, 3), 100), np.arange(15).reshape(5, 3), np.zeros((5, 3))])
DEEP = np.array([[65535, 32896, 256, 255]], np.uint16)  # 16-bit gray -> v >> 8: 255, 128, 1, 0
RGB = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
GIF_PALETTE = [(255, 0, 0), (0, 0, 255), (0, 255, 0)]
GIF_FIRST = np.array([[0, 1, 1], [1, 0, 0]], np.uint8)  # palette indices of the first frame


def write_gif(path):
    frames = []
    for indices in (GIF_FIRST, 2 - GIF_FIRST):
        frame = Image.fromarray(indices, mode="P")
        frame.putpalette([v for colour in GIF_PALETTE for v in colour])
        frames.append(frame)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)


@pytest.fixture
def odd_folder(tmp_path):
    """cat/: gray PNG, RGBA PNG, 16-bit PNG; dog/: 2-frame GIF, JPEG, BMP; plus files and folders to ignore."""
    for name in ("cat", "dog", ".cache"):
        (tmp_path / name).mkdir()
    Image.fromarray(GRAY, mode="L").save(tmp_path / "cat" / "gray.png")
    Image.fromarray(RGBA.astype(np.uint8), mode="RGBA").save(tmp_path / "cat" / "rgba.PNG")
    cv2.imwrite(str(tmp_path / "cat" / "deep.png"), DEEP)
    write_gif(tmp_path / "dog" / "anim.gif")
    Image.fromarray(np.full((16, 16, 3), (30, 140, 220), np.uint8)).save(tmp_path / "dog" / "photo.jpg", quality=95)
    Image.fromarray(RGB).save(tmp_path / "dog" / "pic.bmp")
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    (tmp_path / "dog" / ".DS_Store").write_bytes(b"\0\1\2")
    (tmp_path / "dog" / "._photo.jpg").write_bytes(b"\0\5\26\7 AppleDouble metadata")
    (tmp_path / ".cache" / "thumb.png").write_bytes(b"ignored: hidden folder")
    return tmp_path


def test_folder_decodes_odd_files_to_rgb_uint8_with_sorted_class_labels(odd_folder):
    source = load_source(f"folder:{odd_folder}", "train")
    got = elements(source)
    assert (source.num_examples, source.num_classes, source.class_names) == (6, 2, ("cat", "dog"))
    assert [(e["index"], e["label"]) for e in got] == [(0, 0), (1, 0), (2, 0), (3, 1), (4, 1), (5, 1)]
    deep, gray, rgba, gif, jpeg, bmp = (e["image"] for e in got)  # sorted file names within each class
    assert all(e["image"].dtype == np.uint8 and e["image"].shape[2] == 3 for e in got)
    np.testing.assert_array_equal(deep[..., 0], [[255, 128, 1, 0]])
    np.testing.assert_array_equal(gray, np.repeat(GRAY[..., None], 3, axis=2))
    np.testing.assert_array_equal(rgba, RGBA[..., :3].astype(np.uint8))
    np.testing.assert_array_equal(gif, np.array(GIF_PALETTE, np.uint8)[GIF_FIRST])
    assert jpeg.shape == (16, 16, 3) and np.abs(jpeg.astype(int) - (30, 140, 220)).max() <= 3
    np.testing.assert_array_equal(bmp, RGB)


def test_flat_folder_is_unlabelled(tmp_path):
    for i in range(3):
        Image.fromarray(np.full((4, 5, 3), 10 * i, np.uint8)).save(tmp_path / f"{i}.png")
    source = load_source(f"folder:{tmp_path}", "train")
    got = elements(source)
    assert (source.num_examples, source.num_classes, source.class_names) == (3, None, None)
    assert [set(e) for e in got] == [{"image", "index"}] * 3
    assert [int(e["image"][0, 0, 0]) for e in got] == [0, 10, 20]


def test_split_folders_share_one_class_list(tmp_path):
    for split, classes in (("train", ("ant", "bee")), ("test", ("bee", "cow"))):
        for name in classes:
            (tmp_path / split / name).mkdir(parents=True)
            Image.fromarray(np.zeros((3, 3, 3), np.uint8)).save(tmp_path / split / name / "x.png")
    test = load_source(f"folder:{tmp_path}", "test")
    assert test.class_names == ("ant", "bee", "cow")
    assert [e["label"] for e in elements(test)] == [1, 2]
    assert [e["label"] for e in elements(load_source(f"folder:{tmp_path}", "train"))] == [0, 1]
    with pytest.raises(SourceError, match=f"{tmp_path}: has split folders test, train but no 'unlabelled'"):
        load_source(f"folder:{tmp_path}", "unlabelled")


def test_a_folder_without_split_folders_is_the_same_images_for_train_and_test(tmp_path):
    """A score of test images against training images must not read one set twice: a class folder without train/
    and test/ sub-folders is refused as a pair, a folder with them (or a link to it, or another source) is not."""
    for name in ("ant", "bee"):
        (tmp_path / "flat" / name).mkdir(parents=True)
        (tmp_path / "split" / "train" / name).mkdir(parents=True)
        (tmp_path / "split" / "test" / name).mkdir(parents=True)
    os.symlink(tmp_path / "flat", tmp_path / "link")
    flat, link, split = (f"folder:{tmp_path / name}" for name in ("flat", "link", "split"))
    problem = sources.same_images_problem(flat, "train", link, "test")
    assert problem == (f"{flat} split 'train' and {link} split 'test' are the same images ({tmp_path / 'flat'} has "
                       f"no train/ and test/ folders), so the test would score the training images themselves; give a "
                       f"folder with train/ and test/ sub-folders")
    assert sources.same_images_problem(split, "train", split, "test") is None
    assert sources.same_images_problem(flat, "train", split, "test") is None
    assert sources.same_images_problem("cifar10", "train", "cifar10", "test") is None
    assert sources.same_images_problem(split, "train", split, "val") is None  # no val/: its loading says so


def test_spec_parts_compare_locations_as_real_paths(tmp_path, monkeypatch):
    """Two specs are one source when kind and real location match: `~`, a link and a trailing slash name the same
    folder; a tfds name has no location; another kind or folder is another source."""
    (tmp_path / "data").mkdir()
    os.symlink(tmp_path / "data", tmp_path / "link")
    monkeypatch.setenv("HOME", str(tmp_path))
    real = ("folder", os.path.realpath(tmp_path / "data"))
    assert sources.spec_parts("folder:~/data") == real
    assert sources.spec_parts(f"folder:{tmp_path / 'link'}/") == real
    assert sources.spec_parts(f"stl10_binary:{tmp_path / 'data'}") == ("stl10_binary", real[1])
    assert sources.spec_parts("cifar10") == ("cifar10", "")
    assert sources.spec_parts(f"folder:{tmp_path}") != real


def test_two_sources_that_number_their_classes_differently_are_refused_as_a_pair(tmp_path):
    """Label i must be one class in the training and the test images: a test folder without a class before others
    is refused as a pair; one without the last classes, one with extra classes after the training ones, two splits
    of one folder (numbered together), equal class folders and unlabelled sources are not."""
    image = Image.fromarray(np.zeros((8, 8, 3), np.uint8))
    for folder, names in (("all", ("cat", "dog", "fox")), ("no_dog", ("cat", "fox")), ("no_fox", ("cat", "dog")),
                          ("more", ("cat", "dog", "fox", "owl")), ("split/train", ("cat", "dog")),
                          ("split/test", ("fox",))):
        for name in names:
            (tmp_path / folder / name).mkdir(parents=True)
            image.save(tmp_path / folder / name / "0.png")
    (tmp_path / "flat").mkdir()
    image.save(tmp_path / "flat" / "0.png")
    every, no_dog, no_fox, more, split, flat = (f"folder:{tmp_path / name}"
                                                 for name in ("all", "no_dog", "no_fox", "more", "split", "flat"))
    assert sources.class_names_problem(every, "train", no_dog, "test") == (
        f"{every} split 'train' and {no_dog} split 'test' number their classes differently (label 1 is 'dog' in the "
        f"training images and 'fox' in the test images), so a test image would be scored against another class; "
        f"give one folder with train/ and test/ sub-folders (numbered over the classes of both)")
    assert "(label 1 is 'fox' in the training images and 'dog'" in sources.class_names_problem(no_dog, "train",
                                                                                                 every, "test")
    for test in (no_fox, more, every):
        assert sources.class_names_problem(every, "train", test, "test") is None, test
    assert sources.class_names_problem(split, "train", split, "test") is None  # fox is 2 in both
    assert sources.class_names_problem(every, "train", flat, "test") is None  # unlabelled: nothing to compare


def test_folder_layout_errors_name_the_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(SourceError, match=f"{tmp_path / 'empty'}: no image files"):
        load_source(f"folder:{tmp_path / 'empty'}", "train")
    (tmp_path / "mixed" / "cls").mkdir(parents=True)
    Image.fromarray(np.zeros((3, 3, 3), np.uint8)).save(tmp_path / "mixed" / "loose.png")
    with pytest.raises(SourceError, match="mixed: has both image files"):
        load_source(f"folder:{tmp_path / 'mixed'}", "train")
    with pytest.raises(SourceError, match="is not a folder"):
        load_source(f"folder:{tmp_path / 'absent'}", "train")


def test_a_file_that_is_not_an_image_is_named_when_loading(odd_folder):
    (odd_folder / "dog" / "fake.jpg").write_text("<html>404</html>")
    with pytest.raises(SourceError, match=r"dog/fake.jpg: not a PNG, JPEG, GIF or BMP image"):
        load_source(f"folder:{odd_folder}", "train")
    (odd_folder / "dog" / "fake.jpg").write_bytes(b"")
    with pytest.raises(SourceError, match=r"dog/fake.jpg: empty file"):
        load_source(f"folder:{odd_folder}", "train")


@pytest.mark.parametrize("broken", ["cat/deep.png", "dog/pic.bmp"])  # first file of a class; the very last file
def test_a_truncated_image_stops_iteration_with_its_name(odd_folder, broken):
    path = odd_folder / broken
    path.write_bytes(path.read_bytes()[:40])
    source = load_source(f"folder:{odd_folder}", "train")
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"cannot read or decode image file.*{broken}"):
        elements(source)


def test_check_min_size_names_the_image():
    sources.check_min_size((32, 40), 32, "a.png")
    with pytest.raises(SourceError, match=r"b.png: image is 20×40, smaller than the 32×32 needed"):
        sources.check_min_size((20, 40), 32, "b.png")


# --- embedded demo and names ---------------------------------------------------------------------------------------

def test_demo_is_the_unlabelled_skimage_photographs():
    source = load_source("demo", "train")
    got = elements(source)
    assert (source.num_examples, source.num_classes, len(got)) == (len(sources.DEMO_PHOTOGRAPHS), None, 15)
    assert [e["index"] for e in got] == list(range(15))
    assert all(e["image"].dtype == np.uint8 and max(e["image"].shape[:2]) == 320 for e in got)
    assert got[0]["image"].shape == (320, 320, 3)  # astronaut, 512x512
    assert got[sources.DEMO_PHOTOGRAPHS.index("coins")]["image"].shape == (252, 320, 3)  # gray 303x384 -> RGB
    assert "label" not in got[0]


def test_demo_labelled_crops_come_from_disjoint_halves(monkeypatch):
    left_dark = tuple(np.concatenate([np.zeros((100, 150, 3), np.uint8), np.full((100, 150, 3), 255, np.uint8)], 1)
                      for _ in range(2))
    monkeypatch.setattr(sources.demo, "demo_photographs", lambda: left_dark)
    train_crops, train_labels = sources.demo_crops("train")
    test_crops, _ = sources.demo_crops("test")
    assert train_crops.shape == (2 * 40, 64, 64, 3) and test_crops.shape == (2 * 20, 64, 64, 3)
    assert train_crops.max() == 0 and test_crops.min() == 255
    np.testing.assert_array_equal(train_labels[:4], [0, 1, 0, 1])


def test_demo_labelled_is_deterministic_and_balanced():
    train = load_source("demo_labelled", "train")
    first, again = elements(train), elements(load_source("demo_labelled", "train"))
    test = elements(load_source("demo_labelled", "test"))
    assert (train.num_examples, len(test), train.num_classes) == (600, 300, 15)
    assert train.class_names == sources.DEMO_PHOTOGRAPHS
    np.testing.assert_array_equal(np.stack([e["image"] for e in first]), np.stack([e["image"] for e in again]))
    assert np.bincount([e["label"] for e in first]).tolist() == [40] * 15
    assert [e["label"] for e in test[:15]] == list(range(15))
    assert first[0]["image"].shape == (64, 64, 3)


@pytest.mark.parametrize("name, split, message", [
    ("imagenet", "train", "unknown source 'imagenet'"),
    ("folder:", "train", "expected folder:<dir>"),
    ("demo", "test", "demo has no split 'test'"),
    ("demo_labelled", "train", "fold=1 exists only"),
])
def test_bad_names_and_splits(name, split, message):
    with pytest.raises(SourceError, match=message):
        load_source(name, split, fold=1 if name == "demo_labelled" else None)


@pytest.mark.parametrize("total, limit, expected", [(10, 3, [0, 3, 6]), (10, 5, [0, 2, 4, 6, 8]), (10, 0, list(range(10))),
                                                    (10, 12, list(range(10))), (9, 4, [0, 2, 4, 6])])
def test_spread_subset_keeps_evenly_spaced_examples(total, limit, expected):
    subset, count = sources.spread_subset(tf.data.Dataset.range(total), total, limit)
    assert list(subset.as_numpy_iterator()) == expected and count == len(expected)


@pytest.mark.parametrize("total, limit", [(50_000, 40_000), (50_000, 5_000), (7, 6), (1_281_167, 100_000)])
def test_spread_positions_return_exactly_the_number_asked_evenly_spread(total, limit):
    positions = sources.spread_positions(total, limit)
    gaps = np.diff(positions)
    assert len(positions) == limit and len(np.unique(positions)) == limit
    assert positions[0] == 0 and positions[-1] < total and gaps.min() >= total // limit and gaps.max() <= -(-total // limit)
