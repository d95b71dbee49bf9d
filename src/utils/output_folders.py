"""Where a run may write: its own folder, never one that holds another run (whose results, checkpoints and
TensorBoard run it would overwrite or mix with its own)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from src.errors import RunFolderTaken


class FolderCheck(Callback):
    """A run or sweep folder that cannot be made (a read-only place, a file in the way) is one line and exit code 1,
    not the traceback of Hydra's attempt to make it (resolving a new run's dated folder tries first: run_folders.py).
    So is a sweep refused as a whole (sweep_summary.sweep_problem), before its folder is made."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        _exit_if_unusable(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        from src.utils.sweep_summary import sweep_problem

        problem = sweep_problem(config)
        if problem:
            sys.exit(problem)
        _exit_if_unusable(config, "hydra.sweep.dir")


def _exit_if_unusable(config: DictConfig, setting: str) -> None:
    from omegaconf.errors import InterpolationResolutionError

    from src.errors import unresolved_interpolation

    try:
        folder = OmegaConf.select(config, setting)  # resolved once: this run's
    except InterpolationResolutionError as err:  # paths.log_dir=${oc.env:NAME} with NAME unset
        sys.exit(str(unresolved_interpolation(err)))
    problem = folder_problem(Path(str(folder)), setting)
    if problem:
        sys.exit(problem)


def folder_problem(folder: Path, setting: str) -> str | None:
    """Why `folder` (the value of `setting`) cannot be made or written into, or None."""
    folder = folder.expanduser().absolute()
    existing = next(path for path in [folder, *folder.parents] if os.path.exists(path))  # no error where unreadable
    if not existing.is_dir():
        why = f"{existing} is a file, not a folder"
    elif not os.access(existing, os.W_OK | os.X_OK):
        why = f"{existing} cannot be written to (no permission, or a read-only file system)"
    else:
        why = _write_problem(existing)
        if why is None:
            return None
    return (f"Cannot make the folder {folder}: {why}. Give a folder you can write to: paths.log_dir=<folder> (where "
            f"dated run folders are made) or {setting}=<folder>.")


def _write_problem(folder: Path) -> str | None:
    """Why a few kilobytes cannot be written into `folder` (a full disk, a quota), or None: Hydra's first files (the
    command's record) would otherwise fail with its traceback."""
    import tempfile

    try:
        with tempfile.TemporaryFile(dir=folder) as probe:
            probe.write(bytes(64 * 1024))
            probe.flush()
    except OSError as err:
        return f"{folder} cannot be written to ({err.strerror or err})"
    return None


def refuse_a_used_folder(output_dir: Path, resumable: bool) -> None:
    """A new run in a folder that holds one (a fixed hydra.run.dir run again) would overwrite its results and its
    last.ckpt. `resumable`: whether to suggest continuing that run instead (training runs)."""
    from src.utils.command_words import ckpt_path_override, typed
    from src.utils.jobs import in_multirun
    from src.utils.run_folders import holds_a_run

    found = holds_a_run(output_dir)
    if found:
        last = output_dir / "checkpoints" / "last.ckpt"
        resume = typed(ckpt_path_override(str(last))) if resumable and last.is_file() else ""
        if in_multirun():  # the sweep's folder was given: ckpt_path=last sends each job to its own last.ckpt
            setting, which = "hydra.sweep.dir", "each sweep then gets a new dated folder"
            each_its_own = "; to continue the sweep in it instead (each job from its own last.ckpt), add ckpt_path=last"
            resume = each_its_own if resume else ""
        else:
            setting, which = "hydra.run.dir", "each run then gets a new dated folder"
            resume = f"; to continue that run instead, add {resume}" if resume else ""
        raise RunFolderTaken(f"{output_dir} holds a run already ({', '.join(found)}), which this one would overwrite. "
                             f"Choose another {setting}, or leave it out: {which}{resume}.")


def output_dir_problem(cfg: DictConfig, sweeps: bool = True) -> str | None:
    """Why paths.output_dir is refused, if it is: it must be the folder Hydra made for the run, or the run's records
    and log would stay in one folder and its checkpoints and results go to the other. `sweeps`: the command line's
    advice names hydra.sweep.dir too."""
    from hydra.core.hydra_config import HydraConfig

    from src.utils.command_line import CHDIR_NOT_SUPPORTED

    if not HydraConfig.initialized():  # composed by tests or the benchmark: no run folder of Hydra's
        return None
    if HydraConfig.get().job.get("chdir"):  # set in a config of one's own (the command line's is refused before Hydra)
        return CHDIR_NOT_SUPPORTED
    made = Path(HydraConfig.get().runtime.output_dir).resolve()
    problem = writes_into_another_run(cfg, made)
    if problem is None and Path(str(cfg.paths.output_dir)).expanduser().resolve() != made:
        sweep_dir = " (hydra.sweep.dir=<folder> for a -m sweep)" if sweeps else ""
        return (f"paths.output_dir={cfg.paths.output_dir} is not this run's folder ({made}), the one Hydra makes for "
                f"it: set hydra.run.dir=<folder> instead{sweep_dir}.")
    return problem


# Settings that name a folder a run writes into (checkpoints, loggers, figures, Lightning's root).
OUTPUT_FOLDER_KEYS = ("dirpath", "save_dir", "output_dir", "default_root_dir")


def writes_into_another_run(cfg: DictConfig, made: Path) -> str | None:
    """Why an output folder outside this run's is refused: it lies in another run's folder, whose checkpoints,
    figures and TensorBoard run this one would overwrite or mix with its own. A config.yaml copied from a run and used
    as a config of one's own does that: it records that run's folders as written-out paths. A folder elsewhere (a
    shared TensorBoard folder) is taken."""
    from src.utils.continue_run import last_checkpoint_file
    from src.utils.run_folders import LATEST, holds_a_run, is_run_folder

    ckpt_path = cfg.get("ckpt_path")
    continued = last_checkpoint_file(cfg) if ckpt_path == LATEST else Path(str(ckpt_path)) if ckpt_path else None
    continued = continued.expanduser().resolve() if continued else None

    def taken(folder: Path) -> bool:
        """Another run's folder, or one holding another run's checkpoints: a run may keep its own elsewhere (on a
        scratch disk), and continue from there."""
        holds_checkpoints = holds_a_run(folder) or (folder / "last.ckpt").is_file()
        return is_run_folder(folder) or (holds_checkpoints and not (continued and folder in continued.parents))

    folders = [("paths.output_dir", str(cfg.paths.output_dir)),
               *_output_folders(cfg, ("callbacks", "logger", "trainer"))]
    for key, value in folders:
        path = Path(value).expanduser().resolve()
        if path == made or made in path.parents:
            continue
        run = next((folder for folder in (path, *path.parents) if taken(folder)), None)
        if run is not None:
            return (f"{key}={value} lies in another run's folder ({run}), which this run would overwrite. A "
                    "config.yaml copied from a run records that run's folders: re-run it with --config-dir=<run>/.hydra "
                    "--config-name=config +hydra=default instead (its folders follow the new run's), or set it inside "
                    "this run's folder: ${paths.output_dir}/<subfolder>.")
    return None


def _output_folders(cfg: DictConfig, keys, prefix: str = ""):
    """(dotted key, value) of every output folder setting under `keys` of `cfg`; other values stay unresolved."""
    for key, node in cfg.items_ex(resolve=False):
        if key not in keys:
            continue
        if isinstance(node, DictConfig):
            yield from _output_folders(node, tuple(node.keys()), f"{prefix}{key}.")
        elif key in OUTPUT_FOLDER_KEYS and isinstance(cfg[key], str):
            yield f"{prefix}{key}", cfg[key]
