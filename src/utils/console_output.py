"""A run whose console reader goes away (`| head`, quitting `less`) goes on to the end, writing its log file only.

Python raises BrokenPipeError on every later write to such a pipe: logging would print a traceback per message, and
the progress bar or rich (the config tree, the model summary) would end the process in the middle of training. The
command line's standard streams are wrapped so that the first failed write points the closed output at the null
device instead, and nothing later fails.

A console whose encoding lacks a character of a message (Windows' code pages, for output redirected to a file:
cp1252 has no ≥, cp1251 no ×; a file's name) shows it escaped, `\\xd7`, as Python's stderr does: it raised
UnicodeEncodeError, which logging printed as a traceback in place of the message, and print() ended the command."""

from __future__ import annotations

import codecs
import os
import select
import sys


class ReaderProofStream:
    """`stream` (sys.stdout or sys.stderr), whose writes cannot fail for want of a reader."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            discard_closed_output(self._stream)
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            discard_closed_output(self._stream)

    def __getattr__(self, name: str):  # isatty, fileno, encoding, ...: the stream's own
        return getattr(self._stream, name)


def guard_standard_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        encoding = getattr(stream, "encoding", None)
        if encoding and not codecs.lookup(encoding).name.startswith("utf") and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    if not isinstance(sys.stdout, ReaderProofStream):
        sys.stdout, sys.stderr = ReaderProofStream(sys.stdout), ReaderProofStream(sys.stderr)


def discard_closed_output(broken_stream) -> None:
    """Point `broken_stream` (whose reader is gone) and any other standard output whose reader is gone at the
    null device. What it had buffered goes there too, on its next flush."""
    try:
        broken = {broken_stream.fileno()}
    except (AttributeError, OSError, ValueError):  # a stream that is not a file: no descriptor to point elsewhere
        broken = set()
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in broken | {fd for fd in (1, 2) if _reader_gone(fd)}:
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
