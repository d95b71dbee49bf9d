"""Exponential moving average (EMA) of the weights: validation, the checkpoints (and so the test pass,
`src.eval` and `src.predict`) all use the averaged weights; a resume restores both the raw and the averaged ones."""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import EMAWeightAveraging
from pytorch_lightning.trainer.states import TrainerFn

from src.errors import UserInputError


class WeightEMA(EMAWeightAveraging):
    """Lightning's EMA callback with a range check on `decay` and two fixes:

    - the average lives on the training device: Lightning builds it in `setup`, before the model is moved to
      the GPU, which would copy every weight to the host after every step;
    - `trainer.test(ckpt_path=...)` after `fit` tests the averaged weights the checkpoint holds: Lightning's
      hook would reload the raw weights saved next to them, as it does to resume training.
    """

    def __init__(self, decay: float = 0.999) -> None:
        if not 0.0 < decay < 1.0:
            raise UserInputError(
                f"callbacks.ema.decay={decay} is invalid: it must be a number in (0, 1), e.g. 0.999 "
                "(an average over about 1/(1-decay) = 1000 steps)."
            )
        super().__init__(decay=decay)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._average_model is not None:
            self._average_model.to(pl_module.device)

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        if trainer.state.fn == TrainerFn.FITTING:  # resuming: restore the raw weights and the average
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
