"""A full, read-only or forbidden disk reported as one line: the file, the cause, what to do. Checkpoints and result
files are written whole or not at all (src/utils/atomic_files.py), so what was written before is intact."""

from __future__ import annotations

import errno
import logging
import os

from omegaconf import DictConfig

from src.errors import ReportedError, UserInputError, exception_chain

log = logging.getLogger(__name__)

_DISK_PROBLEMS = {errno.ENOSPC: "no space left on the disk", errno.EDQUOT: "disk quota exceeded",
                  errno.EROFS: "read-only filesystem", errno.EACCES: "permission denied", errno.EPERM: "not permitted",
                  errno.EIO: "input/output error (a failing disk, or a network filesystem that went away)",
                  errno.EFBIG: "file too large for this filesystem", errno.ESTALE: "stale network file handle"}


def one_line_for_disk_errors_in_threads() -> None:
    """TensorBoard writes its event files from a thread of its own: a full disk there would print a traceback
    beside the main thread's one-line report. Other errors in threads keep Python's report."""
    import threading

    python_report = threading.excepthook
    if getattr(python_report, "reports_disk_errors", False):  # installed by an earlier job of an in-process sweep
        return

    def report(args) -> None:
        if isinstance(args.exc_value, OSError) and args.exc_value.errno in _DISK_PROBLEMS:
            log.warning("%s could not write: %s", args.thread.name if args.thread else "a thread", args.exc_value)
        else:
            python_report(args)

    report.reports_disk_errors = True
    threading.excepthook = report


def disk_problem(failure: Exception, cfg: DictConfig | None = None) -> UserInputError | None:
    """The one-line error for a disk problem in `failure`'s chain; None when there is none. It may sit further down:
    Lightning's clean-up after a failed checkpoint (the logger's last flush) can fail on the same full disk and raise
    its own error on top. `cfg`: the run's config, for what to do next."""
    if isinstance(failure, ReportedError):
        return None
    disk_errors = [e for e in exception_chain(failure) if isinstance(e, OSError) and e.errno in _DISK_PROBLEMS]
    if not disk_errors:
        return None
    err = next((e for e in disk_errors if e.filename), disk_errors[0])
    filename = os.fsdecode(err.filename) if err.filename else "Writing a file of the run"  # TensorBoard's are bytes
    problem = UserInputError(f"{filename}: {_DISK_PROBLEMS[err.errno]}. {_what_to_do(cfg)}")
    problem.__cause__ = err
    return problem


def _what_to_do(cfg: DictConfig | None) -> str:
    """Go on from the last training state saved, if there is one (starting over elsewhere would throw the training
    away); else run again, here or elsewhere. Files are written whole or not at all: those written before are intact."""
    from src.utils.command_words import resume_with
    from src.utils.continue_run import saved_training_state
    from src.utils.jobs import in_multirun

    elsewhere = "hydra.sweep.dir=<folder> for the sweep" if in_multirun() else "hydra.run.dir=<folder>"
    last = saved_training_state(cfg)
    if last is not None:
        return (f"Free some space or fix the folder's permissions, then go on from {last}, the last state saved (intact, "
                f"as is everything written before); {resume_with(last)}")
    return (f"Free some space or fix the folder's permissions, or put the run elsewhere ({elsewhere}). Files written "
            "before are intact.")
