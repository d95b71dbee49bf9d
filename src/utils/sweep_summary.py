"""At the end of a multirun: one table of every job (overrides, metrics, wall time, status) as CSV and
Markdown, a comparison plot, all written into the sweep dir and printed.

A failed job does not stop the sweep (src/utils/run.py records it and carries on; only a refused resume or an
interruption stops it); the multirun exits non-zero only when every job it ran failed, so a sweep with a few
diverging settings still counts as a result.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import shlex
import shutil
import time
from collections import Counter
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from src.errors import what_stopped
from src.utils.continue_run import finish_the_sweep_advice
from src.utils.run_folders import asks_for_last

log = logging.getLogger(__name__)

COLUMNS = ("job", "varied", "status", "val/acc_best", "test/acc", "test/loss", "wall_seconds", "error", "overrides")


def collect_jobs(sweep_dir: Path) -> list[dict]:
    """One row per job dir (a folder with .hydra/overrides.yaml), in job-number order."""
    rows = []
    for overrides_file in sweep_dir.glob("*/.hydra/overrides.yaml"):
        job_dir = overrides_file.parent.parent
        metrics = read_metrics(job_dir / "metrics.json")
        overrides, unreadable = _read_overrides(overrides_file)
        rows.append(
            {
                "job": job_dir.name,
                "overrides": overrides,
                "status": metrics.get("status", "did not finish"),
                "val/acc_best": metrics.get("val/acc_best"),
                "test/acc": metrics.get("test/acc"),
                "test/loss": metrics.get("test/loss"),
                "wall_seconds": metrics.get("wall_seconds"),
                "error": "; ".join(text for text in (metrics.get("error", ""), unreadable) if text),
            }
        )
    rows.sort(key=lambda row: (int(row["job"].split("_", 1)[0]) if row["job"].split("_", 1)[0].isdigit() else 0, row["job"]))
    _mark_varied(rows)
    return rows


def _read_overrides(path: Path) -> tuple[list[str], str]:
    """The job's overrides as Hydra recorded them, and why they could not be read ("" if they could): one damaged
    record must not cost the summary of every other job."""
    try:
        overrides = OmegaConf.to_container(OmegaConf.load(path))
    except Exception as err:  # YAML's parser errors, a folder in its place, a file this user may not read
        return [], f"{path.relative_to(path.parent.parent.parent)} cannot be read ({type(err).__name__})"
    if not isinstance(overrides, list):
        return [], f"{path.relative_to(path.parent.parent.parent)} is not a list of overrides"
    return [str(word) for word in overrides], ""


def read_metrics(path: Path) -> dict:
    """The job's metrics.json; {} if it never got that far; a row saying so if the file cannot be read (one
    damaged file must not cost the summary of every other job)."""
    if not path.exists():
        return {}
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return {"status": "unreadable metrics.json", "error": f"{type(err).__name__}: {err}"}
    return metrics if isinstance(metrics, dict) else {"status": "unreadable metrics.json", "error": "not a JSON object"}


def _mark_varied(rows: list[dict]) -> None:
    """`varied`: the overrides that differ between jobs (what the sweep compares); `overrides`: all of them."""
    # ckpt_path=last says where a job continued, not what it is: a job the sweep's first command finished lacks it.
    settings = [dict(o.split("=", 1) if "=" in o else (o, "") for o in row["overrides"] if not asks_for_last([o]))
                for row in rows]
    keys = {key for setting in settings for key in setting}
    varied = sorted(key for key in keys if len({setting.get(key) for setting in settings}) > 1)
    for row, setting in zip(rows, settings):
        row["varied"] = " ".join(f"{k}={setting[k]}" for k in varied if k in setting) or " ".join(row["overrides"])
        row["overrides"] = " ".join(row["overrides"])
        # The jobs of one setting run with several seeds share this (None: the seed does not vary).
        others = " ".join(f"{k}={setting[k]}" for k in varied if k in setting and k != "seed")
        row["setting"] = others if "seed" in varied else None


def seed_statistics(rows: list[dict]) -> list[str]:
    """For each setting that finished with several seeds: the mean and (sample) standard deviation of its accuracies
    over them, the noise a difference between settings must beat."""
    from statistics import mean, stdev

    settings: dict[str, list[dict]] = {}
    for row in rows:
        if row.get("setting") is not None and row["status"] == "ok":
            settings.setdefault(row["setting"], []).append(row)
    lines = []
    for setting, runs in settings.items():
        figures = []
        for metric in ("val/acc_best", "test/acc"):
            values = [run[metric] for run in runs if isinstance(run[metric], (int, float))]
            if len(values) >= 2:
                figures.append(f"{metric} {mean(values):.4f} ± {stdev(values):.4f}")
        if figures:
            lines.append(f"- {setting or 'every job'} ({len(runs)} seeds): {', '.join(figures)}")
    return ["Mean ± standard deviation over seeds:", *lines] if lines else []


def best_by_validation(rows: list[dict]) -> list[str]:
    """The finished job with the highest val/acc_best (the first such job on a tie): the pick a sweep is for, made
    without looking at the test set."""
    finished = [row for row in rows if row["status"] == "ok" and isinstance(row["val/acc_best"], (int, float))]
    if len(finished) < 2:
        return []
    best = max(finished, key=lambda row: row["val/acc_best"])
    test = f", test/acc {_cell(best['test/acc'], 'test/acc')}" if isinstance(best["test/acc"], (int, float)) else ""
    return [f"Best by validation: {best['job']} (val/acc_best {_cell(best['val/acc_best'], 'val/acc_best')}{test})"]


def summary_text(rows: list[dict]) -> str:
    """The table, the best job by validation, and the spread over seeds where the seed varies."""
    blocks = [block for block in (best_by_validation(rows), seed_statistics(rows)) if block]
    return markdown_table(rows) + "".join("\n" + "\n".join(block) + "\n" for block in blocks)


def _cell(value, column: str) -> str:
    if isinstance(value, float):
        # Seconds to the hundredth; accuracies to four places (one test image is 0.0001).
        return f"{value:.2f}" if column.endswith("seconds") else f"{value:.4f}"
    return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: list[dict]) -> str:
    """The table for reading: every column but the full override list (that one is in the CSV)."""
    columns = COLUMNS[:-1]
    header = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    return header + "".join("| " + " | ".join(_cell(row[c], c) for c in columns) + " |\n" for row in rows)


def write_summary(sweep_dir: Path) -> list[dict]:
    """The jobs' rows, written as summary.csv, .md and .png."""
    rows = collect_jobs(sweep_dir)
    write_summary_files(sweep_dir, rows)
    return rows


def write_summary_files(sweep_dir: Path, rows: list[dict]) -> None:
    """summary.csv, .md and .png, each replaced whole: a resubmitted job rewrites them."""
    from src.utils.atomic_files import write_atomically, write_text_atomically

    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomically(sweep_dir / "summary.csv", table.getvalue())
    write_text_atomically(sweep_dir / "summary.md", summary_text(rows))
    if rows:
        from src.plots.sweep import sweep_figure

        figure = sweep_figure(rows)
        write_atomically(sweep_dir / "summary.png", lambda partial: figure.savefig(partial, format="png", dpi=110))


def sweep_problem(config: DictConfig) -> str | None:
    """Why a sweep is refused before it starts: jobs that keep no Hydra record (hydra.output_subdir=null, or another
    folder), by which the summary lists them and ckpt_path=last finds them again (the summary said "no jobs"); or a
    continuous range in hydra.sweeper.params of a config file for the basic sweeper (the command line's is refused
    before Hydra starts)."""
    from src.utils.command_line import continuous_range_problem

    record = OmegaConf.select(config, "hydra.output_subdir")
    if record is None or str(record).split("/")[0] != ".hydra":
        given = "null" if record is None else record
        return (f"hydra.output_subdir={given} leaves the sweep's jobs without Hydra's record in <job>/.hydra/, which "
                "the sweep's summary lists them by and ckpt_path=last finds them by: leave hydra.output_subdir out in "
                "a sweep (a single run may set it).")
    if not str(OmegaConf.select(config, "hydra.sweeper._target_", default="")).endswith(".BasicSweeper"):
        return None
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    return next(filter(None, (continuous_range_problem(f"{key}: {value} in hydra.sweeper.params", key, str(value))
                              for key, value in params.items())), None)


def keep_earlier_sweep_record(sweep_dir: Path) -> None:
    """Hydra is about to write this command's multirun.yaml; a resubmitted job's would replace the sweep's own."""
    record = sweep_dir / "multirun.yaml"
    if record.is_file():  # copied, not moved: the resume resolvers (src/utils/run_folders.py) look for it until Hydra rewrites it
        written = time.strftime("%Y-%m-%d_%H-%M-%S", time.localtime(record.stat().st_mtime))
        shutil.copy2(record, sweep_dir / f"multirun-{written}.yaml")


def _ran_since(job_dir: Path, started: float) -> bool:
    """Whether this command ran the job: its metrics.json or Hydra's record (a resume adds a folder to it) is new."""
    return any(path.exists() and path.stat().st_mtime >= started for path in (job_dir / "metrics.json", job_dir / ".hydra"))


class SweepSummary(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        from src.utils.continue_run import say_the_sweep_folder_is_new
        from src.utils.sweep_stop import clear_stop_request, leave_interruptions_to_the_jobs

        self._started = time.time() - 1  # file times may be rounded down to the second
        sweep_dir = Path(config.hydra.sweep.dir)
        say_the_sweep_folder_is_new(config)
        clear_stop_request(sweep_dir)  # an earlier, stopped run of this sweep left one behind
        keep_earlier_sweep_record(sweep_dir)
        if "joblib" in str(OmegaConf.select(config, "hydra.launcher._target_", default="")):
            leave_interruptions_to_the_jobs(sweep_dir)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from src.utils.sweep_stop import clear_stop_request, requested_exit_code

        sweep_dir = Path(config.hydra.sweep.dir)
        rows = collect_jobs(sweep_dir)
        # Hydra reports a callback's exception as a mere warning and exits 0: the table and the exit code come first.
        try:
            write_summary_files(sweep_dir, rows)
            not_written, files = None, f" ({sweep_dir}/summary.{{csv,md,png}})"
        except Exception as err:
            not_written, files = f"{type(err).__name__}: {' '.join(str(err).split())}", ""
        counts = Counter(row["status"] for row in rows)  # ok, failed, interrupted, not run, ...
        log.info(
            "Sweep summary: %s%s:\n%s",
            ", ".join(f"{count} {status}" for status, count in counts.most_common()) or "no jobs", files,
            summary_text(rows),
        )
        if not_written:
            rewrite = f"from pathlib import Path; from src.utils.sweep_summary import write_summary; " \
                      f"write_summary(Path({str(sweep_dir.resolve())!r}))"
            log.error("Could not write the sweep's summary files into %s (%s). The jobs' own folders are intact. Free "
                      "some space or fix the folder, then write them from the jobs' folders: python -c %s", sweep_dir,
                      not_written, shlex.quote(rewrite))
        if _logs_to_tensorboard(config):  # logger=csv or logger=[]: the command would open an empty TensorBoard
            log.info("TensorBoard for the whole sweep: tensorboard --logdir %s",
                     shlex.quote(str(_tensorboard_folder(config, sweep_dir) or sweep_dir)))
        stopped_with = requested_exit_code(sweep_dir)
        left = ", ".join(f"{counts[status]} {status}" for status in ("interrupted", "not run") if counts[status])
        if stopped_with is not None:
            clear_stop_request(sweep_dir)
            log.error("The sweep was stopped (%s)%s", what_stopped(stopped_with),
                      f": {left}. {finish_the_sweep_advice(sweep_dir)}" if left else ".")
            raise SystemExit(stopped_with)
        if left:  # jobs of an earlier command, given other overrides this time
            log.warning("The sweep's folder still holds jobs that this command did not run (%s: %s): their overrides "
                        "are not among its jobs'. Finish them with the command that made them (multirun-<time>.yaml "
                        "records each earlier command) and ckpt_path=last.", left,
                        ", ".join(row["job"] for row in rows if row["status"] in ("interrupted", "not run")))
        # Judged on the jobs this command ran: a resubmitted job that fails must not pass for a success because
        # the sweep's other jobs had finished earlier.
        ran = [row for row in rows if _ran_since(sweep_dir / row["job"], getattr(self, "_started", 0.0))]
        if ran and all(row["status"] != "ok" for row in ran):
            which = "the sweep that this command ran" if len(ran) < len(rows) else "the sweep"
            log.error("Every job of %s failed; see the error column above.", which)
            raise SystemExit(1)
        if not_written:
            raise SystemExit(1)


def _logs_to_tensorboard(config: DictConfig) -> bool:
    loggers = OmegaConf.to_container(config.logger, resolve=False) if isinstance(config.get("logger"), DictConfig) else {}
    return any(isinstance(logger, dict) and str(logger.get("_target_", "")).endswith("TensorBoardLogger")
               for logger in loggers.values())


def _tensorboard_folder(config: DictConfig, sweep_dir: Path) -> Path | None:
    """Where the sweep's TensorBoard runs are when not in its jobs' folders: its subfolder of a folder shared by many
    runs (named as src/utils/run_folders.py logger_version names its jobs')."""
    written = OmegaConf.to_container(config.logger, resolve=False) if isinstance(config.get("logger"), DictConfig) else {}
    logger = written.get("tensorboard") or {}
    if not isinstance(logger.get("save_dir"), str) or "paths.output_dir" in logger["save_dir"]:
        return None  # in each job's folder: the sweep's folder holds them all
    try:
        save_dir, name = (OmegaConf.select(config, f"logger.tensorboard.{key}") for key in ("save_dir", "name"))
    except Exception:  # an interpolation only a job can resolve
        return None
    shared = Path(str(save_dir)).expanduser().resolve() / str(name or "")
    from src.utils.run_folders import versioned_by_run_folder

    ours = versioned_by_run_folder(logger)
    return shared / sweep_dir.resolve().relative_to(sweep_dir.resolve().anchor) if ours else shared
