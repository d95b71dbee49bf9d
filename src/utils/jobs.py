"""What a run needs to know about the Hydra job it runs in (single run or one job of a sweep)."""

from __future__ import annotations

import os

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def parallel_jobs() -> int:
    """How many jobs of this sweep run at the same time on this machine (joblib's n_jobs; else 1)."""
    if not HydraConfig.initialized():
        return 1
    n_jobs = HydraConfig.get().launcher.get("n_jobs")
    if n_jobs is None:
        return 1
    cpus = usable_cpus()
    if n_jobs < 0:  # joblib's count back from the number of cores: -1 is all of them, -2 all but one
        n_jobs = cpus + 1 + n_jobs
    return max(1, min(n_jobs, cpus))


def threads_per_job() -> int:
    """Split the CPU cores between parallel jobs: two jobs with all cores each just fight for them."""
    return max(1, usable_cpus() // parallel_jobs())


def usable_cpus() -> int:
    """The cores this process may run on: fewer than the machine has under taskset, or in a SLURM allocation."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def spawn_as_usual_in_joblib_workers() -> None:
    """joblib's worker processes (loky) make their own start method the default, which the processes torch starts from
    them (trainer.strategy=ddp_spawn) cannot find: every one failed with "cannot find context for 'loky'"."""
    import multiprocessing

    if multiprocessing.get_start_method(allow_none=True) == "loky":
        multiprocessing.set_start_method("spawn", force=True)
