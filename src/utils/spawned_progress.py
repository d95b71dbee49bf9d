"""trainer.strategy=ddp_spawn trains in processes it starts. Lightning hands back to the launching process only the
weights, the best checkpoint's path and the last metrics, so that process's trainer stayed at epoch 0, step 0, with its
callbacks as they were built: the run's record said 0 epochs, missed an early stop, and never knew that a resumed run
had nothing left to train. And Lightning leaves a gloo process group to be torn down at the spawned processes' exit,
which now and then aborted one of them (below). A stop (SIGTERM, Ctrl-C) is handled in those processes as under
plain DDP, and handed back too: Lightning left it to torch, which ended the other processes at once, before the stop
was saved, and failed the run with their traceback."""

from __future__ import annotations

import io
import multiprocessing
import os
import signal
import threading
from functools import partial
from typing import Any

import torch
from pytorch_lightning.strategies.launchers.multiprocessing import _MultiProcessingLauncher
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import move_data_to_device


class ProgressReturningLauncher(_MultiProcessingLauncher):
    """Also hands back rank 0's training progress (epoch and step counters), its callbacks' state and a stop, and ends
    each process's membership of the process group before that process exits. SIGTERM to the launching process is
    passed on to the processes it started, which stop at a batch boundary and save, as the processes of plain DDP do."""

    stop_raised = False  # in a started process: whether a stop ended its fit (it was saved, as under plain DDP)
    _sigterm_came = False  # in the launching process: whether SIGTERM came while the processes ran
    _stopped_by: str | None = None  # in the launching process: the stop that ended the fit of the processes it started
    _stop_handed_back = False  # in the launching process: whether they handed a stop back (ended fit or not)

    def launch(self, function, *args, trainer=None, **kwargs) -> Any:
        from torch.multiprocessing.spawn import ProcessException, ProcessExitedException

        from src.callbacks.safety import SpawnedProcessesStopped
        from src.utils.sigterm import Terminated

        self._sigterm_came, self._stopped_by, self._stop_handed_back = False, None, False
        self.procs = []  # Lightning keeps a finished launch's: a SIGTERM while these start must reach the new ones
        passing_on = threading.current_thread() is threading.main_thread()  # signals can only be caught there
        previous = signal.signal(signal.SIGTERM, self._pass_sigterm_on) if passing_on else None
        try:
            results = super().launch(function, *args, trainer=trainer, **kwargs)
        except ProcessException as ended:
            if self._sigterm_came and trainer is not None and trainer.state.fn == TrainerFn.TESTING:
                raise SpawnedProcessesStopped("SIGTERM") from ended  # Lightning's SIGTERMException, or killed by it
            if self._sigterm_came and isinstance(ended, ProcessExitedException):
                raise Terminated from ended  # killed by it before taking it over (while setting up, say)
            raise
        finally:
            if passing_on:
                signal.signal(signal.SIGTERM, previous)
        if self._stopped_by:
            raise SpawnedProcessesStopped(self._stopped_by)
        if self._sigterm_came and not self._stop_handed_back:  # before they took it over, or after they had finished
            raise Terminated
        return results

    def _pass_sigterm_on(self, signum, frame) -> None:
        """Sent to the process group, it reached them too: a second one is noted as the first was."""
        self._sigterm_came = True
        for process in self.procs or multiprocessing.active_children():  # the latter while they are being started
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signum)

    def _wrapping_function(self, process_idx, trainer, function, *args, **kwargs) -> None:
        from src.utils.quiet_lightning import quiet_lightning

        quiet_lightning()  # a started process (not forked) has none of the launching process's filters
        if trainer is not None:
            function = partial(self._saving_a_stop, trainer, function)
        super()._wrapping_function(process_idx, trainer, function, *args, **kwargs)
        leave_process_group()

    def _saving_a_stop(self, trainer, function, *args, **kwargs) -> Any:
        """`function` (the trainer's fit or test), whose stop in training gets what Lightning gives it under plain DDP
        (the callbacks' on_exception, which saves last.ckpt) and ends the fit as usual: raised, torch would end the
        other processes at once. Every process stops at the same batch (GracefulStop), so none is left waiting."""
        from pytorch_lightning.trainer.call import _interrupt

        from src.callbacks.safety import INTERRUPTIONS

        try:
            return function(*args, **kwargs)
        except INTERRUPTIONS as stop:
            if trainer.state.fn != TrainerFn.FITTING:
                raise
            _interrupt(trainer, stop)
            trainer._teardown()
            trainer.state.stage = None
            self.stop_raised = True
            return None

    def get_extra_results(self, trainer) -> dict[str, Any]:
        from src.callbacks.safety import GracefulStop

        extra = super().get_extra_results(trainer)
        if trainer.state.fn != TrainerFn.FITTING:  # a test pass changes neither
            return extra
        graceful = next((cb for cb in trainer.callbacks if isinstance(cb, GracefulStop) and cb.stop_requested), None)
        if graceful:  # also a stop in an epoch's last batch, which ends the fit as an early stop does
            extra["stop"] = {"by": graceful.stopped_by, "raised": self.stop_raised}
        state = {"fit_loop": trainer.fit_loop.state_dict(),
                 "callbacks": {cb.state_key: cb.state_dict() for cb in trainer.callbacks}}
        # On the CPU and as bytes, as Lightning sends its metrics: tensors in a queue need their sender alive, and a
        # GPU tensor would start CUDA in the launching process, which ddp_fork then refuses to fork from.
        state = move_data_to_device(state, "cpu")
        buffer = io.BytesIO()
        torch.save(state, buffer)
        return {**extra, "progress_bytes": buffer.getvalue()}

    def update_main_process_results(self, trainer, extra: dict[str, Any]) -> None:
        from src.callbacks.safety import GracefulStop

        super().update_main_process_results(trainer, extra)
        stop = extra.get("stop")
        self._stop_handed_back = bool(stop)
        if stop:
            for callback in trainer.callbacks:
                if isinstance(callback, GracefulStop):
                    callback.stopped_elsewhere(stop["by"])
            self._stopped_by = stop["by"] if stop["raised"] else None
        if "progress_bytes" not in extra:
            return
        state = torch.load(io.BytesIO(extra["progress_bytes"]), weights_only=True)
        trainer.fit_loop.load_state_dict(state["fit_loop"])
        for callback in trainer.callbacks:
            if callback.state_key in state["callbacks"]:
                callback.load_state_dict(state["callbacks"][callback.state_key])


def leave_process_group() -> None:
    """Lightning destroys only an NCCL group at exit. A gloo group left to the exit aborted a process that ended while
    another still held their connection ("terminate called without an active exception", SIGABRT; rank 0 draws the
    test figures after the last collective, so rank 1 ends first), and torch then failed the whole run. A bare
    two-process probe of that pattern (rank 0 busy for 0.5 s after the last collective): 7 of 100 runs aborted
    without this, none of 90 with it."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()  # nobody leaves while another may still be talking to it
        torch.distributed.destroy_process_group()


def return_spawned_progress(trainer) -> None:
    """Give a ddp_spawn trainer the launcher above (a launcher configured otherwise is left alone)."""
    launcher = trainer.strategy.launcher
    if type(launcher) is _MultiProcessingLauncher:
        trainer.strategy._launcher = ProgressReturningLauncher(trainer.strategy, start_method=launcher._start_method)
