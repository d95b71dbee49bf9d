"""Stopping a sweep whose jobs run in worker processes (`hydra/launcher=joblib`).

Ctrl-C reaches the launching process and its running jobs alike. Left to joblib, the launcher would end the jobs at
once: no checkpoint, no record, no summary. Here the launcher only notes the request, in a marker file in the sweep
folder; each running job stops after its batch, saves and records itself as interrupted, jobs that had not started
are recorded as not run, and the launcher exits with the interruption's exit code once the jobs are done. With the
basic launcher the jobs run in the launching process, and an interrupted job ends the sweep itself.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from src.errors import what_stopped
from src.utils.atomic_files import write_text_atomically

log = logging.getLogger(__name__)

MARKER = ".stop_requested"  # "<exit code: 130 for Ctrl-C, 143 for SIGTERM> <the launching process's id>"
_LAUNCHER_PID = "MNIST_SWEEP_LAUNCHER_PID"  # inherited by the job processes


def _launcher_pid() -> str:
    return os.environ.get(_LAUNCHER_PID, str(os.getpid()))


def in_launching_process() -> bool:
    return _launcher_pid() == str(os.getpid())


def request_stop(sweep_dir: Path, exit_code: int) -> None:
    marker = sweep_dir / MARKER
    if requested_exit_code(sweep_dir) is None:  # whole or not at all: a job must not read half a marker and run on
        write_text_atomically(marker, f"{exit_code} {_launcher_pid()}")


def requested_exit_code(sweep_dir: Path) -> int | None:
    """The exit code a stop was requested with by this command; None if none was. A marker that another command
    left behind (one whose launcher was killed) is ignored, so a later resubmission into the folder still runs."""
    try:
        exit_code, launcher = (sweep_dir / MARKER).read_text(encoding="utf-8").split()
        return int(exit_code) if launcher == _launcher_pid() else None
    except (OSError, ValueError):
        return None


def clear_stop_request(sweep_dir: Path) -> None:
    (sweep_dir / MARKER).unlink(missing_ok=True)


def leave_interruptions_to_the_jobs(sweep_dir: Path) -> None:
    """In the launching process: note Ctrl-C and SIGTERM for the jobs instead of dying at once. A third Ctrl-C
    does end the launcher at once, in case a job hangs."""
    os.environ[_LAUNCHER_PID] = str(os.getpid())
    presses = 0

    def note(signum: int, frame) -> None:
        nonlocal presses
        presses += signum == signal.SIGINT
        if presses >= 3:
            raise KeyboardInterrupt
        request_stop(sweep_dir, 128 + signum)
        log.warning("%s: the running jobs stop after their batch and save a checkpoint; no further job starts%s.",
                    "Ctrl-C" if signum == signal.SIGINT else "SIGTERM",
                    " (Ctrl-C twice more to abandon them at once)" if signum == signal.SIGINT else "")

    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # ignored, as in a script's background job: it stays so
        signal.signal(signal.SIGINT, note)
    signal.signal(signal.SIGTERM, note)


# In a job of the sweep:


def _job_sweep_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().sweep.dir)


def sweep_stop_code() -> int | None:
    """The exit code this job's sweep was asked to stop with (130: Ctrl-C, 143: SIGTERM); None if it was not."""
    return requested_exit_code(_job_sweep_dir())


def not_run_record(exit_code: int) -> dict:
    """metrics.json of a job the sweep never started, stopped with `exit_code` before it."""
    return {"status": "not run", "error": f"the sweep was stopped ({what_stopped(exit_code)}) before this job started"}


def stop_sweep_after_interruption(exit_code: int, cfg: DictConfig) -> str | None:
    """After this job was interrupted. In the launching process, which must exit now: the summary of the jobs so far
    is written first (Hydra's end-of-sweep callback never runs then), and the sweep's closing message, to log after
    the job's own, is returned. In a worker: None; the jobs not yet started are told to skip, and the launching process
    exits once the running ones are done."""
    sweep_dir = _job_sweep_dir()
    if not in_launching_process():
        request_stop(sweep_dir, exit_code)
        return None
    from src.utils.command_words import counted
    from src.utils.continue_run import finish_the_sweep_advice
    from src.utils.sweep_summary import write_summary

    # The interruption is the message to report: a failure here only costs part of the record.
    try:
        not_started = record_jobs_not_started(sweep_dir, exit_code, cfg)
    except Exception as err:
        log.warning("Could not list the jobs that did not start: %s: %s", type(err).__name__, err)
        not_started = 0
    summary = f" Summary: {sweep_dir}/summary.{{csv,md,png}}."
    try:
        write_summary(sweep_dir)
    except Exception as err:
        log.warning("Could not write the sweep's summary: %s: %s", type(err).__name__, err)
        summary = ""
    later = f"; {counted(not_started, 'later job')} did not start" if not_started else ""
    return f"The sweep stops here{later}.{summary} {finish_the_sweep_advice(sweep_dir)}"


def record_jobs_not_started(sweep_dir: Path, exit_code: int, cfg: DictConfig) -> int:
    """The jobs that Hydra's basic launcher would have run after this one, in this process, recorded as not run in the
    folders they would have had (as the joblib launcher's jobs record themselves), so the summary lists the whole
    sweep. Left out: jobs given a checkpoint file (a resume's folder is the checkpoint's run's), folders that exist, and
    every job when this one's folder is not where this project's naming puts it (hydra.sweep.subdir set). `cfg`: this
    job's config. Returns how many jobs did not start."""
    from hydra.core.hydra_config import HydraConfig

    from src.utils.atomic_files import write_json_atomically
    from src.utils.jobs import recorded_sweep_batches
    from src.utils.run_folders import (LATEST, asks_for_last, job_dirname, job_folder_in_sweep, names_a_checkpoint_file,
                                       resume_job_subdir, swept_keys)

    hydra = HydraConfig.get()
    batches = recorded_sweep_batches(sweep_dir, in_batches=False)
    if batches is None:
        return 0  # another sweeper chooses its jobs as it goes
    jobs = [job for batch in batches for job in batch]
    later = jobs[hydra.job.num + 1:]
    swept, exclude = swept_keys(str(sweep_dir)), hydra.job.config.override_dirname.exclude_keys
    # With ckpt_path=last, cfg.ckpt_path is now the file it found, or null: the folder was chosen for "last".
    asked = LATEST if asks_for_last(hydra.overrides.task) else cfg.get("ckpt_path")
    named = resume_job_subdir(asked, cfg.get("train", False), hydra.job.num, hydra.overrides.task, exclude,
                              str(sweep_dir))
    if Path(hydra.runtime.output_dir).name != named:
        return len(later)  # this job's folder is not named as this project names them: no telling theirs
    for number, overrides in enumerate(later, start=hydra.job.num + 1):
        if any(names_a_checkpoint_file(override) for override in overrides):
            continue  # a resume of a checkpoint's own run, in that run's folder
        if asks_for_last(overrides) and job_folder_in_sweep(sweep_dir, overrides):
            continue  # it has a folder already, perhaps under another number
        job_dir = sweep_dir / job_dirname(number, overrides, swept, exclude)
        if job_dir.exists():
            continue
        (job_dir / ".hydra").mkdir(parents=True)
        OmegaConf.save(OmegaConf.create(list(overrides)), job_dir / ".hydra" / "overrides.yaml")
        write_json_atomically(job_dir / "metrics.json", not_run_record(exit_code))
    return len(later)
