"""trainer.strategy=ddp_spawn trains in processes it starts. Lightning hands back to the launching process only the
weights, the best checkpoint's path and the last metrics, so that process's trainer stayed at epoch 0, step 0, with its
callbacks as they were built: the run's record said 0 epochs, missed an early stop, and never knew that a resumed run
had nothing left to train. And Lightning leaves a gloo process group to be torn down at the spawned processes' exit,
which now and then aborted one of them (below)."""

from __future__ import annotations

import io
from typing import Any

import torch
from pytorch_lightning.strategies.launchers.multiprocessing import _MultiProcessingLauncher
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import move_data_to_device


class ProgressReturningLauncher(_MultiProcessingLauncher):
    """Also hands back rank 0's training progress (epoch and step counters) and its callbacks' state, and ends each
    process's membership of the process group before that process exits."""

    def _wrapping_function(self, *args, **kwargs) -> None:
        super()._wrapping_function(*args, **kwargs)
        leave_process_group()

    def get_extra_results(self, trainer) -> dict[str, Any]:
        extra = super().get_extra_results(trainer)
        if trainer.state.fn != TrainerFn.FITTING:  # a test pass changes neither
            return extra
        state = {"fit_loop": trainer.fit_loop.state_dict(),
                 "callbacks": {cb.state_key: cb.state_dict() for cb in trainer.callbacks}}
        # On the CPU and as bytes, as Lightning sends its metrics: tensors in a queue need their sender alive, and a
        # GPU tensor would start CUDA in the launching process, which ddp_fork then refuses to fork from.
        state = move_data_to_device(state, "cpu")
        buffer = io.BytesIO()
        torch.save(state, buffer)
        return {**extra, "progress_bytes": buffer.getvalue()}

    def update_main_process_results(self, trainer, extra: dict[str, Any]) -> None:
        super().update_main_process_results(trainer, extra)
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
