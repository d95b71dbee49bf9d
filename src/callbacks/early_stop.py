"""A run that early stopping ended stays ended when it is resumed (a resubmitted job): Lightning restores the
EarlyStopping callback's record of the stop, but not the stop itself, and would train on towards trainer.max_epochs."""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import EarlyStopping
from pytorch_lightning.callbacks.early_stopping import EarlyStoppingReason

from src.utils.command_words import counted


def early_stop(trainer: pl.Trainer) -> EarlyStopping | None:
    """The early stopping callback that ended this run's training (in this attempt, or before a resume), if one did."""
    return next((callback for callback in trainer.callbacks if isinstance(callback, EarlyStopping)
                 and callback.stopping_reason != EarlyStoppingReason.NOT_STOPPED), None)


def stop_reason(callback: EarlyStopping) -> str:
    """Why it stopped the run, in words (Lightning's own message gets the comparison wrong for a divergence with
    mode=max, and prints raw floats)."""
    monitor, reason = callback.monitor, callback.stopping_reason
    if reason == EarlyStoppingReason.PATIENCE_EXHAUSTED:
        validations = counted(callback.patience, "validation")
        # Its reference moves only with a gain of more than min_delta: smaller gains can leave the run's best above it.
        return (f"{monitor} did not improve on {float(callback.best_score):.4f} by more than "
                f"{abs(float(callback.min_delta)):g} in {validations}")
    if reason == EarlyStoppingReason.STOPPING_THRESHOLD:
        return f"{monitor} reached the stopping threshold {callback.stopping_threshold:g}"
    if reason == EarlyStoppingReason.DIVERGENCE_THRESHOLD:
        side = "below" if callback.mode == "max" else "above"
        return f"{monitor} fell {side} the divergence threshold {callback.divergence_threshold:g}"
    return f"{monitor} was not finite"


class StayStoppedEarly(pl.Callback):
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After Lightning has restored the callbacks' state, before the first epoch would begin.
        if early_stop(trainer):
            trainer.should_stop = True
