"""Stopping safely: on SIGTERM (what SLURM sends before pre-emption) or Ctrl-C, training stops at the next
batch boundary (with gradient accumulation, the next optimizer step's) and last.ckpt is saved; on a NaN/inf loss
(training: one step later at most; validation: before the epoch's checkpoints) it stops and last.ckpt is left alone."""

from __future__ import annotations

import logging
import signal
import threading
import time

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.exceptions import SIGTERMException

from src.callbacks.checkpoint import RunFolderCheckpoint
from src.errors import TrainingDiverged, what_stopped

log = logging.getLogger(__name__)


class StopRequested(Exception):
    """Raised at a batch boundary after Ctrl-C, like Lightning's SIGTERMException after SIGTERM."""


class SpawnedProcessesStopped(Exception):
    """The processes trainer.strategy=ddp_spawn started stopped mid-epoch (and saved, as any stop does): raised in the
    launching process in their place. Not a StopRequested: the launching process's checkpoint callbacks would save
    its own copy of the model, without the optimizer's state, over theirs."""


INTERRUPTIONS = (SIGTERMException, StopRequested)
STOP_CAUSES = ("Ctrl-C", "SIGTERM")  # the processes of a DDP run agree on the highest one's place in this list


def aborted_by_ctrl_c(stop: BaseException) -> bool:
    """Whether `stop` ends a run on a Ctrl-C that was not handled gracefully (a second one, or one outside training):
    Lightning's sys.exit(1), with Ctrl-C left ignored, or a KeyboardInterrupt that came while Lightning was handling
    an earlier stop. Ctrl-C is given back to Python's default handler here."""
    lightning_exit = isinstance(stop, SystemExit) and isinstance(stop.__context__, KeyboardInterrupt)
    if not (lightning_exit or isinstance(stop, KeyboardInterrupt)):
        return False
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
    return True


class ResumableCheckpoint(RunFolderCheckpoint):
    """A ModelCheckpoint that also saves when training is interrupted, and only then: after any other
    exception (say a NaN loss) the weights may be broken and the previous checkpoint must stay."""

    saved_at_stop = False  # whether the save at an interruption went through (what fails after it is another matter)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, INTERRUPTIONS):
            super().on_exception(trainer, pl_module, exception)
            self.saved_at_stop = True


class GracefulStop(pl.Callback):
    """The first Ctrl-C asks training to stop after the current batch (a consistent, resumable state);
    a second Ctrl-C aborts at once. A job of a sweep whose jobs run in worker processes also stops so when the
    launching process was asked to stop (src/utils/sweep_stop.py): SIGTERM sent to it alone reaches no worker.

    With several processes (DDP) every one stops at the same batch, whichever of them got the signal: they agree on
    it after each training batch. SIGTERM is noted here too: Lightning's handler broadcast from inside the signal
    handler, and a SIGTERM to the process group (forwarded once more to the other processes) hung them all.

    With gradient accumulation a stop asked for half-way through an accumulation waits for its last batch, where the
    optimizer steps (or the epoch's last): the gradients summed so far are in no checkpoint, so a resume from between
    them would step on the remaining batches' alone. SIGTERM is noted here then too: Lightning's stops after any
    batch."""

    SWEEP_CHECK_SECONDS = 1.0  # how often a worker's job looks for the launching process's stop request

    def __init__(self) -> None:
        self._requested = False
        self.stopped_by = "Ctrl-C"
        self._previous_handler = None
        self._sweep_checked_at = 0.0
        self._trainer: pl.Trainer | None = None
        self._said_stop_waits = False

    @property
    def stop_requested(self) -> bool:
        """A Ctrl-C (or the sweep's stop) came during this fit. If the fit returned all the same, it came in an
        epoch's last batch (or its last gradient accumulation) or in the last validation: the caller must report the
        stop (the epoch's checkpoints were saved as usual)."""
        return self._requested

    def on_fit_start(self, trainer, pl_module) -> None:
        self._requested, self.stopped_by, self._trainer, self._said_stop_waits = False, "Ctrl-C", trainer, False
        # Signals can only be caught in the main thread. An ignored Ctrl-C stays ignored: a script's background job
        # (`python -m src.train &`) shares the terminal's Ctrl-C with the script, which its shell keeps from it.
        main_thread = threading.current_thread() is threading.main_thread()
        if main_thread and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            self._previous_handler = signal.signal(signal.SIGINT, self._request_stop)

    def on_sanity_check_start(self, trainer, pl_module) -> None:
        self._take_over_sigterm(trainer)

    def on_train_start(self, trainer, pl_module) -> None:
        self._take_over_sigterm(trainer)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        # A GradientAccumulationScheduler may start accumulating in a later epoch, in an epoch-start hook that may run
        # after this callback's: by the epoch's first batch it has.
        if batch_idx == 0:
            self._take_over_sigterm(trainer)

    def _take_over_sigterm(self, trainer) -> None:
        """From Lightning, which installs its handler after on_fit_start (and puts back the one before the fit at its
        end), in the processes of a multi-process run, and in a run that accumulates gradients (Lightning would stop
        half-way through an accumulation). A single process without accumulation keeps Lightning's handling."""
        taken_over = trainer.world_size > 1 or trainer.accumulate_grad_batches > 1
        if taken_over and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._note_sigterm)

    def _note_sigterm(self, signum, frame) -> None:
        log.info("SIGTERM: stopping after this batch (with gradient accumulation, the accumulation's last) and saving "
                 "a checkpoint.")
        self._requested, self.stopped_by = True, "SIGTERM"

    def _agreed(self, trainer) -> bool:
        """Whether any process was asked to stop: the same answer in each (SIGTERM over Ctrl-C when both came)."""
        if trainer.world_size == 1:
            return self._requested
        import torch.distributed as dist

        code = torch.tensor([STOP_CAUSES.index(self.stopped_by) + 1 if self._requested else 0],
                            device=trainer.strategy.root_device)
        dist.all_reduce(code, op=dist.ReduceOp.MAX)
        if code.item():
            self._requested, self.stopped_by = True, STOP_CAUSES[int(code.item()) - 1]
        return self._requested

    def stopped_elsewhere(self, by: str) -> None:
        """The stop came to the processes ddp_spawn started (this callback is the launching process's copy)."""
        self._requested, self.stopped_by = True, by

    def _request_stop(self, signum, frame) -> None:
        if self._trainer is not None and self._trainer.sanity_checking:
            log.warning("Ctrl-C: stopping the sanity check after this batch, before any training step.")
        else:
            log.warning("Ctrl-C: stopping after this batch and saving a checkpoint (Ctrl-C again to abort at once).")
        self._requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def _sweep_stop_requested(self) -> bool:
        """In a worker's sweep job, at most once a second: whether the launching process was asked to stop."""
        now = time.monotonic()
        if now - self._sweep_checked_at < self.SWEEP_CHECK_SECONDS:
            return False
        self._sweep_checked_at = now
        from src.utils.jobs import in_multirun
        from src.utils.sweep_stop import in_launching_process, sweep_stop_code

        code = sweep_stop_code() if in_multirun() and not in_launching_process() else None
        if code is None:
            return False
        self.stopped_by = what_stopped(code)
        log.warning("The sweep was asked to stop (%s): stopping after this batch and saving a checkpoint.", self.stopped_by)
        return True

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        # Nothing trained yet, nothing to save: stop at once. With several processes at its end, where all of them
        # are: their shares of the validation set may differ by a batch.
        if self._requested and trainer.sanity_checking and trainer.world_size == 1:
            raise StopRequested(self.stopped_by)

    def on_sanity_check_end(self, trainer, pl_module) -> None:
        if trainer.world_size > 1 and self._agreed(trainer):
            raise StopRequested(self.stopped_by)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self._requested and self._sweep_stop_requested():
            self._requested = True
        # After a NaN/inf loss the weights are broken: saving them would replace a good last.ckpt. The
        # DivergenceGuard, if there is one, stops at its next check instead, before anything is saved.
        guarded = any(isinstance(cb, DivergenceGuard) for cb in trainer.callbacks)
        if self._agreed(trainer) and (_loss_is_finite(outputs) or not guarded):
            if not _optimizer_stepped(trainer, batch_idx):
                self._say_stop_waits(trainer, batch_idx)
                return
            if not trainer.is_last_batch:
                raise StopRequested(self.stopped_by)
            # Stopped now, the epoch would never be validated: a resume starts with the next one. So the fit ends as
            # an early stop does, after this epoch's validation and checkpoints; the caller reports the stop.
            trainer.should_stop = True

    def _say_stop_waits(self, trainer, batch_idx: int) -> None:
        if self._said_stop_waits or not trainer.is_global_zero:
            return
        self._said_stop_waits = True
        every = trainer.accumulate_grad_batches
        stops_after = min((batch_idx // every + 1) * every, trainer.num_training_batches)
        log.warning("%s: the stop waits for the end of this gradient accumulation (batch %d of the epoch's %s), where "
                    "the optimizer steps: a checkpoint before it would lose the gradients summed so far.",
                    self.stopped_by, stops_after, trainer.num_training_batches)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self.give_back_ctrl_c()

    def give_back_ctrl_c(self) -> None:
        """Reinstate the handler from before the fit. When the fit raises, Lightning skips the callbacks' teardown
        and puts this callback's handler back itself (its own signal handling restores what it found at the
        start), so whoever calls trainer.fit must call this afterwards."""
        self._trainer = None
        if self._previous_handler is not None:
            signal.signal(signal.SIGINT, self._previous_handler)
            self._previous_handler = None


def _optimizer_stepped(trainer, batch_idx: int) -> bool:
    """Whether the optimizer stepped in this batch: the last of a gradient accumulation, or of the epoch. The test
    Lightning's training epoch loop makes (`_accumulated_batches_reached`, `_num_ready_batches_reached`) is private;
    this reads the same counts from public values: `batch_idx` counts this epoch's batches from 0, a resumed epoch's
    too, as Lightning's own checks do."""
    return trainer.is_last_batch or (batch_idx + 1) % trainer.accumulate_grad_batches == 0


def _loss(outputs) -> torch.Tensor | None:
    """The training step's loss from what Lightning hands `on_train_batch_end`."""
    return outputs["loss"] if isinstance(outputs, dict) else outputs


def _loss_is_finite(outputs) -> bool:
    loss = _loss(outputs)
    return loss is None or bool(torch.isfinite(loss).all())


class DivergenceGuard(pl.Callback):
    """Stops on the first non-finite training loss with advice, instead of training on NaNs for hours.

    Each step's loss is checked one step later: reading it at once would make the host wait for the GPU
    every step, so the GPU would sit idle while the next step is queued. So one more step may run on a bad
    loss, but nothing is saved from it: a pending check runs before every checkpoint, validation and the end
    of training.
    """

    def __init__(self) -> None:
        self._pending: tuple | None = None  # (loss copied to the host, copy-done event or None, epoch, step, lr)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._check_pending(pl_module)
        loss = _loss(outputs)
        if loss is None:
            return
        loss = loss.detach()
        done = None
        if loss.is_cuda:
            loss = loss.to("cpu", non_blocking=True)  # into pinned memory; `done` says when it has arrived
            done = torch.cuda.Event()
            done.record()
        self._pending = (loss, done, trainer.current_epoch, trainer.global_step, _current_lr(trainer))

    def on_validation_start(self, trainer, pl_module) -> None:
        self._check_pending(pl_module)

    def on_validation_end(self, trainer, pl_module) -> None:
        # Weights can grow until the validation images overflow while every training loss is still finite; this
        # epoch's best and last checkpoints (saved after this hook: Lightning runs checkpoint callbacks last) would
        # keep them, the best one under the accuracy of a broken model.
        val_loss = trainer.callback_metrics.get("val/loss")
        if trainer.sanity_checking or val_loss is None or bool(torch.isfinite(val_loss)):
            return
        lr = _current_lr(trainer)
        raise _diverged(f"Training diverged at epoch {trainer.current_epoch}: the validation loss is {val_loss.item()} "
                        f"(learning rate {lr:.3g} at the last step)", pl_module, lr, "from this epoch")

    def on_train_end(self, trainer, pl_module) -> None:
        self._check_pending(pl_module)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self._check_pending(pl_module)  # raising here stops the save before anything is written

    def _check_pending(self, pl_module) -> None:
        if self._pending is None:
            return
        (loss, done, epoch, step, lr), self._pending = self._pending, None
        if done is not None:
            done.synchronize()  # waits for that step only, not for the work queued since
        if not torch.isfinite(loss):
            raise _diverged(f"Training diverged at epoch {epoch}, step {step}: the loss is {loss.item()} (learning rate "
                            f"{lr:.3g} at that step)", pl_module, lr, "after that step")


def _current_lr(trainer) -> float:
    return trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")


def _diverged(what: str, pl_module, lr: float, unsaved: str) -> TrainingDiverged:
    configured = (pl_module.hparams.get("optimizer") or {}).get("lr", lr)
    return TrainingDiverged(
        f"{what}. Lower the learning rate, e.g. model.optimizer.lr={configured / 3:.2g} (now {configured:.3g}). "
        f"Nothing was saved {unsaved}: last.ckpt, if any, holds the last good state."
    )
