"""Checkpoint files written whole or not at all, also when $TMPDIR is on another filesystem than the run folder."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from src.utils import atomic_files

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's own atomic save writes to a temporary file in $TMPDIR and moves it into place. When $TMPDIR is on
    another filesystem (a tmpfs /tmp, a cluster node's local disk), that move copies into the target in place, and
    a full disk then leaves a truncated last.ckpt where a good one was. Here the temporary file sits beside the
    checkpoint, so the final rename is atomic."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if "://" in str(path):  # a remote URL: Lightning's own way
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options.")
        atomic_files.write_atomically(Path(path), lambda partial: _save(checkpoint, partial))

    def remove_checkpoint(self, path) -> None:
        """Lightning's removal (of an earlier best checkpoint, say), tried again while Windows refuses it. One still
        refused after that is left in place with a warning: not worth ending the training for."""
        remove = super().remove_checkpoint
        try:
            atomic_files.retried_while_held_open(lambda: remove(path))
        except PermissionError as err:
            if not atomic_files.FILES_HELD_OPEN_BLOCK_RENAMES:
                raise
            log.warning("Could not remove the earlier checkpoint %s (%s): another program probably has it open. "
                        "Training goes on; remove that file when it is free.", path, err.strerror)


def _save(checkpoint: dict[str, Any], path: Path) -> None:
    # Serialized in memory first: torch's own file writer turns a full disk into a RuntimeError without the file's
    # name; Python's write raises the OSError (ENOSPC) that the entry points report as one line.
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    with open(path, "wb") as file:
        file.write(buffer.getbuffer())
