"""Train, evaluate and classify from Python (a Jupyter notebook, a script) with the same settings, run folders and
results as the command line: each function takes the command's words and runs it in this process.

    from src.api import train
    run = train("model=mlp", "trainer.max_epochs=3")    # python -m src.train model=mlp trainer.max_epochs=3
    run.metrics["test/acc"], run.dir
    run.show()                                          # its figures, below the notebook cell

A refused setting raises UserInputError with the message the command would print. Sweeps (-m) run from the
command line.
"""

from __future__ import annotations

import copy
import itertools
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from src import CONFIG_DIR
from src.errors import ReportedError, UserInputError
from src.utils.command_line import overrides_problem, prepared_overrides, require_config_dir


@dataclass
class Run:
    dir: Path                                          # the run's folder, as the command line would have made it
    metrics: dict = field(default_factory=dict)        # train and evaluate: what metrics.json holds
    predictions: list = field(default_factory=list)    # predict: one dict per image (path, digit, confidence, probs)

    @property
    def figures(self) -> list[Path]:
        return sorted(self.dir.glob("*.png"))

    def show(self) -> None:
        """Display the run's figures (learning curves, confusion matrix, misclassified digits, predictions) in a
        notebook; elsewhere, print where they are."""
        if not self.figures:
            print(f"No figures in {self.dir}" + (" (save_preview=true draws the predictions)" if self.predictions else ""))
        elif _in_a_notebook():
            from IPython.display import Image, display

            for path in self.figures:
                display(Image(filename=str(path)))
        else:
            print("\n".join(str(path) for path in self.figures))


def _in_a_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return get_ipython() is not None


def train(*overrides: str) -> Run:
    """python -m src.train <overrides>: fit, then test the best checkpoint. Returns the run, metrics filled."""
    from src.train import train as train_run

    folder, metrics = _run_in_this_process(train_run, "train", overrides)
    return Run(folder, metrics=metrics)


def evaluate(*overrides: str) -> Run:
    """python -m src.eval ckpt_path=<checkpoint> <overrides>: test a checkpoint on the official test set."""
    from src.eval import evaluate as evaluate_run

    folder, metrics = _run_in_this_process(evaluate_run, "eval", overrides)
    return Run(folder, metrics=metrics)


def predict(*overrides: str) -> Run:
    """python -m src.predict ckpt_path=<checkpoint> inputs=<files> <overrides>: classify image files."""
    from src.predict import predict as predict_run

    folder, predictions = _run_in_this_process(predict_run, "predict", overrides)
    return Run(folder, predictions=predictions)


def _run_in_this_process(work: Callable[[DictConfig], Any], config_name: str, overrides: tuple[str, ...]) -> tuple[Path, Any]:
    """What @hydra.main does for a single run, minus changing the working directory: compose the config, make the
    run folder (hydra.run.dir), keep Hydra's record in it (.hydra/), log to the console and <task_name>.log.
    Hydra's global state (a Hydra app of the caller's own) is as it was afterwards."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.initialize import get_gh_backup, restore_gh_from_backup
    from hydra.types import RunMode

    from src.utils.disk_errors import disk_problem
    from src.utils.run import output_dir_problem

    require_config_dir()
    # Each setting is its own string, as each is its own word on the command line; a list of them is taken too.
    words = [str(word) for item in overrides for word in (item if isinstance(item, (list, tuple)) else [item])]
    if any(word.startswith("-") for word in words):
        flags = " ".join(word for word in words if word.startswith("-"))
        raise UserInputError(f"{flags}: sweeps (-m) and Hydra's flags work on the command line only (python -m "
                             f"src.{config_name} {flags} ...); here, pass key=value settings alone.")
    problem = overrides_problem(words, config_name)
    if problem:
        raise UserInputError(problem)
    callers_hydra, callers_hydra_config = get_gh_backup(), HydraConfig.instance().cfg
    try:
        cfg = _composed(config_name, prepared_overrides(words))
        HydraConfig.instance().set_config(cfg)  # hydra.run.dir and paths.output_dir read it
        folder = _run_folder(cfg, words)
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
        record = folder / str(cfg.hydra.output_subdir)
        record.mkdir(parents=True, exist_ok=True)
        for name, content in (("config", task_cfg), ("hydra", OmegaConf.create({"hydra": cfg.hydra})),
                              ("overrides", cfg.hydra.overrides.task)):
            OmegaConf.save(content, record / f"{name}.yaml")
        with _run_logging(cfg) as run_log:
            try:
                return folder, work(task_cfg)
            except Exception as failure:
                reported = disk_problem(failure) or failure
                if isinstance(reported, ReportedError):  # the log says why the run ended, as on the command line
                    run_log.handle(logging.makeLogRecord({"name": __name__, "levelno": logging.ERROR,
                                                          "levelname": "ERROR", "msg": str(reported)}))
                if reported is not failure:
                    raise reported from failure
                raise
    finally:
        HydraConfig.instance().cfg = callers_hydra_config
        restore_gh_from_backup(callers_hydra)


def _run_folder(cfg: DictConfig, words: list[str]) -> Path:
    """hydra.run.dir. Its default names the folder after the second the run starts: runs of one notebook that start
    within a second (an evaluate after a quick predict, a loop) get -2, -3, ... added, rather than one folder (which
    a run would then refuse, as it holds another). A folder given, or the run folder a resume continues in, is kept."""
    from src.utils.run_folders import resumed_job_dir

    folder = Path(str(OmegaConf.select(cfg, "hydra.run.dir"))).expanduser().resolve()
    chosen = any(word.lstrip("+").startswith("hydra.run.dir=") for word in words)
    if chosen or resumed_job_dir(cfg.get("ckpt_path"), bool(cfg.get("train"))) == folder:
        return folder
    candidate = folder
    for number in itertools.count(2):
        if not candidate.exists():
            return candidate
        candidate = folder.with_name(f"{folder.name}-{number}")


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
def _run_logging(cfg: DictConfig) -> Iterator[logging.Handler]:
    """The run's log as on the command line: <run folder>/<task_name>.log, and the console unless the caller's logging
    prints there already. Lightning, imported into a process without logging set up, prints through its own handler: for
    the run, its messages go to the run's handlers instead. Afterwards the caller's logging is as it was. Yields the
    handler of the run's log file."""
    log_config = OmegaConf.to_container(cfg.hydra.job_logging, resolve=True)
    form = logging.Formatter(log_config["formatters"]["simple"]["format"])
    root = logging.getLogger()
    handlers = [logging.FileHandler(log_config["handlers"]["file"]["filename"])]
    if not any(getattr(handler, "stream", None) in (sys.stdout, sys.stderr) for handler in root.handlers):
        handlers.append(logging.StreamHandler(sys.stdout))
    lightning = [(logger, logger.handlers, logger.propagate) for logger in map(logging.getLogger, _LIGHTNING_LOGGERS)]
    level = root.level
    try:
        for handler in handlers:
            handler.setFormatter(form)
            root.addHandler(handler)
        root.setLevel(logging.INFO)
        for logger, _, _ in lightning:
            logger.handlers, logger.propagate = [], True
        yield handlers[0]
    finally:
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()
        root.setLevel(level)
        for logger, own_handlers, propagate in lightning:
            logger.handlers, logger.propagate = own_handlers, propagate
