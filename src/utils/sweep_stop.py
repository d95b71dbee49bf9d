"""Stopping a sweep whose jobs run in worker processes (`hydra/launcher=joblib`).

Ctrl-C reaches the launching process and its running jobs alike. Left to joblib, the launcher would end the jobs at
once: no checkpoint, no record, no summary. Here the launcher only notes the request, in a marker file in the sweep
folder; each running job stops after its batch, saves and records itself as interrupted, jobs that had not started
are recorded as not run, and the launcher exits with the interruption's exit code once the jobs are done. With the
basic launcher the jobs run in the launching process, and an interrupted job ends the sweep itself.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

log = logging.getLogger(__name__)

MARKER = ".stop_requested"  # holds the exit code: 130 (Ctrl-C) or 143 (SIGTERM)
_LAUNCHER_PID = "MNIST_SWEEP_LAUNCHER_PID"  # inherited by the job processes


def in_launching_process() -> bool:
    return os.environ.get(_LAUNCHER_PID, str(os.getpid())) == str(os.getpid())


def request_stop(sweep_dir: Path, exit_code: int) -> None:
    marker = sweep_dir / MARKER
    if not marker.exists():
        marker.write_text(str(exit_code))


def requested_exit_code(sweep_dir: Path) -> int | None:
    try:
        return int((sweep_dir / MARKER).read_text())
    except (OSError, ValueError):
        return None


def clear_stop_request(sweep_dir: Path) -> None:
    (sweep_dir / MARKER).unlink(missing_ok=True)


def leave_interruptions_to_the_jobs(sweep_dir: Path) -> None:
    """In the launching process: note Ctrl-C and SIGTERM for the jobs instead of dying at once. A third Ctrl-C
    does end the launcher at once, in case a job hangs."""
    os.environ[_LAUNCHER_PID] = str(os.getpid())
    presses = 0

    def note(signum: int, frame) -> None:
        nonlocal presses
        presses += signum == signal.SIGINT
        if presses >= 3:
            raise KeyboardInterrupt
        request_stop(sweep_dir, 128 + signum)
        log.warning("%s: the running jobs stop after their batch and save a checkpoint; no further job starts%s.",
                    "Ctrl-C" if signum == signal.SIGINT else "SIGTERM",
                    " (Ctrl-C twice more to abandon them at once)" if signum == signal.SIGINT else "")

    signal.signal(signal.SIGINT, note)
    signal.signal(signal.SIGTERM, note)
