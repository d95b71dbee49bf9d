"""Running as a SLURM job. SLURM warns a job before its time limit with the signal its script asks for; Lightning's
auto-requeue expects SIGUSR1 (`#SBATCH --signal=USR1@120`). Here SIGUSR1 stops the run as SIGTERM does (last.ckpt saved
at a batch boundary), and then the job is requeued if its command (one an sbatch script runs) continues its own folder
(src.train with ckpt_path=last and hydra.run.dir, or a sweep's hydra.sweep.dir): run again, it goes on where it
stopped. Lightning's own auto-requeue is off (src/utils/trainer_setup.py): it saved hpc_ckpt_<n>.ckpt into the run
folder, which Lightning then resumed from, and even tested, without any of this project's resume checks."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading

log = logging.getLogger(__name__)

WARNING_SIGNAL = getattr(signal, "SIGUSR1", None)  # None on Windows (no SLURM there): every command imports this
_warned = threading.Event()  # SIGUSR1 came in this process


def in_slurm_job() -> bool:
    """Inside a SLURM job, as Lightning detects one (not an interactive allocation: job name bash or interactive)."""
    return "SLURM_NTASKS" in os.environ and os.environ.get("SLURM_JOB_NAME") not in ("bash", "interactive")


def stop_on_slurms_warning() -> None:
    """In a SLURM job, take SIGUSR1 for SIGTERM from now on (calling it again changes nothing)."""
    if WARNING_SIGNAL is None or not in_slurm_job() or threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(WARNING_SIGNAL) is _stop_as_for_sigterm:
        return
    signal.signal(WARNING_SIGNAL, _stop_as_for_sigterm)


def _stop_as_for_sigterm(signum, frame) -> None:
    if not _warned.is_set():
        log.warning("SIGUSR1 (SLURM's warning before the job's time limit): stopping as for SIGTERM.")
    _warned.set()
    os.kill(os.getpid(), signal.SIGTERM)


def requeue_if_warned(arguments: list[str], entry_point: str) -> None:
    """After SIGUSR1 stopped this command: requeue the SLURM job (from its first task only) when the command continues
    where it stopped, else say why not (it would start over, each time it reached the time limit)."""
    from src.utils.path_overrides import is_multirun
    from src.utils.run_folders import asks_for_last

    if not _warned.is_set() or os.environ.get("SLURM_PROCID", "0") != "0":
        return
    job = os.environ.get("SLURM_JOB_ID", "")
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    if entry_point != "train":
        log.warning("SLURM job %s is not requeued: src.%s has nothing to continue from; submit the job again.", job,
                    entry_point)
        return
    folder = "hydra.sweep.dir" if is_multirun(arguments) else "hydra.run.dir"
    if not (asks_for_last(arguments) and any(word.lstrip("+").startswith(f"{folder}=") for word in arguments)):
        log.warning("SLURM job %s is not requeued: its command would start over in a new folder. To have it continue "
                    "where it stopped, give it its folder on the command line, and ckpt_path=last: %s=<folder> "
                    "ckpt_path=last.", job, folder)
        return
    try:
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
        failure = (result.stderr.strip() or result.stdout.strip() or f"exit code {result.returncode}"
                   if result.returncode else None)
    except (OSError, subprocess.SubprocessError) as err:
        failure = str(err)
    if failure is None:
        log.info("Requeued SLURM job %s: run again, its command continues from last.ckpt.", job)
    else:
        log.error("Requeueing SLURM job %s failed (%s): requeue it with scontrol requeue %s, or submit the job "
                  "again.", job, failure, job)
