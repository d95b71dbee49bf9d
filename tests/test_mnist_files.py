"""Finding, downloading (or not) and validating the four MNIST IDX files."""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from src.data.idx import IdxFormatError, idx_bytes, read_idx, write_idx
from src.data.mnist_files import ALL_FILE_NAMES, MNISTDataError, ensure_mnist_files, load_split, raw_dir
from src.data.synthetic import write_synthetic_mnist
from tests.conftest import held_open_for


@pytest.fixture
def data_dir(tmp_path):
    return write_synthetic_mnist(tmp_path / "data", train_count=50, test_count=20)


@pytest.fixture
def no_download(monkeypatch):
    """Fail the test if torchvision's downloader is reached."""
    import torchvision.datasets

    def forbidden(*args, **kwargs):
        raise AssertionError("the network must not be touched")

    monkeypatch.setattr(torchvision.datasets, "MNIST", forbidden)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_plain_and_gzip(tmp_path, suffix):
    array = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    path = write_idx(tmp_path / f"images{suffix}", array)
    tensor = read_idx(path, expected_ndim=3)
    assert tensor.dtype == torch.uint8
    assert torch.equal(tensor, torch.from_numpy(array))


def test_present_files_never_touch_the_network(data_dir, no_download):
    ensure_mnist_files(data_dir, download=True)  # files present: download=True must not matter
    images, labels = load_split(data_dir, "train")
    assert images.shape == (50, 28, 28) and labels.shape == (50,)


def test_plain_files_take_precedence_and_mixing_is_fine(data_dir, no_download):
    raw = raw_dir(data_dir)
    with gzip.open(raw / "t10k-images-idx3-ubyte.gz") as f:
        plain = bytearray(f.read())
    plain[16:] = bytes(len(plain) - 16)  # the same header, every pixel 0: not what the .gz holds
    (raw / "t10k-images-idx3-ubyte").write_bytes(plain)
    images, labels = load_split(data_dir, "test")  # plain test images beside a .gz of the test labels
    assert len(images) == len(labels) == 20
    assert images.max() == 0  # the plain file was read, not its .gz beside it


@pytest.mark.parametrize("nested", [True, False], ids=["MNIST-raw", "other folder"])
def test_a_data_dir_naming_the_files_own_folder_gets_the_right_advice(data_dir, tmp_path, no_download, nested):
    """Pointing data.data_dir at MNIST/raw/ itself must not send the user to MNIST/raw/MNIST/raw/, nor download."""
    files = raw_dir(data_dir) if nested else shutil.copytree(raw_dir(data_dir), tmp_path / "digits")
    with pytest.raises(MNISTDataError) as info:
        ensure_mnist_files(files, download=True)
    advice = f"Use data.data_dir={data_dir}." if nested else f"Move the files into {files}/MNIST/raw/."
    assert f"data.data_dir={files} holds the four MNIST files itself, but data.data_dir must name" in str(info.value)
    assert advice in str(info.value)


def test_a_data_dir_naming_the_mnist_folder_gets_the_folder_above(data_dir, no_download):
    with pytest.raises(MNISTDataError, match=rf"data.data_dir={data_dir / 'MNIST'} is the MNIST folder itself, but "
                                             rf"data.data_dir must name the folder above MNIST/raw/. Use data.data_dir={data_dir}\.$"):
        ensure_mnist_files(data_dir / "MNIST", download=True)


def test_a_data_folder_this_user_may_not_enter_is_named_as_such(data_dir, monkeypatch):
    """It was reported as a full or read-only disk while writing the run, with advice to put the run elsewhere; the
    folder to open is the first on the way that this user may not enter (here data_dir itself)."""
    from pathlib import Path

    stat = Path.stat

    def no_entry(path, *args, **kwargs):
        if data_dir in path.parents:
            raise PermissionError(13, "Permission denied", str(path))
        return stat(path, *args, **kwargs)

    monkeypatch.setattr(Path, "stat", no_entry)
    monkeypatch.setattr(Path, "is_file", lambda path: no_entry(path) and False)
    folder = raw_dir(data_dir)
    with pytest.raises(MNISTDataError, match=rf"^{folder}/train-images-idx3-ubyte: cannot look for this file \(permission "
                                             rf"denied\)\. Make the folder on the way readable: chmod a\+rx {data_dir}$"):
        load_split(data_dir, "train")


@pytest.mark.parametrize("download", [False, True])
def test_missing_files_explain_what_to_place_where(tmp_path, monkeypatch, download):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(MNISTDataError) as info:
        ensure_mnist_files(tmp_path, download=download)
    message = str(info.value)
    assert str(raw_dir(tmp_path)) in message
    assert all(name in message for name in ALL_FILE_NAMES)
    assert ("download failed" in message) if download else ("data.download=false" in message)


def test_a_failed_download_is_one_line_and_a_stalled_one_times_out(tmp_path, monkeypatch):
    """torchvision sets no timeout (a server that accepts and never answers hung the run at "Downloading MNIST"), and
    its error lists each mirror on lines of its own."""
    import socket

    import torchvision.datasets

    timeouts = []

    def stalled(*args, **kwargs):
        timeouts.append(socket.getdefaulttimeout())
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://a/, got:\n<urlopen error timed "
                           "out>\nTried https://b/, got:\n<urlopen error timed out>\n")

    monkeypatch.setattr(torchvision.datasets, "MNIST", stalled)
    with pytest.raises(MNISTDataError) as info:
        ensure_mnist_files(tmp_path, download=True)
    assert timeouts == [60] and socket.getdefaulttimeout() is None  # given back
    assert str(info.value).splitlines()[0] == (
        f"MNIST files are missing in {raw_dir(tmp_path)} and the download failed (RuntimeError: Error downloading "
        "train-images-idx3-ubyte.gz: Tried https://a/, got: <urlopen error timed out> Tried https://b/, got: <urlopen "
        "error timed out>).")


def fake_torchvision_download(monkeypatch, during=lambda root: None) -> list[str]:
    """torchvision's MNIST replaced by one that writes small files (plain and .gz, as torchvision leaves them) into
    `root`/MNIST/raw/ and then calls `during(root)`; returns the roots it was given."""
    import torchvision.datasets

    roots = []

    def fake_download(root, train, download):
        roots.append(root)
        write_synthetic_mnist(Path(root), train_count=20, test_count=10, gz=False)
        write_synthetic_mnist(Path(root), train_count=20, test_count=10, gz=True)
        during(root)

    monkeypatch.setattr(torchvision.datasets, "MNIST", fake_download)
    return roots


def test_download_is_used_when_files_are_missing(tmp_path, monkeypatch):
    roots = fake_torchvision_download(monkeypatch)
    ensure_mnist_files(tmp_path, download=True)
    assert len(roots) == 1 and len(load_split(tmp_path, "test")[0]) == 10
    # The files moved into MNIST/raw/; the folder the download went to is gone, with torchvision's archives.
    assert sorted(path.name for path in raw_dir(tmp_path).iterdir()) == sorted(ALL_FILE_NAMES)


def test_a_download_shows_no_file_before_it_is_whole(tmp_path, monkeypatch):
    """torchvision wrote into MNIST/raw/ in place: a sweep's parallel jobs, downloading at once on a fresh machine,
    read files another job was still writing."""
    seen_while_downloading = []
    roots = fake_torchvision_download(monkeypatch, during=lambda root: seen_while_downloading.append(
        [path.name for path in raw_dir(tmp_path).iterdir() if path.is_file()]))
    ensure_mnist_files(tmp_path, download=True)
    assert seen_while_downloading == [[]]
    # Downloaded inside MNIST/raw/: the files are moved on its filesystem, were it a link to another disk.
    assert Path(roots[0]).parent == raw_dir(tmp_path)


def test_a_killed_downloads_folder_is_removed_by_the_next_download(tmp_path, monkeypatch):
    """A download killed outright (SIGKILL, out of memory) cannot remove its folder: 65 MB left for good."""
    old, recent = raw_dir(tmp_path) / ".download-old", raw_dir(tmp_path) / ".download-recent"
    for folder in (old, recent):
        (folder / "MNIST" / "raw").mkdir(parents=True)
    os.utime(old, (0, 0))
    fake_torchvision_download(monkeypatch)
    ensure_mnist_files(tmp_path, download=True)
    assert not old.exists() and recent.is_dir()  # the recent one may be another job's, still downloading


def test_a_download_stopped_half_way_leaves_nothing(tmp_path, monkeypatch):
    """Ctrl-C during the download left a truncated file, which the next run took for MNIST."""
    def stopped(root):
        raise KeyboardInterrupt

    fake_torchvision_download(monkeypatch, during=stopped)
    with pytest.raises(KeyboardInterrupt):
        ensure_mnist_files(tmp_path, download=True)
    assert list((tmp_path / "MNIST").iterdir()) == [raw_dir(tmp_path)] and not any(raw_dir(tmp_path).iterdir())


def test_files_another_job_downloaded_meanwhile_are_kept(tmp_path, monkeypatch):
    other_jobs = write_synthetic_mnist(tmp_path / "other", train_count=30, test_count=10, gz=False)

    def another_job_finishes_first(root):
        for name in ALL_FILE_NAMES:
            shutil.copy(raw_dir(other_jobs) / name, raw_dir(tmp_path) / name)

    fake_torchvision_download(monkeypatch, during=another_job_finishes_first)
    ensure_mnist_files(tmp_path, download=True)
    assert len(load_split(tmp_path, "train")[0]) == 30 and list((tmp_path / "MNIST").iterdir()) == [raw_dir(tmp_path)]


def test_downloaded_files_a_scanner_holds_open_on_windows_are_moved_once_let_go(tmp_path, monkeypatch):
    """Windows refuses to rename a file another process has open, and a virus scanner opens each new download."""
    from src.utils import atomic_files

    fake_torchvision_download(monkeypatch)
    monkeypatch.setattr(atomic_files, "FILES_HELD_OPEN_BLOCK_RENAMES", True)
    monkeypatch.setattr(os, "replace", held_open_for(2, os.replace))
    ensure_mnist_files(tmp_path, download=True)
    assert os.replace.calls == len(ALL_FILE_NAMES) + 2
    assert sorted(path.name for path in raw_dir(tmp_path).iterdir()) == sorted(ALL_FILE_NAMES)


def test_truncated_gzip_names_the_file(data_dir):
    path = raw_dir(data_dir) / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(MNISTDataError, match="train-images-idx3-ubyte.gz"):
        load_split(data_dir, "train")


@pytest.mark.parametrize("change, what", [(lambda data: data[:-10], "truncated"),
                                          (lambda data: data + bytes(10), "longer than its header says")])
def test_a_plain_file_of_the_wrong_length_names_the_file_and_sizes(data_dir, change, what):
    raw = raw_dir(data_dir)
    (raw / "train-images-idx3-ubyte.gz").unlink()
    array = np.zeros((50, 28, 28), dtype=np.uint8)
    (raw / "train-images-idx3-ubyte").write_bytes(change(idx_bytes(array)))
    with pytest.raises(MNISTDataError, match=rf"train-images-idx3-ubyte: {what}: header declares shape \(50, 28, 28\)"):
        load_split(data_dir, "train")


def test_wrong_magic_number_is_rejected(tmp_path):
    path = tmp_path / "labels"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(IdxFormatError, match="bad magic number"):
        read_idx(path, expected_ndim=1)


def test_an_idx_file_of_another_element_type_is_rejected(tmp_path):
    """Signed bytes (0x09) or floats (0x0D) of the right shape are not MNIST's unsigned pixels."""
    for type_code in (0x09, 0x0D):
        data = bytearray(idx_bytes(np.zeros((2, 28, 28), dtype=np.uint8)))
        data[2] = type_code
        (tmp_path / "images").write_bytes(bytes(data))
        with pytest.raises(IdxFormatError, match=rf"wrong IDX kind \(type 0x{type_code:02x}, 3 dims\)"):
            read_idx(tmp_path / "images", expected_ndim=3)


def test_swapped_files_are_rejected(data_dir):
    raw = raw_dir(data_dir)
    shutil.copy(raw / "train-labels-idx1-ubyte.gz", raw / "train-images-idx3-ubyte.gz")
    with pytest.raises(MNISTDataError, match="wrong IDX kind"):
        load_split(data_dir, "train")


def test_images_of_another_size_are_rejected(data_dir):
    write_idx(raw_dir(data_dir) / "train-images-idx3-ubyte.gz", np.zeros((50, 32, 32), dtype=np.uint8))  # not MNIST's
    with pytest.raises(MNISTDataError, match=r"train-images-idx3-ubyte.gz: images are \(32, 32\), expected 28×28"):
        load_split(data_dir, "train")


def test_image_and_label_counts_must_agree(data_dir):
    write_idx(raw_dir(data_dir) / "train-labels-idx1-ubyte.gz", np.zeros(49, dtype=np.uint8))
    with pytest.raises(MNISTDataError, match="50 images but .* 49 labels"):
        load_split(data_dir, "train")


def test_labels_outside_0_to_9_are_rejected(data_dir):
    write_idx(raw_dir(data_dir) / "t10k-labels-idx1-ubyte.gz", np.full(20, 10, dtype=np.uint8))
    with pytest.raises(MNISTDataError, match="t10k-labels-idx1-ubyte.gz: labels must be digits 0-9"):
        load_split(data_dir, "test")
