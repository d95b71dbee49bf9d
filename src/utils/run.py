"""What the entry points train and eval do around their own work: show and save the config, seed, write
metrics.json and a summary, and turn failures into one clear message (predict uses that part too). The trainer is
built in trainer_setup.py; the folders a run may write into are checked in output_folders.py."""

from __future__ import annotations

import logging
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from src.errors import (STOP_EXIT_CODES, ReportedError, ResumeRefused, RunInterrupted, UserInputError,
                        raised_in_a_spawned_process, unresolved_interpolation)
from src.utils.atomic_files import write_json_atomically

log = logging.getLogger(__name__)


def start_run(cfg: DictConfig, save: bool = True, continuing: bool = False) -> Path:
    """Refuse a run folder that holds another run (unless `continuing` a checkpoint inside it), print and (with
    `save`) save the config, split CPU threads between parallel sweep jobs, seed everything."""
    import pytorch_lightning as pl
    import torch

    from src.utils.command_words import counted
    from src.utils.config_io import print_config_tree, save_config
    from src.utils.jobs import joblib_workers, parallel_jobs, spawn_as_usual_in_joblib_workers, threads_per_job
    from src.utils.output_folders import refuse_a_used_folder

    output_dir = Path(cfg.paths.output_dir)
    if not continuing:
        refuse_a_used_folder(output_dir, resumable=bool(cfg.get("train")))  # eval has no `train`: nothing to resume
    if is_rank_zero():  # DDP relaunches this script once per extra process
        print_config_tree(cfg)
        if save:
            save_config(cfg, output_dir)
    spawn_as_usual_in_joblib_workers()
    if joblib_workers() > 1:  # also for one job at a time: joblib starts its workers with cores / n_jobs threads each
        jobs = parallel_jobs()  # read from the sweep's record, once
        torch.set_num_threads(threads_per_job(jobs))
        if jobs > 1:
            log.info("%d sweep jobs run in parallel: using %s", jobs, counted(torch.get_num_threads(), "CPU thread"))
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    return output_dir


def is_rank_zero() -> bool:
    from pytorch_lightning.utilities import rank_zero_only

    return rank_zero_only.rank == 0


def finish_run(metrics: dict, output_dir: Path, loggers: list) -> None:
    from pytorch_lightning.loggers import TensorBoardLogger

    if not is_rank_zero():
        return
    write_json_atomically(output_dir / "metrics.json", metrics)
    lines = ["", "=" * 60]
    if "test/acc" in metrics:
        images = int(metrics.get("test/images", 10_000))  # fewer with trainer.limit_test_batches, or other data
        tested_on = "official 10k MNIST test set" if images == 10_000 else f"{images} test images"
        lines.append(f"test accuracy : {metrics['test/acc']:.2%}  ({tested_on})")
        lines.append(f"test loss     : {metrics['test/loss']:.4f}")
    if "val/acc_best" in metrics:
        lines.append(f"best val acc  : {metrics['val/acc_best']:.2%}")
    if metrics.get("stopped_early"):
        lines.append(f"stopped early : {metrics['stopped_early']}")
    lines.append(f"run dir       : {output_dir}")
    if metrics.get("best_model_path"):
        lines.append(f"checkpoint    : {metrics['best_model_path']}")
    for logger in (logger for logger in loggers if isinstance(logger, TensorBoardLogger)):
        inside = Path(logger.log_dir).resolve().is_relative_to(output_dir.resolve())
        shown = output_dir if inside else Path(logger.save_dir)  # a folder shared with other runs: all of them
        lines.append(f"tensorboard   : tensorboard --logdir {shlex.quote(str(shown))}")
    lines.append("=" * 60)
    log.info("\n".join(lines))


def run_reporting_failures(work: Callable[[DictConfig], Any], cfg: DictConfig) -> Any | None:
    """Run `work(cfg)`. A ReportedError becomes one logged line and its exit code (with its traceback under
    HYDRA_FULL_ERROR=1). In a sweep, any other failure is recorded in the job's metrics.json and the sweep goes
    on (one diverging lr must not cost the rest); a refused resume stops it, with the job's folder untouched, and
    so does an interruption (SIGTERM, Ctrl-C), after recording the job as interrupted (with parallel jobs, the
    launching process stops the sweep: src/utils/sweep_stop.py); a job that starts after that is recorded as not run."""
    from src.utils.disk_errors import disk_problem, one_line_for_disk_errors_in_threads
    from src.utils.jobs import in_multirun
    from src.utils.output_folders import output_dir_problem
    from src.utils.sigterm import Terminated, sigterm_raises
    from src.utils.slurm import stop_on_slurms_warning
    from src.utils.sweep_stop import not_run_record, stop_sweep_after_interruption, sweep_stop_code

    started = time.perf_counter()
    one_line_for_disk_errors_in_threads()
    stop_on_slurms_warning()  # in a worker process of a sweep too
    problem = output_dir_problem(cfg)
    if problem:
        log.error("%s", problem)
        _discard_this_runs_folder(cfg)
        sys.exit(1)
    stop_code = sweep_stop_code() if in_multirun() else None
    if stop_code is not None:
        from src.utils.run_folders import run_status

        if run_status(Path(cfg.paths.output_dir)) in (None, "not run"):  # a job continued there keeps its record
            _record_job(cfg, not_run_record(stop_code))
        return None
    from src.utils.run_lock import holding_run_folder

    folder_setting = "hydra.sweep.dir" if in_multirun() else "hydra.run.dir"
    try:
        try:
            with sigterm_raises(), holding_run_folder(Path(cfg.paths.output_dir), folder_setting):
                return work(cfg)
        except KeyboardInterrupt as stop:  # outside training and testing, which report their own (imports, data loading)
            raise interrupted_outside_training(cfg=cfg) from stop
        except Terminated as stop:
            raise interrupted_outside_training(by="SIGTERM", cfg=cfg) from stop
    except Exception as failure:
        err = disk_problem(failure, cfg) or raised_in_a_spawned_process(failure) or unresolved_interpolation(failure) or \
            failure
        reported = isinstance(err, ReportedError)
        sweep_closing = None  # an interrupted sweep's last words, after the job's own
        if in_multirun() and not isinstance(err, ResumeRefused):
            message = str(err).splitlines()[0] if str(err) else ""
            _record_job(cfg, {"status": err.status if reported else "failed", "error": f"{type(err).__name__}: {message}",
                              "wall_seconds": round(time.perf_counter() - started, 2)})
            if isinstance(err, RunInterrupted):
                sweep_closing = stop_sweep_after_interruption(err.exit_code, cfg)
                if sweep_closing is None:
                    log.error("%s", err)
                    return None  # the launching process ends the sweep once its running jobs are done
            else:
                if reported:
                    log.error("This job failed: %s", err)
                else:
                    log.exception("This job failed")
                return None
        if reported:  # an exit, not an exception: Hydra would catch one and start a sweep's next job
            if isinstance(err, RunInterrupted) and err.agreed and not is_rank_zero():
                sys.exit(err.exit_code)  # the processes of a DDP run stopped together: the first one says so, once
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                log.exception("%s", err)
            else:
                log.error("%s", err)
            if sweep_closing:
                log.info("%s", sweep_closing)
            if isinstance(err, UserInputError):
                _discard_this_runs_folder(cfg)
            sys.exit(err.exit_code)
        raise


def _discard_this_runs_folder(cfg: DictConfig) -> None:
    """A refused run's new dated folder, if it holds nothing but the command's records and the refusal's log, and
    then its loggers' empty subfolders in a folder shared by many runs (`cfg`: the run's config)."""
    from hydra.core.hydra_config import HydraConfig

    from src.utils.jobs import in_multirun
    from src.utils.run_folders import discard_refused_run

    if HydraConfig.initialized() and not in_multirun():  # a sweep job's folder records its failure for the summary
        discard_refused_run(Path(HydraConfig.get().runtime.output_dir), HydraConfig.get().output_subdir, cfg)


def interrupted_outside_training(by: str = "Ctrl-C", cfg: DictConfig | None = None) -> RunInterrupted:
    """The stop, with what to run next (`cfg`: the run's config, where known): once training has saved last.ckpt
    (stopped after it, before the results were written), resuming from it, which tests the best checkpoint again; in a
    sweep, the job on its own (the sweep's folder is taken); else the same command."""
    from src.utils.command_words import command, command_overrides, resume_with, run_it_again
    from src.utils.continue_run import saved_training_state
    from src.utils.jobs import in_multirun

    stopped = f"Stopped by {by} outside training and testing: nothing was saved at that moment."
    last = saved_training_state(cfg)
    if last is not None:
        advice = f"{last} holds the latest training state; {resume_with(last)}"
    elif cfg is not None and in_multirun():
        advice = f"Run this job again on its own: {command('train' if 'train' in cfg else 'eval', command_overrides())}"
    else:
        advice = run_it_again()
    return RunInterrupted(f"{stopped} {advice}", exit_code=STOP_EXIT_CODES[by])


def _record_job(cfg: DictConfig, record: dict) -> None:
    """The job's metrics.json when it did not finish. A resumed job that had finished before keeps that run's
    results in it, under `earlier_run`."""
    from src.utils.sweep_summary import read_metrics

    metrics_file = Path(cfg.paths.output_dir) / "metrics.json"
    earlier = read_metrics(metrics_file)
    kept = earlier if earlier.get("status") == "ok" else earlier.get("earlier_run")  # a second failure keeps it too
    if kept:
        record["earlier_run"] = kept
    try:
        write_json_atomically(metrics_file, record)
    except OSError as err:  # the disk that failed the job, say: its own one-line report must still come
        log.warning("Could not record the job's end in %s (%s): the sweep's summary shows it as not finished.",
                    metrics_file, " ".join(str(err).split()))
