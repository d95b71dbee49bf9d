"""Expected failures. The entry points print their message as one line and exit with `exit_code`, without a
traceback (set HYDRA_FULL_ERROR=1 to see it); in a sweep the job is recorded as failed and the sweep goes on
(except after ResumeRefused or RunInterrupted)."""

import os
import traceback


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
    """This command cannot continue that checkpoint (another model, data split, schedule length or averaging). It stops even a
    sweep: a resubmission with the wrong overrides must fail loudly and leave the job's folder as it was."""


class RunFolderTaken(ResumeRefused):
    """A new run pointed at a folder that holds one (a fixed hydra.run.dir or hydra.sweep.dir run again). Like a
    refused resume, it stops even a sweep and leaves the folder as it was."""


class TrainingDiverged(ReportedError):
    """The loss became NaN or infinite."""


class RunInterrupted(ReportedError):
    """Stopped by SIGTERM or Ctrl-C: training after saving a resumable checkpoint, testing before writing results.
    It stops a sweep too: SLURM's SIGTERM and a user's Ctrl-C are meant for the whole process."""

    status = "interrupted"

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
