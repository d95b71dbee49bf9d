"""Find MNIST's four IDX files in torchvision's layout, downloading them only when needed and allowed."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

import torch

from src.data.idx import IdxFormatError, read_idx
from src.errors import UserInputError
from src.utils.atomic_files import retried_while_held_open

log = logging.getLogger(__name__)

# split -> (images file, labels file), as named by the original distribution and torchvision.
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
ALL_FILE_NAMES = [name for pair in MNIST_FILES.values() for name in pair]
DOWNLOAD_TIMEOUT_SECONDS = 60  # without a byte from the server, per connection and read
STALE_DOWNLOAD_SECONDS = 24 * 3600  # a download folder older than this was left by a killed run


class MNISTDataError(UserInputError):
    """The MNIST files are missing, unreadable or inconsistent."""


def raw_dir(data_dir: str | Path) -> Path:
    return Path(data_dir).expanduser() / "MNIST" / "raw"


def find_file(folder: Path, name: str) -> Path | None:
    """The plain file if present, else its `.gz`; None when neither exists."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        try:
            if candidate.is_file():
                return candidate
        except PermissionError as err:  # a folder on the way that this user may not enter
            raise MNISTDataError(f"{candidate}: cannot look for this file (permission denied). Make the folder on the "
                                 f"way readable: chmod a+rx {_first_closed_folder(folder)}") from err
    return None


def missing_files(data_dir: str | Path) -> list[str]:
    folder = raw_dir(data_dir)
    return [name for name in ALL_FILE_NAMES if find_file(folder, name) is None]


def _first_closed_folder(folder: Path) -> Path:
    """The first folder on the way to `folder` whose contents this user may not look into."""
    for inside in [*reversed(folder.parents), folder]:
        try:
            inside.stat()
        except PermissionError:
            return inside.parent
        except OSError:
            break
    return folder


def folder_above_mnist_raw(folder: str | Path) -> Path | None:
    """The data folder meant, when `folder` is the MNIST/raw/ or MNIST/ folder that holds the four files (the usual
    slip); else None."""
    given = Path(folder).expanduser()
    if given.parts[-2:] == ("MNIST", "raw") and all(find_file(given, name) for name in ALL_FILE_NAMES):
        return given.parent.parent
    if given.name == "MNIST" and all(find_file(given / "raw", name) for name in ALL_FILE_NAMES):
        return given.parent
    return None


def ensure_mnist_files(data_dir: str | Path, download: bool) -> None:
    """Make sure the four files exist under `data_dir/MNIST/raw`; touch the network only if some are missing."""
    missing = missing_files(data_dir)
    if not missing:
        return
    given = Path(data_dir).expanduser()
    if given.is_file():  # a data file's path given, say: the download would fail on it with a confusing error
        raise MNISTDataError(f"data.data_dir={data_dir} is a file; it must name a folder: the one that holds "
                             "MNIST/raw/ (downloaded into it if missing).")
    if all(find_file(given, name) for name in ALL_FILE_NAMES):  # data.data_dir named the raw folder itself
        above = folder_above_mnist_raw(given)
        raise MNISTDataError(
            f"data.data_dir={data_dir} holds the four MNIST files itself, but data.data_dir must name the folder above "
            "MNIST/raw/. "
            + (f"Use data.data_dir={above}." if above else f"Move the files into {raw_dir(data_dir)}/.")
        )
    if given.name == "MNIST" and folder_above_mnist_raw(given):
        raise MNISTDataError(f"data.data_dir={data_dir} is the MNIST folder itself, but data.data_dir must name the "
                             f"folder above MNIST/raw/. Use data.data_dir={given.parent}.")
    reason = "downloading is disabled (data.download=false)"
    if download:
        log.info("Downloading MNIST into %s", raw_dir(data_dir))
        previous_timeout = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_SECONDS)  # torchvision sets none: a stalled connection waited forever
        try:
            _download(data_dir)
        except Exception as err:  # any network/HTTP/checksum failure: the message below says what to do
            reason = f"the download failed ({type(err).__name__}: {' '.join(str(err).split())})"  # its lines as one
        finally:
            socket.setdefaulttimeout(previous_timeout)
        missing = missing_files(data_dir)
        if not missing:
            return
    folder = raw_dir(data_dir)
    raise MNISTDataError(
        f"MNIST files are missing in {folder} and {reason}.\n"
        f"  Missing: {', '.join(missing)}\n"
        f"  To work offline, put these four files (plain or .gz) into {folder}/:\n"
        + "".join(f"    {name}[.gz]\n" for name in ALL_FILE_NAMES)
        + "  or point data.data_dir=<dir> at a folder that has MNIST/raw/ with them."
    )


def _download(data_dir: str | Path) -> None:
    """torchvision's download into a folder of this process's own, then each file moved into MNIST/raw/ whole.
    torchvision writes and unpacks in place: the parallel jobs of a sweep on a fresh machine, all downloading at once,
    read files another job was still writing, and a download stopped half-way left a truncated file behind."""
    from torchvision.datasets import MNIST

    folder = raw_dir(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for left in folder.glob(".download-*"):  # a killed download's (SIGKILL, out of memory): 65 MB each
        with contextlib.suppress(OSError):
            if time.time() - left.stat().st_mtime > STALE_DOWNLOAD_SECONDS:
                shutil.rmtree(left)
    # Inside MNIST/raw/, so the moves stay on its filesystem (MNIST/raw/ may be a link to another disk).
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=folder))
    try:
        MNIST(root=str(staging), train=True, download=True)
        for name in ALL_FILE_NAMES:
            fetched = staging / "MNIST" / "raw" / name
            if not fetched.is_file() or find_file(folder, name):
                continue  # a job beside this one put it there meanwhile
            try:
                retried_while_held_open(lambda: os.replace(fetched, folder / name))  # a scanner checks new files
            except OSError:
                if not find_file(folder, name):  # else another job's copy, open on Windows, refused the replace
                    raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def labels_record(labels: torch.Tensor) -> dict:
    """What checkpoints record of the train file: its image count and a digest of its labels, which differ for other
    data (Fashion-MNIST, a subset) and not for the same files moved."""
    digest = hashlib.sha256(labels.to(torch.uint8).numpy().tobytes()).hexdigest()
    return {"images": len(labels), "labels_sha256": digest[:16]}


def train_file_record(data_dir: str | Path) -> dict | None:
    """labels_record of the train file in `data_dir` (its labels file alone is read); None if it is missing or
    unreadable (the run reports that where it reads the data)."""
    path = find_file(raw_dir(data_dir), MNIST_FILES["train"][1])
    try:
        return labels_record(read_idx(path, expected_ndim=1)) if path else None
    except IdxFormatError:
        return None


def load_split(data_dir: str | Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Read one split as (uint8 images N×28×28, int64 labels N), checking that the two files agree."""
    folder = raw_dir(data_dir)
    images_name, labels_name = MNIST_FILES[split]
    images_path, labels_path = find_file(folder, images_name), find_file(folder, labels_name)
    if images_path is None or labels_path is None:
        ensure_mnist_files(data_dir, download=False)  # raises with the full explanation
    try:
        images = read_idx(images_path, expected_ndim=3)
        labels = read_idx(labels_path, expected_ndim=1)
    except IdxFormatError as err:
        raise MNISTDataError(str(err)) from err
    if len(images) == 0:  # a valid header of 0 images: testing on it would fail only after the training
        raise MNISTDataError(f"{images_path}: holds no images. It is not the MNIST {split} file: download or copy it "
                             "again.")
    if images.shape[1:] != (28, 28):
        raise MNISTDataError(f"{images_path}: images are {tuple(images.shape[1:])}, expected 28×28.")
    if len(images) != len(labels):
        raise MNISTDataError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels; "
            "the two files must come from the same split."
        )
    if len(labels) and int(labels.max()) > 9:
        raise MNISTDataError(f"{labels_path}: labels must be digits 0-9, found {int(labels.max())}.")
    return images, labels.long()
