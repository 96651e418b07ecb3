"""What a tensorflow-datasets download needs around it: a status line before it starts, a network check that
answers in seconds (tfds itself retries for minutes offline), and removal of what a failed attempt left in
`data_dir`. Plain Python (no TensorFlow, no tfds): `tfds.py` passes in what the builder knows."""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator

DISPLAY_NAMES = {"stl10": "STL-10", "cifar10": "CIFAR-10", "caltech101": "Caltech-101", "imagenet2012": "ImageNet 2012"}
# The archive each downloadable tfds dataset fetches and its size in bytes (tensorflow-datasets 4.9's checksums):
# the network check's address and the announced size when the builder's own metadata lacks them (an unprepared
# builder knows no download size, and caltech101's checksums also list an old mirror). imagenet2012 is prepared
# from manually downloaded archives and never downloads.
KNOWN_DOWNLOADS = {
    "stl10": ("http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz", 2_640_397_119),
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz", 170_052_171),
    "caltech101": ("https://data.caltech.edu/records/mzrjq-6wc02/files/caltech-101.zip?download=1", 137_414_764),
}
PROBE_TIMEOUT_S = 3.0
DEFAULT_PORTS = {"http": 80, "https": 443}


def human_size(num_bytes: int | None) -> str:
    """`num_bytes` in decimal units as a download page gives them: '2.6 GB', '170 MB', '12 kB'; 'size unknown'
    for None or 0."""
    if not num_bytes:
        return "size unknown"
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.1f} {unit}" if num_bytes < 10 * scale else f"{num_bytes / scale:.0f} {unit}"
    return f"{num_bytes} bytes"


def probe_address(url: str, proxies: dict[str, str] | None = None) -> tuple[str, int]:
    """The (host, port) a download of `url` connects to first: the proxy for its scheme when one is set (in
    `proxies`, default the environment's `http_proxy`/`https_proxy`/`all_proxy`) and the host is not in
    `no_proxy`, else the URL's own host and port."""
    parts = urllib.parse.urlsplit(url)
    proxies = urllib.request.getproxies() if proxies is None else proxies
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    return parts.hostname or "", parts.port or DEFAULT_PORTS.get(parts.scheme, 80)


def can_connect(host: str, port: int, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to host:port opens within `timeout` seconds, name lookup included (a lookup that
    hangs without a network counts as no connection; its thread finishes on its own)."""
    opened = []

    def connect() -> None:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
            opened.append(True)

    thread = threading.Thread(target=connect, name=f"probe {host}:{port}", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(opened)


def network_reaches(addresses: Iterable[tuple[str, int]], timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether any of the (host, port) `addresses` accepts a TCP connection (each tried for `timeout` seconds)."""
    return any(can_connect(host, port, timeout) for host, port in dict.fromkeys(addresses))


def download_line(name: str, num_bytes: int | None, data_dir: str) -> str:
    """The status line printed before tfds downloads dataset `name` into `data_dir`."""
    return (f"downloading {DISPLAY_NAMES.get(name, name)} ({human_size(num_bytes)}) to {data_dir} "
            "(once; later runs read it there)")


def manual_prepare_line(name: str, manual_dir: str, data_dir: str) -> str:
    """The status line printed before tfds prepares dataset `name` from archives the user downloaded by hand."""
    return (f"preparing {DISPLAY_NAMES.get(name, name)} from the archives in {manual_dir} into {data_dir} "
            "(once; later runs read it there)")


def offline_message(name: str, data_dir: str, addresses: Iterable[tuple[str, int]]) -> str:
    """The one-line error for dataset `name`, not prepared in `data_dir`, when none of `addresses` answers."""
    tried = ", ".join(f"{host}:{port}" for host, port in dict.fromkeys(addresses))
    local = ("stl10_binary:<dir> (the original STL-10 binary files)" if name == "stl10"
             else "folder:<dir> (image files, class sub-folders as labels)")
    return (f"{DISPLAY_NAMES.get(name, name)} (tfds {name}) is not in {data_dir} and there is no network to download "
            f"it ({tried} did not answer within {PROBE_TIMEOUT_S:g} s): copy a prepared tensorflow-datasets folder "
            f"to --data_dir, or read a local copy: give the source {local} in place of {name}")


def download_folders(data_dir: str, dataset_dir: str) -> list[str]:
    """The folders a tfds download and prepare writes in: `data_dir`, its `downloads` and `downloads/extracted`,
    and every folder between `data_dir` and the dataset's version folder `dataset_dir` (created last, from a
    temporary sibling)."""
    data_dir = os.path.normpath(data_dir)
    between = []
    parent = os.path.dirname(os.path.normpath(dataset_dir))
    while parent.startswith(data_dir + os.sep):
        between.insert(0, parent)
        parent = os.path.dirname(parent)
    return [data_dir, os.path.join(data_dir, "downloads"), os.path.join(data_dir, "downloads", "extracted"), *between]


def folder_entries(folders: Iterable[str]) -> dict[str, frozenset[str] | None]:
    """What each folder holds now: its entry names, or None for a folder that does not exist."""
    return {folder: frozenset(os.listdir(folder)) if os.path.isdir(folder) else None for folder in folders}


def created_since(before: dict[str, frozenset[str] | None]) -> list[str]:
    """The files and folders that appeared in the folders of `before` (`folder_entries`) since, outermost only: a
    folder that did not exist then is listed itself (removing it removes what it holds), not its entries."""
    created: list[str] = []
    for folder in sorted(before, key=lambda path: path.count(os.sep)):
        if any(folder == path or folder.startswith(path + os.sep) for path in created) or not os.path.isdir(folder):
            continue
        if before[folder] is None:
            created.append(folder)
        else:
            created += [os.path.join(folder, entry) for entry in sorted(set(os.listdir(folder)) - before[folder])]
    return created


def remove_paths(paths: Iterable[str]) -> None:
    """Delete each file or folder tree in `paths`, as far as possible (a cleanup never hides the error it follows)."""
    for path in paths:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.remove(path)


@contextlib.contextmanager
def removed_on_failure(folders: Iterable[str]) -> Iterator[None]:
    """Run the block; if it raises (Ctrl-C included), delete what appeared in `folders` meanwhile — entries that did
    not exist before, and the folders themselves if they did not — then re-raise. What existed stays."""
    before = folder_entries(folders)
    try:
        yield
    except BaseException:
        remove_paths(created_since(before))
        raise
