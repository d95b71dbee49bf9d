"""Result files written whole or not at all: a crash or a full disk never leaves half a file in place of a good one.

Each file is written under a temporary name in its own folder, then renamed over the target. The rename is atomic
only within one filesystem, which is why the temporary file never goes to $TMPDIR. The file's bytes are flushed to
disk before the rename and the folder's entry after it: otherwise a power cut can leave the renamed file empty (XFS,
NFS, ext4 mounted noauto_da_alloc write the rename before the data)."""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

STALE_AFTER_SECONDS = 600  # far longer than any write here; on a shared disk, another machine's process ids mean nothing
# Windows refuses to rename or remove a file that another process has open (a virus scanner checking a new checkpoint,
# an indexer, a notebook reading last.ckpt); such holds end within a second, so the move is tried again until then.
FILES_HELD_OPEN_BLOCK_RENAMES = sys.platform == "win32"
HELD_FILE_RETRY_SECONDS = 2.0


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """`write(partial)` fills a temporary file beside `path`, which is then moved into place; an earlier `path`
    survives any failure, and the temporary file is removed. An OSError (a full disk) names `path`."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")  # DDP's processes may write at once
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(partial)
        _flush_to_disk(partial)
        retried_while_held_open(lambda: os.replace(partial, path))
        _flush_folder_to_disk(path.parent)
        _remove_stale_partial_files(path)
    except BaseException as err:
        with contextlib.suppress(OSError):  # on a read-only filesystem this fails too, and must not hide `err`
            partial.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno and err.filename in (None, str(partial)):
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise


def retried_while_held_open(action: Callable[[], None]) -> None:
    """`action` (a rename, a removal), tried again for up to HELD_FILE_RETRY_SECONDS while Windows refuses it
    (PermissionError) because another process has the file open. Elsewhere a PermissionError is a real one: raised at
    once."""
    deadline = time.monotonic() + HELD_FILE_RETRY_SECONDS
    while True:
        try:
            action()
            return
        except PermissionError:
            if not FILES_HELD_OPEN_BLOCK_RENAMES or time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def _flush_to_disk(path: Path, flags: int = os.O_RDWR) -> None:
    """fsync `path`: a file through a handle that may write (Windows fsyncs no other), a folder read-only."""
    descriptor = os.open(path, flags)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _flush_folder_to_disk(folder: Path) -> None:
    """The rename made durable. Some systems cannot open or fsync a folder (Windows, some network filesystems): the
    file is whole there anyway, only its rename may be lost in a power cut."""
    with contextlib.suppress(OSError):
        _flush_to_disk(folder, os.O_RDONLY)


def _remove_stale_partial_files(path: Path) -> None:
    """The temporary files of earlier writes of `path` whose process was killed (SIGKILL, a power cut) before it could
    remove them: a checkpoint's would take its size on disk for good."""
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.partial"):
        pid = stale.name[len(path.name) + 2 : -len(".partial")]
        with contextlib.suppress(OSError):
            if pid.isdigit() and not _process_exists(int(pid)) and time.time() - stale.stat().st_mtime > STALE_AFTER_SECONDS:
                stale.unlink()


def _process_exists(pid: int) -> bool:
    """False on Windows, where it cannot be asked so: os.kill(pid, 0) there sends Ctrl-C (signal 0 is CTRL_C_EVENT) to
    the processes of a console, this run's included. The file's age decides alone, and Windows refuses to remove a
    file that a live writer holds open."""
    if sys.platform == "win32":
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


def write_text_atomically(path: Path, text: str) -> None:
    """In UTF-8, as YAML and Markdown are read: the locale's encoding (Windows' cp1252) cannot hold every character
    (the summary's ±, a path's letters), and a config.yaml written in it could not be read back."""
    write_atomically(path, lambda partial: partial.write_text(text, encoding="utf-8"))


def write_json_atomically(path: Path, data) -> None:
    """NaN and infinity (a diverged loss) are written as null: bare NaN is not JSON, and strict parsers refuse it."""
    write_text_atomically(path, json.dumps(_finite_or_null(data), indent=2, allow_nan=False) + "\n")


def _finite_or_null(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(item) for item in value]
    return value
