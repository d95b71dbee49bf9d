"""Training and testing that turn a stop (SIGTERM, Ctrl-C) or a setting Lightning refuses only once running into one
message: what was saved, and the command that resumes or tests it."""

from __future__ import annotations

from pathlib import Path

from src.errors import STOP_EXIT_CODES, RunInterrupted, UserInputError, exception_chain
from src.utils.command_words import resume_with, run_it_again


def fit_or_report_interruption(trainer, model, datamodule, ckpt_path: str | None, tests: bool = True) -> None:
    """trainer.fit; after SIGTERM or Ctrl-C (a checkpoint was saved at a batch boundary), or a second Ctrl-C (nothing
    saved then), say how to resume. `tests`: whether the run tests after its training."""
    from pytorch_lightning.utilities.exceptions import MisconfigurationException

    from src.callbacks.safety import (INTERRUPTIONS, GracefulStop, ResumableCheckpoint, SpawnedProcessesStopped,
                                      aborted_by_ctrl_c)

    resumable = [cb for cb in trainer.callbacks if isinstance(cb, ResumableCheckpoint)]
    where = f"{resumable[0].dirpath}/{resumable[0].filename}{resumable[0].FILE_EXTENSION}" if resumable else None
    before = _modified(where)
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        graceful = next((cb for cb in trainer.callbacks if isinstance(cb, GracefulStop) and cb.stop_requested), None)
        if graceful:  # asked for in an epoch's last batch or last accumulation, which Lightning ends as usual
            at = f"at the end of epoch {trainer.current_epoch - 1}, step {trainer.global_step}"
            if 0 <= (trainer.max_epochs or -1) <= trainer.current_epoch or 0 <= trainer.max_steps <= trainer.global_step:
                at = f"after its last epoch ({trainer.current_epoch - 1}) had trained" + (", before testing" if tests else "")
            raise RunInterrupted(_stopped(graceful.stopped_by, at, where), exit_code=STOP_EXIT_CODES[graceful.stopped_by],
                                 agreed=True)
    except ValueError as err:  # Lightning checks this only once it knows the epoch's length
        if "val_check_interval" not in str(err):
            raise
        batches = trainer.fit_loop.max_batches
        raise UserInputError(
            f"trainer.val_check_interval={trainer.val_check_interval} is more than the {batches} training batches of "
            f"an epoch, so validation would never run; nothing was trained. Use at most {batches}, a fraction of an "
            "epoch (0.25 validates four times per epoch), or add ++trainer.check_val_every_n_epoch=null to count "
            "batches across epochs."
        ) from err
    except (*INTERRUPTIONS, SpawnedProcessesStopped) as stop:
        by = "Ctrl-C" if "Ctrl-C" in str(stop) else "SIGTERM"
        at = f"at epoch {trainer.current_epoch}, step {trainer.global_step}"
        written = where if where and _modified(where) != before else None
        message = _stopped(by, at, written, ckpt_path, bool(where))
        lightnings = None if resumable else _lightnings_own_checkpoint(trainer)
        best = None if resumable else _best_checkpoint(trainer)
        if lightnings:
            message = (f"Training stopped by {by} {at}, without a checkpoint of this state (the run has none of its own "
                       f"checkpoint callbacks). Lightning's own checkpoint of the last finished epoch is {lightnings}; "
                       f"{resume_with(lightnings)}")
        elif best:  # callbacks.last_checkpoint=null: the best epoch's checkpoint is the latest state there is
            message = (f"Training stopped by {by} {at}, without a checkpoint of this state (callbacks.last_checkpoint "
                       f"is off). The best epoch's checkpoint so far is {best}; to train on from there, "
                       f"{resume_with(best)}")
        raise RunInterrupted(message, exit_code=STOP_EXIT_CODES[by], agreed=True) from stop  # at one batch in each process
    except OSError as err:  # saving the state at a stop failed (a full disk): still a stop, not a failed run
        stop = next((cause for cause in exception_chain(err) if isinstance(cause, INTERRUPTIONS)), None)
        if stop is None:
            raise
        by = "Ctrl-C" if "Ctrl-C" in str(stop) else "SIGTERM"
        last = where if where and Path(where).is_file() else ckpt_path
        # The save itself, or what Lightning does after it (the loggers' last write), may be what failed.
        failed = "and saved its state, but then failed" if any(cb.saved_at_stop for cb in resumable) else (
            "but saving its state failed")
        raise RunInterrupted(
            f"Training stopped by {by} at epoch {trainer.current_epoch}, step {trainer.global_step}, {failed} "
            f"({' '.join(str(err).split())}). "
            + (f"{last} holds the last saved state; {resume_with(last)}" if last else "No checkpoint had been saved yet."),
            exit_code=STOP_EXIT_CODES[by],
        ) from err
    except (RuntimeError, MisconfigurationException) as err:
        # A callback's `monitor` that no metric has (callbacks.early_stopping.monitor=val/los): Lightning finds out at
        # the end of the first validation, and its message lists the metrics there are.
        reason = " ".join(str(err).split())
        if "conditioned on metric" not in reason and "could not find the monitored key" not in reason:
            raise
        raise UserInputError(f"A callback watches a metric this run does not log: {reason}") from err
    except (SystemExit, KeyboardInterrupt) as stop:  # a second Ctrl-C, or one before training began: no save
        if not aborted_by_ctrl_c(stop):
            raise
        # This run's last save (Lightning's own under callbacks=null), else its starting point.
        last = where if where and Path(where).is_file() else (None if resumable else _lightnings_own_checkpoint(trainer))
        last = last or ckpt_path
        # Nothing to say before the first step, nor in the launching process of ddp_spawn (its trainer never steps).
        at = f" at epoch {trainer.current_epoch}, step {trainer.global_step}" if trainer.global_step else ""
        raise RunInterrupted(
            f"Training aborted by Ctrl-C{at}, without saving. "
            + (f"{last} holds the last saved state; {resume_with(last)}" if last
               else "No checkpoint had been saved yet."),
            exit_code=STOP_EXIT_CODES["Ctrl-C"],
        ) from stop
    finally:  # after any failure too: in a sweep, a later job's Ctrl-C would otherwise go to this job's handler
        for callback in trainer.callbacks:
            if isinstance(callback, GracefulStop):
                callback.give_back_ctrl_c()


def _lightnings_own_checkpoint(trainer) -> str | None:
    """The latest save of the checkpoint callback Lightning adds itself (callbacks=null), at each epoch's end; None
    without one, or for a callback that keeps the best by a metric, not the latest."""
    callback = trainer.checkpoint_callback
    if callback is None or callback.monitor is not None:
        return None
    return callback.best_model_path or None


def _best_checkpoint(trainer) -> str | None:
    """The best epoch's checkpoint saved so far by a checkpoint callback that keeps the best by a metric."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    return next((cb.best_model_path for cb in trainer.callbacks
                 if isinstance(cb, ModelCheckpoint) and cb.monitor and cb.best_model_path), None)


def _stopped(by: str, at: str, saved: str | None, started_from: str | None = None, saving: bool = True) -> str:
    """What was saved when training stopped, and how to go on. `saved`: the checkpoint written now; `started_from`:
    this run's ckpt_path; `saving`: whether a checkpoint callback could have saved."""
    if saved:
        return f"Training stopped by {by} {at}. Saved {saved}; {resume_with(saved)}"
    if not saving:
        return (f"Training stopped by {by} {at}. Nothing was saved: the run has no checkpoint callback that saves at a "
                f"stop (callbacks.last_checkpoint).")
    # Stopped before its first training step (in the sanity check, whose epoch and step Lightning has not restored).
    if started_from:
        return (f"Training stopped by {by} before its first step, so nothing was saved: {started_from} is still the "
                f"last state; {resume_with(started_from)}")
    return f"Training stopped by {by} before its first step: nothing was trained or saved. {run_it_again()}"


def _modified(path: str | None) -> int | None:
    """When the file at `path` was last written (None: no such file)."""
    try:
        return Path(path).stat().st_mtime_ns if path else None
    except FileNotFoundError:
        return None


def _best_checkpoint_missing(path: Path) -> str:
    """The best checkpoint a run recorded (its last.ckpt holds the record), deleted or moved since: Lightning's
    FileNotFoundError would end the run in a traceback."""
    from src.models.checkpoint_file import checkpoints_beside, listed
    from src.utils.command_words import ckpt_path_override, command, eval_overrides

    problem = (f"{path}: the run's best checkpoint, which it recorded, is missing (deleted or moved since it was "
               "saved): nothing was tested. Put it back and run the same command again")
    others = checkpoints_beside(path)
    if not others:
        return f"{problem}."
    test_newest = command("eval", [*eval_overrides(), ckpt_path_override(str(others[0]))])
    return (f"{problem}, or test another checkpoint of the run (newest first: {listed(others)}; last.ckpt holds the "
            f"latest weights, not the best), e.g. {test_newest}")


def test_or_report_interruption(trainer, model, datamodule, ckpt_path: str | None, advice: str) -> dict:
    """trainer.test's results. After SIGTERM Lightning ends the test pass with a SystemExit that would exit 0 as if
    all went well, and after Ctrl-C with exit code 1; here each becomes one message, with `advice` on what to run
    next, and exit code 143 or 130. A setting Lightning refuses only now is one line too."""
    from pytorch_lightning.utilities.exceptions import MisconfigurationException

    from src.callbacks.safety import INTERRUPTIONS, SpawnedProcessesStopped, aborted_by_ctrl_c

    if ckpt_path and not Path(ckpt_path).is_file():
        raise UserInputError(_best_checkpoint_missing(Path(ckpt_path)))
    try:
        (results,) = trainer.test(model, datamodule=datamodule, ckpt_path=ckpt_path)
    except MisconfigurationException as err:  # limit_test_batches=0.05 leaving no batch of the test set, say
        reason = " ".join(str(err).split()).rstrip(".")
        raise UserInputError(f"Testing could not start: {reason}. Nothing was tested; checkpoints written are "
                             "kept.") from err
    except (*INTERRUPTIONS, SpawnedProcessesStopped) as stop:
        raise RunInterrupted(f"Testing stopped by SIGTERM: no test results were written. {advice}",
                             exit_code=STOP_EXIT_CODES["SIGTERM"]) from stop
    except (SystemExit, KeyboardInterrupt) as stop:  # Lightning's exit code 1 after Ctrl-C would read as a failure
        if not aborted_by_ctrl_c(stop):
            raise
        raise RunInterrupted(f"Testing stopped by Ctrl-C: no test results were written. {advice}",
                             exit_code=STOP_EXIT_CODES["Ctrl-C"]) from stop
    return results
