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
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from src import CONFIG_DIR, overrides_problem, prepared_overrides, require_config_dir
from src.errors import UserInputError


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
        try:
            from IPython import get_ipython
            from IPython.display import Image, display
        except ImportError:
            get_ipython = None
        if get_ipython is None or get_ipython() is None:
            print("\n".join(str(path) for path in self.figures))
            return
        for path in self.figures:
            display(Image(filename=str(path)))


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


def _run_in_this_process(work: Callable[[DictConfig], object], config_name: str, overrides: tuple[str, ...]):
    """What @hydra.main does for a single run, minus changing the working directory: compose the config, make the
    run folder (hydra.run.dir), keep Hydra's record in it (.hydra/), log to the console and <task_name>.log."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    require_config_dir()
    words = [str(word) for word in overrides]
    if any(word.startswith("-") for word in words):
        flags = " ".join(word for word in words if word.startswith("-"))
        raise UserInputError(f"{flags}: sweeps (-m) and Hydra's flags work on the command line only (python -m "
                             f"src.{config_name} {flags} ...); here, pass key=value settings alone.")
    problem = overrides_problem(words, config_name)
    if problem:
        raise UserInputError(problem)
    GlobalHydra.instance().clear()  # a notebook's earlier run, or a Hydra app of the user's own
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3", job_name=config_name):
        cfg = compose(config_name=config_name, overrides=prepared_overrides(words), return_hydra_config=True)

    earlier = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(cfg)  # the run folder's own settings read the Hydra config
    folder = Path(str(OmegaConf.select(cfg, "hydra.run.dir"))).expanduser().resolve()
    with read_write(cfg.hydra.runtime), open_dict(cfg.hydra.runtime):
        cfg.hydra.runtime.output_dir = str(folder)
    HydraConfig.instance().set_config(cfg)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        task_cfg = copy.deepcopy(cfg)
        with read_write(task_cfg), open_dict(task_cfg):
            del task_cfg["hydra"]
        record = folder / str(cfg.hydra.output_subdir)
        record.mkdir(parents=True, exist_ok=True)
        for name, content in (("config", task_cfg), ("hydra", OmegaConf.create({"hydra": cfg.hydra})),
                              ("overrides", cfg.hydra.overrides.task)):
            OmegaConf.save(content, record / f"{name}.yaml")
        with _run_logging(cfg):
            return folder, _reporting_disk_problems(work, task_cfg)
    finally:
        HydraConfig.instance().cfg = earlier


def _reporting_disk_problems(work: Callable[[DictConfig], object], cfg: DictConfig):
    from src.utils.disk_errors import disk_problem

    try:
        return work(cfg)
    except Exception as failure:
        problem = disk_problem(failure)
        if problem:
            raise problem from failure
        raise


class _run_logging:
    """Hydra's job logging (console and <run folder>/<task_name>.log) for one run, then the caller's own back.
    Lightning, imported before into a process without logging set up, prints through its own handler: for the run,
    its messages go to the run's handlers instead, as on the command line."""

    LIGHTNING = ("pytorch_lightning", "lightning_fabric")

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg

    def __enter__(self) -> None:
        from hydra.core.utils import configure_log

        root = logging.getLogger()
        self.saved_root = root.handlers[:], root.level
        self.saved_lightning = [(logging.getLogger(name), logging.getLogger(name).handlers[:],
                                 logging.getLogger(name).propagate) for name in self.LIGHTNING]
        for logger, _, _ in self.saved_lightning:
            logger.handlers, logger.propagate = [], True
        configure_log(self.cfg.hydra.job_logging, self.cfg.hydra.verbose)

    def __exit__(self, *exc) -> None:
        root = logging.getLogger()
        for handler in root.handlers:
            handler.close()
        root.handlers, level = self.saved_root
        root.setLevel(level)
        for logger, handlers, propagate in self.saved_lightning:
            logger.handlers, logger.propagate = handlers, propagate
