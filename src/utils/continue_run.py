"""`ckpt_path=last`: continue a run where it stopped, in its own folder. A run given a fixed folder (a job script that
a cluster requeues) resumes from that folder's last.ckpt, or starts when it has none; a stopped sweep, run again into
its folder, resumes its interrupted jobs, starts those that never ran and tests its finished ones again."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from src.errors import RunFolderTaken, UserInputError
from src.utils.jobs import in_multirun
from src.utils.run_folders import holds_a_run

log = logging.getLogger(__name__)

LATEST = "last"


def take_this_runs_last_checkpoint(cfg: DictConfig) -> bool:
    """Replace ckpt_path=last by this run folder's last.ckpt, or by null when it has none yet. Returns whether the run
    then starts over in its folder, which may hold a failed or interrupted run's record (replaced), never a finished
    run's (refused)."""
    if cfg.get("ckpt_path") != LATEST:
        return False
    if not cfg.get("train"):
        raise UserInputError("ckpt_path=last resumes training in this run's folder; with train=false name the "
                             "checkpoint to test: ckpt_path=<run dir>/checkpoints/last.ckpt or epochNNN.ckpt.")
    folder = OmegaConf.select(cfg, "callbacks.last_checkpoint.dirpath", default=None)
    last = Path(str(folder or f"{cfg.paths.output_dir}/checkpoints")) / "last.ckpt"
    if last.is_file():
        cfg.ckpt_path = str(last)
        return False
    output_dir = Path(cfg.paths.output_dir)
    finished = holds_a_run(output_dir, unfinished=False)
    if finished:
        which = "hydra.sweep.dir" if in_multirun() else "hydra.run.dir"
        raise RunFolderTaken(f"ckpt_path=last: {output_dir} holds a finished run ({', '.join(finished)}) but not its "
                             f"{last.name} to continue from, and starting over would overwrite its results. Put "
                             f"{last} back, or choose another {which}.")
    log.info("ckpt_path=last: %s does not exist yet, so this run starts from the beginning", last)
    cfg.ckpt_path = None
    return True


def continue_sweep_command(sweep_dir: Path) -> str | None:
    """The command that finishes a stopped sweep in its folder: the sweep's own command line (from its multirun.yaml)
    with ckpt_path=last. None where that would not do it: a sweep that resumed checkpoints of its own (ckpt_path=<file>
    goes to those checkpoints' folders), or one whose record cannot be read."""
    from src.utils.command_words import command, config_flags, without_ckpt_path
    from src.utils.path_overrides import quoted_path

    try:
        record = OmegaConf.load(sweep_dir / "multirun.yaml").hydra
        task, hydra_overrides = list(record.overrides.task), list(record.overrides.hydra)
        flags = config_flags(record)
    except Exception:  # a record written by another tool, or none: no command rather than a wrong one
        return None
    if any(override.startswith("ckpt_path=") and override != f"ckpt_path={LATEST}" for override in task):
        return None
    kept = [override for override in hydra_overrides if not override.startswith(("hydra.sweep.dir=", "hydra.mode="))]
    return command("train", ["-m", *flags, *kept, *without_ckpt_path(task),
                             f"hydra.sweep.dir={quoted_path(str(sweep_dir))}", f"ckpt_path={LATEST}"])


def finish_the_sweep_advice(sweep_dir: Path) -> str:
    """What a stopped sweep's last message tells the user to do next."""
    continued = continue_sweep_command(sweep_dir)
    if continued is None:
        return "Resume each interrupted job as its message says, and run the jobs not run as a sweep of their own."
    return ("Finish the sweep in its folder with its own command and ckpt_path=last (interrupted jobs resume from "
            f"their last.ckpt, jobs not run start, finished ones are tested again): {continued}")
