"""A run whose console reader goes away (`| head`, quitting `less`) goes on to the end, writing its log file only.

Python raises BrokenPipeError on every later write to such a pipe: logging would print a traceback per message and
rich would end the process in the middle of training. The first failed write points the closed output at the null
device instead, so nothing later fails."""

from __future__ import annotations

import logging
import os
import select
import sys


class ConsoleHandler(logging.StreamHandler):
    """Hydra's console handler, quiet once nobody reads the console."""

    def handleError(self, record: logging.LogRecord) -> None:
        if isinstance(sys.exc_info()[1], BrokenPipeError):
            discard_closed_output(self.stream)
        else:
            super().handleError(record)


def discard_closed_output(broken_stream) -> None:
    """Point `broken_stream` (whose reader is gone) and any other standard output whose reader is gone at the
    null device."""
    descriptors = {broken_stream.fileno()} | {fd for fd in (1, 2) if _reader_gone(fd)}
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in descriptors:
            os.dup2(null, fd)
    finally:
        os.close(null)


def _reader_gone(fd: int) -> bool:
    """Whether `fd` is a pipe whose reading end is closed (poll reports an error on it), where poll is known."""
    if not hasattr(select, "poll"):
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poller.poll(0))
