"""JSON result files written whole or not at all: a crash or a full disk never leaves half a metrics.json."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_json_atomically(path: Path, data) -> None:
    """Write a temporary file beside `path`, then move it into place; an earlier `path` survives any failure."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")  # DDP's processes may write at once
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
