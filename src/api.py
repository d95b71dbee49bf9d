"""Train, evaluate and classify from Python (a Jupyter notebook, a script) with the same settings, run folders and
results as the command line: each function takes the command's words and runs it in this process.

    from src.api import train
    run = train("model=mlp", "trainer.max_epochs=3")    # python -m src.train model=mlp trainer.max_epochs=3
    run.metrics["test/acc"], run.dir
    run.show()                                          # its figures, below the notebook cell

A refused setting raises UserInputError with the message the command would print. Sweeps (-m, sweep=<name>) run
from the command line.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path

# Imported here, with `from src.api import ...`, not in a run's first seconds: a Ctrl-C in the middle of importing
# torch leaves it half registered, and every later run in that kernel fails until it restarts.
import pytorch_lightning  # noqa: F401
import torch  # noqa: F401

from src.errors import UserInputError
from src.utils.in_process import run_in_this_process


@dataclass
class Run:
    """A run's results. `Run("outputs/2026-12-03/13-48-05")` reopens an earlier run (after a restart of the kernel):
    its metrics.json, figures and history."""

    dir: Path                                          # the run's folder, as the command line would have made it
    metrics: dict = field(default_factory=dict)        # train and evaluate: what metrics.json holds
    predictions: list = field(default_factory=list)    # predict: one dict per input file (src.predict)
    _config_problem: str | None = field(default=None, init=False, repr=False, compare=False)  # see _config

    def __post_init__(self) -> None:
        self.dir = Path(self.dir).expanduser()
        if not self.dir.is_absolute() and not self.dir.is_dir():  # outputs/<date>/<time> from a notebook elsewhere
            from src import PROJECT_ROOT

            self.dir = PROJECT_ROOT / self.dir if (PROJECT_ROOT / self.dir).is_dir() else self.dir
        if not self.dir.is_dir():  # a mistyped folder would read as a run with no results
            raise UserInputError(f"Run({str(self.dir)!r}): no such folder. A run's folder is the one its command "
                                 "printed (outputs/<date>/<time>, or run.dir in the session that ran it).")
        if (self.dir / "multirun.yaml").is_file():  # it would read as a run with no results
            jobs = sorted(path.name for path in self.dir.iterdir() if (path / ".hydra").is_dir())
            example = str(self.dir / jobs[0]) if jobs else f"{self.dir}/<job>"
            raise UserInputError(f"Run({str(self.dir)!r}) is a sweep's folder: open one of its jobs, Run({example!r}), "
                                 f"or read all of them as a table from {self.dir / 'summary.csv'} (csv.DictReader, "
                                 "or pandas.read_csv where pandas is installed).")
        if not self.metrics and (self.dir / "metrics.json").is_file():
            self.metrics = _read_metrics(self.dir / "metrics.json")

    @property
    def figures(self) -> list[Path]:
        return sorted(self.dir.glob("*.png"))

    def _tensorboard_folder(self) -> Path:
        """Where the run's config.yaml put its TensorBoard events: inside its folder (found wherever the folder has
        been moved since), or its subfolder of a folder shared by many runs; <run dir>/tensorboard without one."""
        logger = self._logger_config("tensorboard")
        if not logger or not logger.get("save_dir"):
            return self.dir / "tensorboard"
        return self._save_dir(logger) / str(logger.get("name") or "") / str(logger.get("version") or "")

    def _csv_logs(self) -> list[Path]:
        """The CSV logger's metrics.csv, then its resumes' (csv/resumed-<time>/), in the order written."""
        logger = self._logger_config("csv")
        save_dir = self._save_dir(logger) if logger and logger.get("save_dir") else self.dir
        version = str(logger.get("version") or "") if logger else ""
        return [save_dir / "csv" / version / "metrics.csv", *sorted(save_dir.glob(f"csv/resumed-*/{version}/metrics.csv"))]

    def _config(self):
        """The run's config.yaml, which says where its loggers wrote; None without one, or where it cannot be read
        (`_config_problem` then says why): the logs are looked for where they go by default, in the run's folder."""
        from omegaconf import DictConfig, OmegaConf

        path = self.dir / "config.yaml"
        if not path.is_file():
            return None
        try:
            config = OmegaConf.load(path)
        except Exception as err:  # yaml's ParserError or ScannerError, bytes that are not text
            mark = getattr(err, "problem_mark", None)  # yaml's: where in the file
            problem = (f"{type(err).__name__}: {getattr(err, 'problem', None) or (str(err).splitlines() or [''])[0]}"
                       + (f", line {mark.line + 1}" if mark else ""))
        else:
            if isinstance(config, DictConfig):
                return config
            problem = "not a mapping of settings"
        self._config_problem = f"{path} cannot be read ({problem})"
        return None

    def _logger_config(self, name: str):
        from omegaconf import OmegaConf

        config = self._config()
        return OmegaConf.select(config, f"logger.{name}") if config else None

    def _save_dir(self, logger) -> Path:
        """A logger's save_dir as the run's config.yaml gives it, relative to where the run was started, and inside the
        run's folder where that has been moved since."""
        from omegaconf import OmegaConf

        config = self._config()
        save_dir, was_here = Path(logger.save_dir).expanduser(), Path(str(OmegaConf.select(config, "paths.output_dir")))
        hydra_record = self.dir / ".hydra" / "hydra.yaml"
        if not save_dir.is_absolute() and hydra_record.is_file():  # relative to where the run was started, not to here
            save_dir = Path(str(OmegaConf.select(OmegaConf.load(hydra_record), "hydra.runtime.cwd"))) / save_dir
        if save_dir.is_relative_to(was_here):
            save_dir = self.dir / save_dir.relative_to(was_here)
        return save_dir

    def history(self) -> list[dict[str, float | int]]:
        """One row per epoch: its number and the metrics logged once per epoch (train/loss, train/acc, val/loss,
        val/acc, val/acc_best), read from the run's TensorBoard events, or without them its CSV log (logger=csv); none
        without either (logger=[], or nothing trained). `pandas.DataFrame(run.history())` is a table,
        `[row.get("val/acc") for row in run.history()]` a curve (an epoch without validation has no val/ entries)."""
        self._config_problem = None
        rows = self._tensorboard_rows() or self._csv_rows()
        if self._config_problem and not rows:  # the logs may be elsewhere, where only config.yaml says
            raise UserInputError(f"{self._config_problem}: it says where the run's TensorBoard and CSV logs are, and "
                                 f"there are none in {self.dir}, where they go by default. Restore config.yaml from a "
                                 "copy.")
        if self._config_problem:
            warnings.warn(f"{self._config_problem}: the history was read from the logs in the run's folder, where they "
                          "go by default.", stacklevel=2)
        # Not a checkpoint's best validation accuracy alone, which a test of it logs: no epoch trained there.
        return [rows[epoch] for epoch in sorted(rows) if set(rows[epoch]) != {"epoch", "val/acc_best"}]

    def _tensorboard_rows(self) -> dict[int, dict]:
        from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

        folder = self._tensorboard_folder()
        if not folder.is_dir():
            return {}
        events = EventAccumulator(str(folder), size_guidance={SCALARS: 0})  # 0: every value
        events.Reload()
        for path in sorted(folder.glob("*tfevents*")):  # TensorBoard skips what it cannot read without a word
            read, size = _readable_bytes(path), path.stat().st_size
            if read < size:
                warnings.warn(f"{path}: {size - read} of its {size} bytes cannot be read (damaged, cut short, or still "
                              "being written); the history lacks what they held.", stacklevel=3)
        tags = events.Tags()[SCALARS]
        if "epoch" not in tags:
            return {}
        epoch_at_step = {event.step: int(event.value) for event in events.Scalars("epoch")}  # Lightning logs it with each
        rows: dict[int, dict] = {}
        for tag in tags:
            # What the model logs once per epoch; not the learning rate, logged every few steps, which would land in
            # the rows of the epochs whose last step it fell on and not in the others.
            if tag.startswith(("train/", "val/")):
                for event in events.Scalars(tag):
                    # Lightning writes a step's `epoch` after its metrics: in the events of a run still being
                    # written, the last step's may not be there yet (its row comes with the next call).
                    if event.step in epoch_at_step:
                        epoch = epoch_at_step[event.step]
                        rows.setdefault(epoch, {"epoch": epoch})[tag] = event.value
        return rows

    def _csv_rows(self) -> dict[int, dict]:
        import csv

        rows: dict[int, dict] = {}
        for path in self._csv_logs():
            with contextlib.suppress(FileNotFoundError), open(path, newline="") as file:
                for record in csv.DictReader(file):
                    if not record.get("epoch"):
                        continue
                    epoch = int(float(record["epoch"]))
                    for tag, value in record.items():
                        if tag.startswith(("train/", "val/")) and value:
                            rows.setdefault(epoch, {"epoch": epoch})[tag] = float(value)
        return rows

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


def _read_metrics(path: Path) -> dict:
    from src.utils.sweep_summary import read_metrics

    metrics = read_metrics(path)
    if metrics.get("status") == "unreadable metrics.json":
        raise UserInputError(f"{path} cannot be read ({metrics.get('error')}): cut short or edited. Restore it from a "
                             "copy, or remove it to open the run without its metrics (its figures and history() stay "
                             "readable).")
    return metrics


def _readable_bytes(event_file: Path) -> int:
    """How much of an event file holds whole records, each checked against its checksum, from its start."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader

    # A record on disk: its length (8 bytes), the length's CRC (4), the record, its CRC (4).
    return sum(8 + 4 + len(record) + 4 for record in RawEventFileLoader(str(event_file)).Load())


def _in_a_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return get_ipython() is not None


def train(*overrides: str | list[str], **keywords) -> Run:
    """python -m src.train <overrides>: fit, then test the best checkpoint. Returns the run, metrics filled."""
    from src.train import train as train_run

    folder, metrics = run_in_this_process(train_run, "train", _as_words("train", overrides, keywords))
    return Run(folder, metrics=metrics)


def evaluate(*overrides: str | list[str], **keywords) -> Run:
    """python -m src.eval ckpt_path=<checkpoint> <overrides>: test a checkpoint on the official test set."""
    from src.eval import evaluate as evaluate_run

    folder, metrics = run_in_this_process(evaluate_run, "eval", _as_words("evaluate", overrides, keywords))
    return Run(folder, metrics=metrics)


def predict(*overrides: str | list[str], **keywords) -> Run:
    """python -m src.predict ckpt_path=<checkpoint> inputs=<files> <overrides>: classify image files."""
    from src.predict import predict as predict_run

    folder, predictions = run_in_this_process(predict_run, "predict", _as_words("predict", overrides, keywords))
    return Run(folder, predictions=predictions)


def _as_words(function: str, overrides: tuple, keywords: dict) -> tuple:
    """The settings; keyword arguments are refused with the call to make instead (most keys hold a dot, which a
    keyword cannot, and the command line's syntax, model.hidden_sizes=[64,32], would not carry over)."""
    if keywords:
        words = [*(repr(str(word)) for word in overrides), *(repr(f"{key}={value}") for key, value in keywords.items())]
        raise UserInputError(f"settings are strings, as on the command line: {function}({', '.join(words)}).")
    return overrides
