"""tfds downloads (issue 32): a status line before one starts, one error line within seconds without a network,
nothing left behind by a failed attempt. Nothing here contacts the network: the connection probe is replaced, the
download is a stand-in, and the probe's own tests and the program's offline run only touch loopback ports."""
import os
import socket
import subprocess
import sys
import time

import pytest
import tensorflow_datasets as tfds

from exemplar_tf import errors
from exemplar_tf.data.sources import SourceError, TFDS_SPLITS, download, load_source

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tree(root):
    """Every file and folder under `root`, relative to it."""
    return sorted(os.path.relpath(os.path.join(folder, name), root)
                  for folder, folders, files in os.walk(root) for name in folders + files)


@pytest.fixture
def user_data_dir(tmp_path):
    """A data_dir that already holds the user's own files: another prepared dataset and manual archives."""
    root = tmp_path / "tfds"
    for path in ("mnist/3.0.1/mnist-train.tfrecord", "downloads/manual/ILSVRC2012_img_val.tar", "notes.txt"):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text("the user's")
    return root


@pytest.fixture
def network(monkeypatch):
    """answer(value): from then on every connection probe answers `value` (False: offline) without touching the
    network; returns the list the probed (host, port) pairs are appended to."""
    probed = []

    def set_answer(answer):
        def probe(host, port, timeout=download.PROBE_TIMEOUT_S):
            probed.append((host, port))
            return answer
        monkeypatch.setattr(download, "can_connect", probe)
        return probed

    return set_answer


def free_loopback_port():
    """A loopback TCP port nothing listens on (bound once by the OS, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- not prepared and offline: one line, within seconds, nothing left behind ---------------------------------------

@pytest.mark.parametrize("name, local", [("stl10", "give the source stl10_binary:<dir> "),
                                         ("cifar10", "give the source folder:<dir> "),
                                         ("caltech101", "give the source folder:<dir> ")])
def test_offline_is_one_error_line_within_seconds(name, local, user_data_dir, network, monkeypatch, capsys):
    probed = network(False)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare",
                        lambda self, **kwargs: pytest.fail("downloads although offline"))
    before = tree(user_data_dir)
    split = TFDS_SPLITS[name][-1]
    start = time.perf_counter()
    with pytest.raises(SourceError) as raised:
        load_source(name, split, data_dir=str(user_data_dir))
    assert time.perf_counter() - start < 5
    message = str(raised.value)
    assert "\n" not in message
    for fragment in (download.DISPLAY_NAMES[name], f"is not in {user_data_dir} ", "no network",
                     "copy a prepared tensorflow-datasets folder to --data_dir", local):
        assert fragment in message, message
    assert probed and all(f"{host}:{port}" in message for host, port in probed)
    assert tree(user_data_dir) == before
    assert "downloading" not in capsys.readouterr().out


def test_the_probe_asks_the_hosts_the_builder_downloads_from(tmp_path, network, monkeypatch):
    for variable in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(variable, raising=False)
    probed = network(False)
    with pytest.raises(SourceError):
        load_source("stl10", "unlabelled", data_dir=str(tmp_path / "tfds"))
    assert probed == [("ai.stanford.edu", 80)]
    assert not (tmp_path / "tfds").exists()


# --- the status line comes before the download; a failed attempt removes what it created ---------------------------

@pytest.mark.parametrize("failure", [ConnectionResetError("connection reset by peer"), KeyboardInterrupt()])
def test_status_line_before_the_download_and_a_failed_attempt_leaves_data_dir_as_it_was(
        failure, user_data_dir, network, monkeypatch, capsys):
    network(True)
    printed_before = []

    def failing_download(self, **kwargs):  # creates what a real attempt does, then fails
        printed_before.append(capsys.readouterr().out)
        partial = user_data_dir / "downloads" / "ai.stanford.edu_acoates_stl10_binaryXYZ.tar.gz.tmp.0123abcd"
        partial.mkdir(parents=True)
        (partial / "stl10_binary.tar.gz").write_bytes(b"\0" * 1000)
        (user_data_dir / "downloads" / "extracted" / "TAR_GZ.stl10_binary").mkdir(parents=True)
        (user_data_dir / "stl10" / "incomplete.ABC123_1.0.0").mkdir(parents=True)
        raise failure

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", failing_download)
    before = tree(user_data_dir)
    with pytest.raises(KeyboardInterrupt if isinstance(failure, KeyboardInterrupt) else SourceError) as raised:
        load_source("stl10", "unlabelled", data_dir=str(user_data_dir))
    assert printed_before == [f"downloading STL-10 (2.6 GB) to {user_data_dir} (once; later runs read it there)\n"]
    assert raised.value is failure or raised.value.__cause__ is failure
    assert tree(user_data_dir) == before


def test_a_new_data_dir_is_removed_whole_after_a_failed_attempt(tmp_path, network, monkeypatch):
    network(True)

    def failing_download(self, **kwargs):
        (tmp_path / "tfds" / "downloads").mkdir(parents=True)
        raise OSError("no route to host")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", failing_download)
    with pytest.raises(SourceError, match="no route to host"):
        load_source("cifar10", "train", data_dir=str(tmp_path / "tfds"))
    assert os.listdir(tmp_path) == []


def test_a_finished_download_keeps_what_it_wrote(tmp_path, network, monkeypatch, capsys):
    network(True)
    archive = tmp_path / "tfds" / "downloads" / "cs.toronto.edu_kriz_cifar-10-binary.tar.gz"

    def download_only(self, **kwargs):  # downloads, prepares nothing: reading it fails afterwards
        archive.parent.mkdir(parents=True)
        archive.write_bytes(b"archive")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", download_only)
    with pytest.raises(SourceError, match="could not load 'cifar10'"):
        load_source("cifar10", "train", data_dir=str(tmp_path / "tfds"))
    assert archive.read_bytes() == b"archive"
    assert capsys.readouterr().out.startswith("downloading CIFAR-10 (170 MB) to ")


def test_imagenet_is_prepared_from_the_manual_archives_without_a_network_check(tmp_path, network, capsys):
    probed = network(False)
    data_dir = tmp_path / "tfds"
    with pytest.raises(SourceError, match="(?i)manual"):  # the real tfds: the archives are missing
        load_source("imagenet2012", "validation", data_dir=str(data_dir))
    assert probed == []
    manual = data_dir / "downloads" / "manual"
    assert capsys.readouterr().out.splitlines()[0] == (  # then tfds's own "Downloading and preparing ..."
        f"preparing ImageNet 2012 from the archives in {manual} into {data_dir} (once; later runs read it there)")
    assert not data_dir.exists()


# --- a prepared dataset is read without a word ---------------------------------------------------------------------

def test_a_prepared_dataset_prints_no_download_line_and_probes_nothing(tmp_path, network, capsys):
    probed = network(False)
    with tfds.testing.mock_data(num_examples=3):
        source = load_source("stl10", "train", data_dir=str(tmp_path))
    assert source.num_examples == 3
    assert probed == []
    assert capsys.readouterr().out == ""


def test_every_downloadable_tfds_source_has_a_known_download():
    assert set(TFDS_SPLITS) - set(download.KNOWN_DOWNLOADS) == {"imagenet2012"}
    assert set(download.DISPLAY_NAMES) == set(TFDS_SPLITS)


# --- the pure parts ------------------------------------------------------------------------------------------------

def test_can_connect_answers_quickly_on_loopback():
    port = free_loopback_port()
    start = time.perf_counter()
    assert not download.can_connect("127.0.0.1", port, timeout=3)
    assert time.perf_counter() - start < 1
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        assert download.can_connect("127.0.0.1", server.getsockname()[1], timeout=3)


def test_can_connect_gives_up_after_its_timeout(monkeypatch):
    def hangs(address, timeout):
        time.sleep(2)
        raise OSError("no answer")

    monkeypatch.setattr(download.socket, "create_connection", hangs)
    start = time.perf_counter()
    assert not download.can_connect("hangs.invalid", 80, timeout=0.2)  # a name lookup that hangs
    assert time.perf_counter() - start < 1


def test_probe_address_follows_proxies(monkeypatch):
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    url = "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz"
    assert download.probe_address(url, proxies={}) == ("ai.stanford.edu", 80)
    assert download.probe_address("https://www.cs.toronto.edu/x.tar.gz", proxies={}) == ("www.cs.toronto.edu", 443)
    assert download.probe_address(url, proxies={"http": "http://proxy.lan:3128"}) == ("proxy.lan", 3128)
    assert download.probe_address(url, proxies={"all": "proxy.lan:8080"}) == ("proxy.lan", 8080)
    monkeypatch.setenv("no_proxy", "stanford.edu")
    assert download.probe_address(url, proxies={"http": "http://proxy.lan:3128"}) == ("ai.stanford.edu", 80)


def test_human_size():
    assert [download.human_size(n) for n in (2_640_397_119, 170_052_171, 137_414_764, 12_000, 999, 0, None)] == [
        "2.6 GB", "170 MB", "137 MB", "12 kB", "999 bytes", "size unknown", "size unknown"]


def test_download_folders_reach_down_to_the_dataset_folder(tmp_path):
    root = str(tmp_path / "tfds")
    downloads = os.path.join(root, "downloads")
    assert download.download_folders(root + os.sep, os.path.join(root, "stl10", "1.0.0")) == [
        root, downloads, os.path.join(downloads, "extracted"), os.path.join(root, "stl10")]
    assert download.download_folders(root, os.path.join(root, "ds", "config", "1.0.0"))[3:] == [
        os.path.join(root, "ds"), os.path.join(root, "ds", "config")]


def test_removed_on_failure_removes_only_what_the_block_created(tmp_path):
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "old.txt").write_text("old")
    folders = [str(tmp_path), str(tmp_path / "kept"), str(tmp_path / "new")]
    with pytest.raises(RuntimeError), download.removed_on_failure(folders):
        (tmp_path / "kept" / "new.txt").write_text("new")
        (tmp_path / "new" / "deep").mkdir(parents=True)
        (tmp_path / "added.txt").write_text("new")
        raise RuntimeError("failed")
    assert tree(tmp_path) == ["kept", os.path.join("kept", "old.txt")]
    with download.removed_on_failure(folders):  # no failure: everything stays
        (tmp_path / "new").mkdir()
    assert (tmp_path / "new").is_dir()


# --- the program, offline ------------------------------------------------------------------------------------------

def test_train_offline_is_one_error_line_and_exit_2(tmp_path):
    """Offline forced through a proxy nobody serves (a closed loopback port): nothing leaves the machine."""
    dead = f"http://127.0.0.1:{free_loopback_port()}"
    env = {**os.environ, "http_proxy": dead, "https_proxy": dead, "HTTP_PROXY": dead, "HTTPS_PROXY": dead,
           "no_proxy": "", "NO_PROXY": ""}
    data_dir = tmp_path / "tfds"
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "exemplar_tf.train", f"--run_dir={tmp_path / 'run'}",
                             "--source=stl10", f"--data_dir={data_dir}", "--knn_source=", "--progress=false"],
                            capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    elapsed = time.perf_counter() - start
    assert result.returncode == errors.EXIT_INPUT_ERROR, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "retrying" not in result.stderr.lower(), result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: STL-10 (tfds stl10) is not in ") and "no network" in last, result.stderr
    assert "give the source stl10_binary:<dir> (" in last and last.endswith(" in place of stl10")
    assert "downloading" not in result.stdout
    assert not data_dir.exists()
    print(f"offline train run: {elapsed:.1f} s")
