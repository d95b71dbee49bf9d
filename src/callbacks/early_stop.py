"""A run that early stopping ended stays ended when it is resumed (a resubmitted job): Lightning restores the
EarlyStopping callback's record of the stop, but not the stop itself, and would train on towards trainer.max_epochs."""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import EarlyStopping
from pytorch_lightning.callbacks.early_stopping import EarlyStoppingReason


def early_stop(trainer: pl.Trainer) -> EarlyStopping | None:
    """The early stopping callback that ended this run's training (in this attempt, or before a resume), if one did."""
    return next((callback for callback in trainer.callbacks if isinstance(callback, EarlyStopping)
                 and callback.stopping_reason != EarlyStoppingReason.NOT_STOPPED), None)


def stop_reason(callback: EarlyStopping) -> str:
    """Lightning's reason, without its note to the trainer."""
    return (callback.stopping_reason_message or f"{callback.monitor}: {callback.stopping_reason.name.lower()}").replace(
        " Signaling Trainer to stop.", "")


class StayStoppedEarly(pl.Callback):
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After Lightning has restored the callbacks' state, before the first epoch would begin.
        if early_stop(trainer):
            trainer.should_stop = True
