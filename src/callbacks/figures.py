"""Pictures of what the model does: validation samples and confusion matrix at a modest cadence,
learning curves after fitting, test confusion matrix and worst mistakes after testing.

Each figure goes to TensorBoard (Images tab); the learning curves and the test figures also to a PNG in the run dir."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger

from src.errors import UserInputError
from src.models.networks import IMAGE_SIDE, NUM_CLASSES
from src.utils.atomic_files import write_atomically
from src.utils.command_words import override_value
from src.utils.setting_checks import is_whole
from src.plots.confusion import confusion_matrix_figure
from src.plots.curves import learning_curves_figure
from src.plots.digit_sheet import digit_sheet


class DiagnosticFigures(pl.Callback):
    def __init__(self, output_dir: str, every_n_epochs: int = 2, num_samples: int = 32, num_mistakes: int = 32) -> None:
        for key, value, low in (("every_n_epochs", every_n_epochs, 1), ("num_samples", num_samples, 0),
                                ("num_mistakes", num_mistakes, 0)):
            if not is_whole(value) or value < low:
                raise UserInputError(f"callbacks.figures.{key}={override_value(value)} is invalid: "
                                     f"it must be a whole number >= {low}.")
        self.output_dir = Path(output_dir)
        self.every_n_epochs = every_n_epochs
        self.num_samples = num_samples
        self.num_mistakes = num_mistakes
        self.history: list[dict[str, float]] = []
        self._val_samples: tuple[torch.Tensor, ...] | None = None
        self._mistakes: tuple[torch.Tensor, ...] | None = None  # images, labels, predictions, losses
        self._validated_epoch: int | None = None  # val/* in callback_metrics are this epoch's, not older ones
        self._trained = False  # in this fit

    def _val_figures_due(self, trainer: pl.Trainer) -> bool:
        epoch = trainer.current_epoch + 1
        return not trainer.sanity_checking and (epoch % self.every_n_epochs == 0 or epoch == trainer.max_epochs)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx == 0 and self.num_samples and self._val_figures_due(trainer):  # 0: no sample sheet
            images, labels = batch
            n = self.num_samples
            self._val_samples = (images[:n].cpu(), labels[:n].cpu(), outputs[:n].argmax(1).cpu())

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._validated_epoch = trainer.current_epoch
        if not self._val_figures_due(trainer) or not trainer.is_global_zero:
            return
        step = trainer.global_step
        if "val" in pl_module.confusion:
            self._log(trainer, "val/confusion_matrix", confusion_matrix_figure(pl_module.confusion["val"], "validation"), step)
        if self._val_samples is not None:
            images, labels, predictions = self._val_samples
            wrong = (predictions != labels).tolist()
            captions = [f"{p}" + (f" (true {t})" if w else "") for p, t, w in zip(predictions.tolist(), labels.tolist(), wrong)]
            title = f"validation samples, epoch {trainer.current_epoch}: prediction (true label if wrong)"
            self._log(trainer, "val/samples", digit_sheet(images, captions, wrong, title), step)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        metrics = trainer.callback_metrics  # here both this epoch's train and val metrics are final
        # With trainer.check_val_every_n_epoch > 1 an epoch without validation still holds the last val/* values.
        keys = ("train/loss", "train/acc") + (("val/loss", "val/acc") if self._validated_epoch == trainer.current_epoch else ())
        row = {"epoch": trainer.current_epoch}
        row.update({k: float(metrics[k]) for k in keys if k in metrics})
        self.history.append(row)

    def state_dict(self) -> dict:
        return {"history": self.history}  # plain floats: the learning curves survive a resume

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = list(state_dict.get("history", []))

    def on_fit_start(self, trainer, pl_module) -> None:
        self._trained = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._trained = True

    def on_fit_end(self, trainer, pl_module) -> None:
        # A resume with nothing left to train drew these curves before, into the PNG and TensorBoard (unless the run
        # was stopped before the end of its fit).
        drawn = (self.output_dir / "learning_curves.png").is_file()
        if self.history and (self._trained or not drawn) and trainer.is_global_zero:
            figure = learning_curves_figure(self.history, pl_module.hparams.get("label_smoothing", 0.0))
            self._log(trainer, "learning_curves", figure, trainer.global_step, "learning_curves.png")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        images, labels = batch
        probs = outputs.softmax(1)
        confidence, predicted = probs.max(1)
        wrong = predicted != labels
        candidates = (images[wrong].cpu(), labels[wrong].cpu(), probs[wrong].cpu(), confidence[wrong].cpu())
        if self._mistakes is not None:
            candidates = tuple(torch.cat(pair) for pair in zip(self._mistakes, candidates))
        keep = candidates[3].argsort(descending=True)[: self.num_mistakes]  # the most confidently wrong
        self._mistakes = tuple(t[keep] for t in candidates)

    def on_test_end(self, trainer, pl_module) -> None:
        if trainer.world_size > 1 and self.num_mistakes:  # each process tested its share of the images
            self._mistakes = self._gathered_mistakes(pl_module)
        if not trainer.is_global_zero:
            self._mistakes = None
            return
        step = trainer.global_step
        if "test" in pl_module.confusion:
            confusion = pl_module.confusion["test"]
            tested_on = "official 10k test set" if int(confusion.sum()) == 10_000 else "test set"  # or a part of it
            figure = confusion_matrix_figure(confusion, tested_on)
            self._log(trainer, "test/confusion_matrix", figure, step, "confusion_matrix.png")
        if self._mistakes is not None and len(self._mistakes[0]):
            images, labels, probs, _ = self._mistakes
            predicted = probs.argmax(1)
            captions = [f"{p} ({probs[i, p]:.0%}), true {t}" for i, (p, t) in enumerate(zip(predicted.tolist(), labels.tolist()))]
            title = "most confident test mistakes: prediction (confidence), true label"
            self._log(trainer, "test/misclassified", digit_sheet(images, captions, [True] * len(captions), title), step, "misclassified.png")
        self._mistakes = None

    def _gathered_mistakes(self, pl_module: pl.LightningModule) -> tuple[torch.Tensor, ...]:
        """The most confident mistakes among every process's. The collective needs equal shapes: each process pads
        its own to num_mistakes, with confidence -1 marking a pad."""
        none = (torch.zeros(0, 1, IMAGE_SIDE, IMAGE_SIDE), torch.zeros(0, dtype=torch.long), torch.zeros(0, NUM_CLASSES),
                torch.zeros(0))
        mine = self._mistakes or none  # none: this process tested no batch
        pad = self.num_mistakes - len(mine[0])
        padded = [torch.cat([t, t.new_full((pad, *t.shape[1:]), -1 if i == 3 else 0)]) for i, t in enumerate(mine)]
        gathered = (pl_module.all_gather(t.to(pl_module.device)).flatten(0, 1).cpu() for t in padded)
        images, labels, probs, confidence = gathered
        keep = confidence.argsort(descending=True)[: self.num_mistakes]
        keep = keep[confidence[keep] >= 0]
        return images[keep], labels[keep], probs[keep], confidence[keep]

    def _log(self, trainer: pl.Trainer, tag: str, figure, step: int, png_name: str | None = None) -> None:
        if png_name:  # a full disk must not leave half a PNG in place of a good one, and is told with its name
            write_atomically(self.output_dir / png_name, lambda partial: figure.savefig(partial, format="png", dpi=110))
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_figure(tag, figure, global_step=step, close=False)
