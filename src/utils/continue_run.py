"""`ckpt_path=last`: continue a run where it stopped, in its own folder. A run given a fixed folder (a job script that
a cluster requeues) resumes from that folder's last.ckpt, or starts when it has none; a stopped sweep, run again into
its folder, resumes its interrupted jobs, starts those that never ran and tests its finished ones again."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from src.errors import UserInputError
from src.utils.jobs import in_multirun
from src.utils.run_folders import LATEST, made_here, names_a_checkpoint_file, run_status

log = logging.getLogger(__name__)


def take_this_runs_last_checkpoint(cfg: DictConfig) -> str | None:
    """Replace ckpt_path=last by this run folder's last checkpoint, or by null. Returns None without ckpt_path=last,
    else what the run is to do: "resume" (from that file); "start" (the folder holds no run, a sweep job that never
    ran, or one stopped before it saved anything); "keep" (a run that ended, finished or failed, without leaving the
    file: nothing to continue, and its results stay as they are)."""
    if cfg.get("ckpt_path") != LATEST:
        return None
    if not cfg.get("train"):
        raise UserInputError("ckpt_path=last resumes training in this run's folder; with train=false name the "
                             "checkpoint to test: ckpt_path=<run dir>/checkpoints/last.ckpt or epochNNN.ckpt.")
    last = last_checkpoint_file(cfg)
    output_dir = Path(cfg.paths.output_dir)
    if last.is_file():
        cfg.ckpt_path = str(last)
        return "resume"
    cfg.ckpt_path = None
    status = run_status(output_dir)
    if status in (None, "not run", "interrupted"):
        new = " (a new folder: give hydra.run.dir=<folder> to continue one run)" if made_here(output_dir) else ""
        log.info("ckpt_path=last: %s does not exist yet, so this run starts from the beginning%s", last, new)
        return "start"
    ended = {"ok": "finished", "failed": "failed"}.get(status, f"left {status}")
    log.warning("ckpt_path=last: %s holds a run that %s, and no %s to continue from: it is left as it is. To run it "
                "again, remove that folder or choose another %s.", output_dir, ended, last,
                "hydra.sweep.dir" if in_multirun() else "hydra.run.dir")
    return "keep"


def say_the_sweep_folder_is_new(config: DictConfig) -> None:
    """A sweep given ckpt_path=last without the folder of the sweep it is to finish (hydra.sweep.dir) got a new one:
    every job starts from the beginning. Said once, when the sweep starts."""
    from src.utils.run_folders import asks_for_last

    sweep_dir = Path(config.hydra.sweep.dir)
    if asks_for_last(OmegaConf.select(config, "hydra.overrides.task", default=None) or []) and made_here(sweep_dir):
        log.info("ckpt_path=last in a new sweep folder, %s: its jobs start from the beginning. To finish a stopped "
                 "sweep, give its folder: hydra.sweep.dir=<that sweep's folder>.", sweep_dir)


def set_aside_earlier_attempt(loggers: list) -> None:
    """For a run that starts in a folder where an earlier attempt stopped before saving anything (failed, or killed
    outright, and given again by hydra.run.dir or ckpt_path=last): that attempt's TensorBoard events go into a folder of their own beside this attempt's, named by the
    time it started, so TensorBoard shows it as a run apart instead of drawing both attempts' curves as one."""
    import time

    from src.utils.run_folders import empty_event_file, event_files

    by_run: dict[Path, list[Path]] = {}
    for path in event_files(loggers):
        if not empty_event_file(path):
            by_run.setdefault(path.parent, []).append(path)
    for log_dir, earlier in by_run.items():
        started = min(_event_file_time(path) for path in earlier)
        folder = log_dir / f"attempt-{time.strftime('%Y-%m-%d_%H-%M-%S', time.localtime(started))}"
        folder.mkdir(exist_ok=True)
        for path in earlier:
            path.rename(folder / path.name)
        log.info("The TensorBoard events of an earlier attempt in this folder, which saved no checkpoint, were moved "
                 "to %s", folder)


def _event_file_time(path: Path) -> float:
    """When an event file was opened: the time in its name (events.out.tfevents.<seconds>.<host>...), else its
    modification time."""
    stamp = path.name.split(".")[3]
    return float(stamp) if stamp.isdigit() else path.stat().st_mtime


def last_checkpoint_file(cfg: DictConfig) -> Path:
    """Where this run's last checkpoint is saved (callbacks.last_checkpoint: <run dir>/checkpoints/last.ckpt)."""
    saved = OmegaConf.select(cfg, "callbacks.last_checkpoint", default=None) or {}
    folder = saved.get("dirpath") or f"{cfg.paths.output_dir}/checkpoints"
    return Path(str(folder)) / f"{saved.get('filename') or 'last'}.ckpt"


def saved_training_state(cfg: DictConfig | None) -> Path | None:
    """This training run's last.ckpt where it has saved one (None: not training, no last-checkpoint callback, or
    nothing saved yet)."""
    if cfg is None or not cfg.get("train") or not OmegaConf.select(cfg, "callbacks.last_checkpoint"):
        return None
    last = last_checkpoint_file(cfg)
    return last if last.is_file() else None


def continue_sweep_command(sweep_dir: Path, record: str = "multirun.yaml") -> str | None:
    """The command that finishes a stopped sweep in its folder: the sweep's own command line (from its `record`, which
    Hydra wrote) with ckpt_path=last. None where that would not do it: a sweep that resumed checkpoints of its own
    (ckpt_path=<file> goes to those checkpoints' folders), or one whose record cannot be read."""
    from src.utils.command_words import command, config_flags, without_ckpt_path
    from src.utils.path_overrides import quoted_path

    try:
        hydra = OmegaConf.load(sweep_dir / record).hydra
        written = OmegaConf.to_container(hydra.overrides, resolve=False)  # an override may hold ${...}: as written
        task, hydra_overrides = list(written["task"]), list(written["hydra"])
        flags = config_flags(hydra)
    except Exception:  # a record written by another tool, or none: no command rather than a wrong one
        return None
    if any(names_a_checkpoint_file(override) for override in task):
        return None
    kept = [override for override in hydra_overrides
            if not override.lstrip("+~").startswith(("hydra.sweep.dir=", "hydra.mode=", "hydra.searchpath="))]
    return command("train", ["-m", *flags, *kept, *without_ckpt_path(task),
                             f"hydra.sweep.dir={quoted_path(str(sweep_dir))}", f"ckpt_path={LATEST}"])


def finish_the_sweep_advice(sweep_dir: Path) -> str:
    """What a stopped sweep's last message tells the user to do next."""
    continued = continue_sweep_command(sweep_dir)
    if continued is None:
        return "Resume each interrupted job as its message says, and run the jobs not run as a sweep of their own."
    return ("Finish the sweep in its folder with its own command and ckpt_path=last (interrupted jobs resume from "
            f"their last.ckpt, jobs not run start, finished ones are tested again): {continued}")
