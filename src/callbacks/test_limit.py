"""Lightning checks a fraction of the test batches (trainer.limit_test_batches=0.05) only when testing starts, after
the whole training: a run that tests after fitting checks it as fitting starts, once the data is read."""

from __future__ import annotations

import math

import pytorch_lightning as pl

from src.errors import UserInputError
from src.utils.command_words import counted


class TestLimitCheck(pl.Callback):
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        limit = trainer.limit_test_batches
        if not (isinstance(limit, float) and 0 < limit < 1):
            return
        batches = len(trainer.datamodule.test_dataloader())  # this process's share of the test set
        if int(batches * limit) < 1:
            enough = math.ceil(1000 / batches) / 1000  # 1/3 shown as 0.333 would be refused again
            share = f"each of the {trainer.world_size} processes tests" if trainer.world_size > 1 else "the test set is"
            raise UserInputError(
                f"trainer.limit_test_batches={limit} leaves no batch to test: {share} "
                f"{counted(batches, 'batch', 'batches')} of up to {trainer.datamodule.hparams.eval_batch_size} images. Use at "
                f"least {enough:g}, or a number of batches such as ++trainer.limit_test_batches=1."
            )
