"""Result files written whole or not at all: a crash or a full disk never leaves half a file in place of a good one.

Each file is written under a temporary name in its own folder, then renamed over the target. The rename is atomic
only within one filesystem, which is why the temporary file never goes to $TMPDIR."""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable
from pathlib import Path


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """`write(partial)` fills a temporary file beside `path`, which is then moved into place; an earlier `path`
    survives any failure, and the temporary file is removed. An OSError (a full disk) names `path`."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")  # DDP's processes may write at once
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(partial)
        os.replace(partial, path)
    except BaseException as err:
        with contextlib.suppress(OSError):  # on a read-only filesystem this fails too, and must not hide `err`
            partial.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno and err.filename in (None, str(partial)):
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise


def write_text_atomically(path: Path, text: str) -> None:
    write_atomically(path, lambda partial: partial.write_text(text))


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
