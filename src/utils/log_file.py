"""The run's log file (<run folder>/<task_name>.log, conf/hydra/job_logging/run_log.yaml), which a full disk must not
turn into pages of tracebacks: logging.FileHandler prints an 80-line "--- Logging error ---" block for every message
after its first failed write, burying the one-line error that says why the run stopped."""

from __future__ import annotations

import contextlib
import logging
import sys


class RunLogFile(logging.FileHandler):
    """A FileHandler that, on its first failed write (a full disk, a quota, a folder gone), says so in one line on
    stderr and writes nothing more to its file; the console still shows every message."""

    def __init__(self, *args, **kwargs) -> None:
        # In UTF-8: the locale's encoding (Windows' cp1252) lacks characters of messages (×, a file name's letters),
        # and each such message was a "--- Logging error ---" traceback instead of a line.
        kwargs.setdefault("encoding", "utf-8")
        super().__init__(*args, **kwargs)
        self.failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:  # FileHandler.emit would open the file again
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        failure = sys.exc_info()[1]
        if not isinstance(failure, OSError):  # a message that cannot be formatted: logging's own report
            super().handleError(record)
            return
        self.failed = True
        stream, self.stream = self.stream, None
        with contextlib.suppress(OSError, ValueError):  # its buffer cannot be written either
            if stream is not None:
                stream.close()
        reason = failure.strerror or type(failure).__name__
        print(f"Warning: cannot write the log file {self.baseFilename} ({reason}): it gets no more messages; the "
              "console still shows them.", file=sys.stderr, flush=True)
