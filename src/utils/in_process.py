"""A run of an entry point inside the caller's Python process (src.api: a notebook), as @hydra.main makes one on the
command line: the same config, run folder, Hydra record, log and refusals; the caller's Hydra and logging state are
left as they were."""

from __future__ import annotations

import copy
import logging
import re
import shlex
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from src import CONFIG_DIR
from src.errors import ReportedError, UserInputError, raised_in_a_spawned_process
from src.utils.command_line import config_dir_problem, names_a_setting, overrides_problem, prepared_overrides
from src.utils.command_words import advice_as_calls, command
from src.utils.log_file import RunLogFile


def run_in_this_process(work: Callable[[DictConfig], Any], config_name: str,
                        overrides: tuple[str | list[str] | tuple[str, ...], ...]) -> tuple[Path, Any]:
    """What @hydra.main does for a single run, minus changing the working directory: compose the config, make the
    run folder (hydra.run.dir), keep Hydra's record in it (.hydra/), log to the console and <task_name>.log.
    Hydra's global state (a Hydra app of the caller's own) is as it was afterwards."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.initialize import get_gh_backup, restore_gh_from_backup
    from hydra.types import RunMode

    from src.utils.output_folders import folder_problem
    from src.utils.run_folders import discard_refused_run

    words = _setting_words(overrides, config_name)
    callers_hydra, callers_hydra_config = get_gh_backup(), HydraConfig.instance().cfg
    try:
        cfg = _composed(config_name, prepared_overrides(words))
        if cfg.hydra.mode == RunMode.MULTIRUN or OmegaConf.select(cfg, "hydra.sweeper.params"):  # sweep=<name>
            raise UserInputError(f"{_SWEEPS_RUN_FROM_THE_COMMAND_LINE}: python -m src.{config_name} "
                                 f"{' '.join(words)}")
        HydraConfig.instance().set_config(cfg)  # hydra.run.dir and paths.output_dir read it
        folder = _run_folder(cfg)
        problem = folder_problem(folder, "hydra.run.dir")
        if problem:
            raise UserInputError(problem)
        try:
            return folder, _run_in(folder, work, cfg)
        except UserInputError:
            # As the command line does: a refused run leaves no dated folder behind.
            discard_refused_run(folder, cfg.hydra.output_subdir, cfg)
            raise
    finally:
        HydraConfig.instance().cfg = callers_hydra_config
        restore_gh_from_backup(callers_hydra)


def _run_in(folder: Path, work: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """work's result, run in `folder` with Hydra's record and the run's log there."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from src.utils.output_folders import output_dir_problem
    from src.utils.run_lock import holding_run_folder

    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.run.dir = cfg.hydra.runtime.output_dir = str(folder)
        cfg.hydra.mode = RunMode.RUN
    HydraConfig.instance().set_config(cfg)
    task_cfg = copy.deepcopy(cfg)
    with read_write(task_cfg), open_dict(task_cfg):
        del task_cfg["hydra"]
    problem = output_dir_problem(task_cfg, sweeps=False)
    if problem:
        raise UserInputError(problem)
    with holding_run_folder(folder):  # before the record: another process's run there keeps its own
        return _record_and_run(folder, work, cfg, task_cfg)


def _record_and_run(folder: Path, work: Callable[[DictConfig], Any], cfg: DictConfig, task_cfg: DictConfig) -> Any:
    if cfg.hydra.output_subdir is not None:  # Hydra's record, as it keeps one for the command line
        record = folder / str(cfg.hydra.output_subdir)
        record.mkdir(parents=True, exist_ok=True)
        for name, content in (("config", task_cfg), ("hydra", OmegaConf.create({"hydra": cfg.hydra})),
                              ("overrides", cfg.hydra.overrides.task)):
            OmegaConf.save(content, record / f"{name}.yaml")
    folder.mkdir(parents=True, exist_ok=True)
    with _run_logging(cfg) as run_log, advice_as_calls(), _callers_global_state():
        return _reporting_failures(work, task_cfg, run_log)


_SWEEPS_RUN_FROM_THE_COMMAND_LINE = "sweeps (-m, sweep=<name>) run from the command line"
# key=value with a dotted key, mistyped or not (max_epochs=1); a folder's name holds a `/` before its `=`.
_SETTING_KEY = re.compile(r"[+~]*[A-Za-z_][\w.]*=")


def _setting_words(overrides: tuple[str | list[str] | tuple[str, ...], ...], config_name: str) -> list[str]:
    """The settings as the command line's words, refused as it refuses them. Each setting is its own string, as each is
    its own word on the command line; one list of them is taken too."""
    words = [str(word) for item in overrides for word in (item if isinstance(item, (list, tuple)) else [item])]
    flags = " ".join(shlex.quote(word) for word in words if word.startswith("-"))
    if flags:
        typed = " ".join(shlex.quote(word) for word in words)
        raise UserInputError(f"{flags}: {_SWEEPS_RUN_FROM_THE_COMMAND_LINE}, as do Hydra's flags: python -m "
                             f"src.{config_name} {typed}; here, pass key=value settings alone.")
    for word in words:  # train("model=mlp trainer.max_epochs=3"), as the command line writes it: Hydra's parse error
        parts = word.split()  # not a path with a space: ckpt_path=/My Drive/1_model=mlp,seed=2/last.ckpt
        if len(parts) > 1 and all(names_a_setting(part, config_name) or _SETTING_KEY.match(part) for part in parts):
            with advice_as_calls():
                call = command(config_name, parts)
            raise UserInputError(f"{word!r} holds several settings: pass each as a string of its own: {call}.")
    problem = config_dir_problem() or overrides_problem(words, config_name)
    if problem:
        raise UserInputError(problem)
    return words


def _reporting_failures(work: Callable[[DictConfig], Any], cfg: DictConfig, run_log: logging.Handler | None) -> Any:
    """work(cfg); a failure the command line reports in one line is noted in the run's log as it would be there, and
    a Ctrl-C outside training and testing (which report their own) is reported as there, and so is a full disk in
    TensorBoard's writing thread (for the run: the caller's thread error hook is put back after it)."""
    import threading

    from src.utils.disk_errors import disk_problem, one_line_for_disk_errors_in_threads
    from src.utils.run import interrupted_outside_training

    callers_hook = threading.excepthook
    one_line_for_disk_errors_in_threads()
    try:
        try:
            return work(cfg)
        except KeyboardInterrupt as stop:
            raise interrupted_outside_training(cfg=cfg) from stop
    except Exception as failure:
        reported = disk_problem(failure, cfg) or raised_in_a_spawned_process(failure) or failure
        if isinstance(reported, ReportedError) and run_log is not None:
            run_log.handle(logging.makeLogRecord({"name": __name__, "levelno": logging.ERROR, "levelname": "ERROR",
                                                  "msg": str(reported)}))
        if reported is not failure:
            raise reported from failure
        raise
    finally:
        threading.excepthook = callers_hook


@contextmanager
def _callers_global_state() -> Iterator[None]:
    """A run seeds Python's, NumPy's and torch's random generators (seed_everything), leaves the seed in environment
    variables that Lightning's DataLoader workers and DDP's processes read, sets torch's CPU threads (a resume takes its
    checkpoint's) and, through Lightning's Trainer, torch's deterministic mode, and silences a few of Lightning's
    warnings and log lines: the caller's own work and Lightning code afterwards find all of these as they were."""
    import os
    import random
    import warnings

    import numpy
    import torch

    names = ("PL_GLOBAL_SEED", "PL_SEED_WORKERS", "CUBLAS_WORKSPACE_CONFIG", "MNIST_SHUFFLE_SEED")
    callers = {name: os.environ.get(name) for name in names}
    threads, cudnn_benchmark = torch.get_num_threads(), torch.backends.cudnn.benchmark
    deterministic = torch.are_deterministic_algorithms_enabled()
    deterministic_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    python_state, numpy_state, torch_state = random.getstate(), numpy.random.get_state(), torch.get_rng_state()
    # Only a CUDA already in use: reading its state would start it, which ddp_fork (in a notebook) refuses afterwards.
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    callers_seed = torch.initial_seed()  # torch.manual_seed's seed, which it queued for CUDA (the default if none)
    lightning_log = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    log_filters = lightning_log.filters[:]
    try:
        with warnings.catch_warnings():
            yield
    finally:
        for name, value in callers.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        random.setstate(python_state)
        numpy.random.set_state(numpy_state)
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        else:  # the run's seed replaced the caller's queued one, or seeded a CUDA the run started
            torch.cuda.manual_seed_all(callers_seed)
        lightning_log.filters = log_filters
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=deterministic_warn_only)
        torch.backends.cudnn.benchmark = cudnn_benchmark


def _run_folder(cfg: DictConfig) -> Path:
    """hydra.run.dir: a folder given, the run folder a resume continues in, or a new dated folder (made as it is
    resolved: runs of one notebook that start within a second get -2, -3, ... added)."""
    return Path(str(OmegaConf.select(cfg, "hydra.run.dir"))).expanduser().resolve()


def _composed(config_name: str, overrides: list[str]) -> DictConfig:
    """The config with Hydra's own part, as @hydra.main composes it; Hydra's refusals (an unknown option or key) as
    UserInputError, with their message."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3", job_name=config_name):
            return compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as refused:
        # Hydra's advice for `key=a,b` names a flag that only the command line takes.
        message = str(refused).replace("add --multirun to your command line",
                                       f"run it from the command line: python -m src.{config_name} -m ...")
        raise UserInputError(message) from refused


_LIGHTNING_LOGGERS = ("pytorch_lightning", "lightning_fabric")


@contextmanager
def _run_logging(cfg: DictConfig) -> Iterator[logging.Handler | None]:
    """The run's log as on the command line, as hydra/job_logging says: by default <run folder>/<task_name>.log, and
    the console unless the caller's logging prints there already. Lightning, imported into a process without logging
    set up, prints through its own handler: for the run, its messages go to the run's handlers instead. Afterwards
    the caller's logging is as it was. Yields the handler of the run's log file (None when the config has none)."""
    log_config = OmegaConf.to_container(cfg.hydra.job_logging, resolve=True)
    root = logging.getLogger()
    root_config = log_config.get("root")  # None for hydra/job_logging=none: logging is left as it is
    handlers = _run_handlers(log_config, (root_config or {}).get("handlers", []))
    lightning = [(logger, logger.handlers, logger.propagate) for logger in map(logging.getLogger, _LIGHTNING_LOGGERS)]
    level = root.level
    try:
        for handler in handlers:
            root.addHandler(handler)
        if root_config:
            root.setLevel(root_config.get("level", logging.INFO))
        for logger, _, _ in lightning:
            logger.handlers, logger.propagate = [], True
        yield next((handler for handler in handlers if isinstance(handler, logging.FileHandler)), None)
    finally:
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()
        root.setLevel(level)
        for logger, own_handlers, propagate in lightning:
            logger.handlers, logger.propagate = own_handlers, propagate


def _run_handlers(log_config: dict, names: list[str]) -> list[logging.Handler]:
    """The named handlers of a job logging config: files, and the console unless the caller's logging prints there
    already (a second console handler would print every line twice)."""
    printing = any(getattr(handler, "stream", None) in (sys.stdout, sys.stderr) for handler in logging.getLogger().handlers)
    handlers = []
    for name in names:
        spec = log_config["handlers"][name]
        if "filename" in spec:
            handler = RunLogFile(spec["filename"])
        elif printing:
            continue
        else:
            handler = logging.StreamHandler(sys.stderr if spec.get("stream") == "ext://sys.stderr" else sys.stdout)
        formatter = log_config.get("formatters", {}).get(spec.get("formatter"), {})
        handler.setFormatter(logging.Formatter(formatter.get("format")))
        handlers.append(handler)
    return handlers
