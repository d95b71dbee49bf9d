"""What a run needs to know about the Hydra job it runs in (single run or one job of a sweep)."""

from __future__ import annotations

import os
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def joblib_workers() -> int:
    """How many worker processes joblib's launcher runs this sweep's jobs in (its n_jobs; else 1). joblib starts each
    with OMP_NUM_THREADS set to the cores divided by this, however few jobs the sweep has."""
    if not HydraConfig.initialized():
        return 1
    n_jobs = HydraConfig.get().launcher.get("n_jobs")
    if n_jobs is None:
        return 1
    cpus = usable_cpus()
    if n_jobs < 0:  # joblib's count back from the number of cores: -1 is all of them, -2 all but one
        n_jobs = cpus + 1 + n_jobs
    return max(1, min(n_jobs, cpus))


def parallel_jobs() -> int:
    """How many jobs of this sweep run at the same time on this machine: joblib's workers, but no more than the jobs
    the sweep hands them (a sweep of 2 jobs with n_jobs=-1 on 16 cores runs 2 at a time, not 16)."""
    workers = joblib_workers()
    return min(workers, sweep_batch_size() or workers) if workers > 1 else 1


def sweep_batch_size() -> int | None:
    """How many jobs Hydra's basic sweeper launches at once (all of them, unless hydra.sweeper.max_batch_size), from
    the sweep's record (multirun.yaml, written before its first job starts); None where that cannot be told."""
    try:
        batches = recorded_sweep_batches(Path(HydraConfig.get().sweep.dir))
    except Exception:  # no record (a job run by other means): count joblib's workers
        return None
    return max((len(batch) for batch in batches), default=None) if batches is not None else None


def recorded_sweep_batches(sweep_dir: Path, in_batches: bool = True) -> list[list[list[str]]] | None:
    """The jobs of the sweep that `sweep_dir`/multirun.yaml records, each as its overrides, in the batches Hydra's
    basic sweeper launches them (`in_batches` false: one batch of all); None for another sweeper, which chooses its
    jobs as it goes. Raises what reading the record raises."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    # An override may hold ${...}: kept as written.
    record = OmegaConf.to_container(OmegaConf.load(sweep_dir / "multirun.yaml").hydra, resolve=False)
    sweeper = record["sweeper"]
    if not str(sweeper.get("_target_", "")).endswith(".BasicSweeper"):
        return None
    # In the basic sweeper's order: its params, then the command line's overrides (glob() needs the config loader).
    settings = [f"{key}={value}" for key, value in (sweeper.get("params") or {}).items()]
    hydras = GlobalHydra.instance()
    parser = OverridesParser.create(config_loader=hydras.config_loader() if hydras.is_initialized() else None)
    overrides = parser.parse_overrides([*settings, *record["overrides"]["task"]])
    return BasicSweeper.split_arguments(overrides, sweeper.get("max_batch_size") if in_batches else None)


def threads_per_job(jobs: int | None = None) -> int:
    """Split the CPU cores between `jobs` parallel jobs (parallel_jobs() if not given): two jobs with all cores each
    just fight for them."""
    return max(1, usable_cpus() // (jobs or parallel_jobs()))


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
