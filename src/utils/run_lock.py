"""One process at a time in a run folder. Two commands given the same folder (hydra.run.dir twice, ckpt_path=last run
again while the first still trains, a stopped sweep continued twice) would both train there: the first's record,
config and TensorBoard events replaced or mixed with the second's, its best checkpoint beside the other's. The folder's
other checks (output_folders.refuse_a_used_folder) see a run only once it has saved last.ckpt or metrics.json.

The run holds an flock on <run folder>/.run.lock while it works; the kernel drops it when the process ends, however it
ends. Where locks are not available (Windows, a network filesystem mounted without them) nothing is checked."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from src.errors import RunFolderTaken

try:
    import fcntl
except ImportError:  # Windows: no locks here, and nothing is checked
    fcntl = None

LOCK_NAME = ".run.lock"  # empty while no run holds it; its holder writes who it is
TAKE_SECONDS = 2.0  # a lock another command only looks at (another_process_holds) is let go within this
_held: dict[Path, int | None] = {}  # folder: descriptor (None in a forked child), of the folders this process works in


def _let_forked_child_go() -> None:
    """A forked child (ddp_fork, a fork-based pool) shares the held locks: it would keep a folder held after this
    process ended. It closes its copies, which releases nothing while this process holds its own."""
    for folder, descriptor in _held.items():
        if descriptor is not None:
            with contextlib.suppress(OSError):
                os.close(descriptor)
        _held[folder] = None


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork (nor the locks)
    os.register_at_fork(after_in_child=_let_forked_child_go)


def _rank_zero() -> bool:
    """Whether this is a run's first (or only) process, read as Lightning reads it, without importing Lightning: the
    other processes of a DDP run (relaunched by Lightning, torchrun or srun) work in the folder of the first. A
    machine's first process on another node of a run started by hand has its node's rank alone."""
    rank = next((os.environ[name] for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")
                 if name in os.environ), "0")
    return rank == "0" and os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", "0")) == "0"


@contextlib.contextmanager
def holding_run_folder(folder: Path, setting: str = "hydra.run.dir") -> Iterator[None]:
    """Hold `folder` for this process while the block runs; RunFolderTaken if another process holds it."""
    folder = folder.expanduser().resolve()
    descriptor = None if folder in _held or not _rank_zero() else _take(folder, setting)
    if descriptor is None:
        yield
        return
    _held[folder] = descriptor
    try:
        yield
    finally:
        descriptor = _held.pop(folder)
        if descriptor is not None:  # else a forked child's, which let it go
            with contextlib.suppress(OSError):
                os.ftruncate(descriptor, 0)  # a run that ended leaves the file as it found it
            os.close(descriptor)  # and with it the lock


def _take(folder: Path, setting: str) -> int | None:
    """The locked descriptor of `folder`'s lock file, its holder written in it; None where locks are not available."""
    if fcntl is None:
        return None
    # A folder not there yet is not made here: a run refused for a bad setting leaves none behind. From the command
    # line Hydra has made it; in a notebook a dated one is made, and a hydra.run.dir named anew goes unchecked.
    try:
        descriptor = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)  # the umask decides, as for the rest
    except OSError:  # no such folder, or one that cannot be written: the run reports that where it first writes there
        return None
    try:
        _lock_within(descriptor, TAKE_SECONDS)
    except BlockingIOError:
        holder = _holder(descriptor) or "a run or resume there that has not ended"
        os.close(descriptor)
        raise RunFolderTaken(f"{folder} is in use by another process ({holder}), whose results this one would mix "
                             f"with its own. Wait for it to end, or choose another {setting}. If that process no "
                             f"longer runs (its machine went down: a network filesystem may keep its lock), remove "
                             f"{folder / LOCK_NAME} and run again.") from None
    except OSError:  # a filesystem without locks: unchecked, as before
        os.close(descriptor)
        return None
    with contextlib.suppress(OSError):
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"process {os.getpid()} on {socket.gethostname()}, since "
                             f"{time.strftime('%Y-%m-%d %H:%M:%S')}".encode())
    return descriptor


def _lock_within(descriptor: int, seconds: float) -> None:
    """flock, exclusive; BlockingIOError if still held by another after `seconds`. Not at once: a command starting
    beside this one may be looking at the lock (another_process_holds) in the same moment."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def _holder(descriptor: int) -> str:
    with contextlib.suppress(OSError, UnicodeDecodeError):
        return os.pread(descriptor, 200, 0).decode().strip()
    return ""


def another_process_holds(folder: Path) -> bool:
    """Whether a process other than this one holds `folder` now (a run there has not ended). Asked before a run has
    taken its folder; a DDP run's other processes ask nothing (their first holds it)."""
    if fcntl is None:
        return False
    folder = folder.expanduser().resolve()
    if folder in _held or not _rank_zero():
        return False
    try:
        descriptor = os.open(folder / LOCK_NAME, os.O_RDONLY)
    except OSError:  # none there: no run has held it
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(descriptor)
    return False
