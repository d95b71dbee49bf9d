"""SIGTERM outside training and testing (reading data, building the model, writing results), where Lightning's own
handling (stop at the next batch boundary, save) is not installed: left to the default, the process died at once,
without a word in its log, and a sweep run by the basic launcher wrote no summary."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Terminated(BaseException):
    """SIGTERM arrived outside Lightning's handling. A BaseException, as KeyboardInterrupt is: code that catches
    Exception (Hydra's instantiate, say) must not take it for a failure of its own."""


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within it, SIGTERM raises Terminated, except while Lightning handles it (it installs its own handler for fit and
    test, which calls the one it found as well)."""
    if threading.current_thread() is not threading.main_thread():  # signals can only be caught there
        yield
        return

    def raise_terminated(signum, frame) -> None:
        if signal.getsignal(signal.SIGTERM) is raise_terminated:  # not called from Lightning's handler
            raise Terminated

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
