"""Checkpoint callbacks that follow their run folder when it is moved or copied before a resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pytorch_lightning.callbacks import ModelCheckpoint


class RunFolderCheckpoint(ModelCheckpoint):
    """A ModelCheckpoint that, resumed in a run folder that was moved or copied, takes the checkpoints recorded
    in the old folder for the files of the same names in this one. Lightning would keep only the old best path
    (and test that file, or fail if it is gone) and forget the best score, so a worse epoch could become the best."""

    @property
    def state_key(self) -> str:
        """Lightning files a callback's state in checkpoints under its class name and settings. This class keeps
        ModelCheckpoint's key, so checkpoints written with a plain ModelCheckpoint resume with their best score."""
        key = super().state_key
        if type(self) is RunFolderCheckpoint:  # subclasses (ResumableCheckpoint) keep keys of their own
            key = ModelCheckpoint.__qualname__ + key[len(RunFolderCheckpoint.__qualname__):]
        return key

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old_dir = state_dict.get("dirpath")
        best = state_dict.get("best_model_path")
        if old_dir and self.dirpath and old_dir != self.dirpath and best and (Path(self.dirpath) / Path(best).name).is_file():
            state_dict = _moved(state_dict, Path(old_dir), Path(self.dirpath))
        super().load_state_dict(state_dict)
        if self.dirpath and state_dict.get("dirpath") == self.dirpath:
            # A resume in its run's folder: a checkpoint there under the name this run saves next is the run's own, left
            # by an attempt killed after saving it and before saving last.ckpt. Versioned, the new one would go beside
            # it (epoch001-v1.ckpt), which no record names. A new run keeps the counter: a folder holding checkpoints
            # alone is not refused as a used one, and they may be another run's. Only for that first save: later ones
            # in the same epoch (validation within epochs) are versioned as usual.
            self._counter_after_first_save, self._enable_version_counter = self._enable_version_counter, False

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        if hasattr(self, "_counter_after_first_save"):
            self._enable_version_counter = self._counter_after_first_save
            del self._counter_after_first_save


def _moved(state_dict: dict[str, Any], old_dir: Path, new_dir: Path) -> dict[str, Any]:
    def move(path: str) -> str:
        return str(new_dir / Path(path).name) if path and Path(path).parent == old_dir else path

    state_dict = dict(state_dict, dirpath=str(new_dir))
    for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
        if state_dict.get(key):
            state_dict[key] = move(state_dict[key])
    state_dict["best_k_models"] = {move(path): score for path, score in (state_dict.get("best_k_models") or {}).items()}
    return state_dict
