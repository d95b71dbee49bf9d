"""Expected failures. The entry points print their message as one line and exit with `exit_code`, without a
traceback (set HYDRA_FULL_ERROR=1 to see it); in a sweep the job is recorded as failed and the sweep goes on
(except after ResumeRefused or RunInterrupted)."""

import importlib
import os
import re
import sys
import traceback

# The exit code of a run stopped by Ctrl-C or SIGTERM: 128 + the signal's number, as a shell reports it.
STOP_EXIT_CODES = {"Ctrl-C": 130, "SIGTERM": 143}


def what_stopped(exit_code: int) -> str:
    """"Ctrl-C" or "SIGTERM", from the exit code of a stopped run."""
    return "Ctrl-C" if exit_code == STOP_EXIT_CODES["Ctrl-C"] else "SIGTERM"


def exception_chain(err: BaseException | None) -> list[BaseException]:
    """`err` and the exceptions it was raised from or while handling (at most 20: a cycle must not loop forever)."""
    chain = []
    while err is not None and len(chain) < 20:
        chain.append(err)
        err = err.__cause__ or err.__context__
    return chain


class ReportedError(RuntimeError):
    exit_code = 1
    status = "failed"  # what a sweep summary calls the job

    def _render_traceback_(self) -> list[str]:
        """What IPython (a notebook running src.api) shows: the message alone, as the command line prints it, not
        dozens of lines through Lightning. HYDRA_FULL_ERROR=1 shows the traceback there too."""
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            return "".join(traceback.format_exception(self)).splitlines()
        return [f"{type(self).__name__}: {self}"]


class UserInputError(ReportedError):
    """Bad config value, missing or malformed file: something the user can fix."""


class ResumeRefused(UserInputError):
    """This command cannot continue that checkpoint (another model, data settings, seed, train file, schedule length or
    averaging, or a checkpoint older than its run's latest state). It stops even a sweep: a resubmission with the wrong
    overrides must fail loudly and leave the job's folder as it was."""


class RunFolderTaken(ResumeRefused):
    """A new run pointed at a folder that holds one (a fixed hydra.run.dir or hydra.sweep.dir run again). Like a
    refused resume, it stops even a sweep and leaves the folder as it was."""


class TrainingDiverged(ReportedError):
    """The loss became NaN or infinite."""


class RunInterrupted(ReportedError):
    """Stopped by SIGTERM or Ctrl-C: training after saving a resumable checkpoint, testing before writing results.
    It stops a sweep too: SLURM's SIGTERM and a user's Ctrl-C are meant for the whole process."""

    status = "interrupted"

    def __init__(self, message: str, exit_code: int, agreed: bool = False) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.agreed = agreed  # a stop in training every process of a DDP run made at the same batch, and reports alike


def unresolved_interpolation(failure: BaseException) -> UserInputError | None:
    """A setting whose ${...} cannot be resolved (`${oc.env:NAME}` with NAME unset, a key that is not there) in
    `failure`'s chain, as one line naming the setting; None for any other failure. Hydra printed its traceback (one
    of a hundred lines with a failed callback's warning, for a run folder's)."""
    from omegaconf.errors import InterpolationResolutionError

    err = next((e for e in exception_chain(failure) if isinstance(e, InterpolationResolutionError)), None)
    if err is None:
        return None
    reason = (getattr(err, "msg", None) or str(err)).splitlines()[0]
    unset = re.search(r"Environment variable '(\w+)' not found", reason)
    if unset:
        reason = (f"the environment variable {unset[1]} is not set: set it, or give a default: "
                  f"${{oc.env:{unset[1]},<default>}}")
    problem = UserInputError(f"{getattr(err, 'full_key', None) or 'A setting'} cannot be resolved: {reason}.")
    problem.__cause__ = err
    return problem


def raised_in_a_spawned_process(failure: BaseException) -> ReportedError | None:
    """The error a process started by `trainer.strategy=ddp_spawn` reported (a refused resume, bad data), which torch
    hands back as a ProcessRaisedException holding that process's traceback as text; None for any other failure."""
    spawn = sys.modules.get("torch.multiprocessing.spawn")
    if spawn is None or not isinstance(failure, spawn.ProcessRaisedException):
        return None
    # The last traceback's exception: the one that ended the process (one raised while handling ours is not ours).
    lines = str(failure).rsplit("Traceback (most recent call last):", 1)[-1].splitlines()
    raised = next((number for number, line in enumerate(lines) if line and not line[0].isspace()), None)
    found = re.fullmatch(r"(src(?:\.\w+)*)\.(\w+): (.*)", lines[raised]) if raised is not None else None
    if not found:
        return None
    module, name, first_line = found.groups()
    try:
        error_class = getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None
    if not isinstance(error_class, type) or not issubclass(error_class, ReportedError) or error_class is RunInterrupted:
        return None  # RunInterrupted: its exit code is not in the text
    error = error_class("\n".join([first_line, *lines[raised + 1:]]).strip())
    error.__cause__ = failure  # shown with HYDRA_FULL_ERROR=1
    return error
