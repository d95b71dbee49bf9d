"""Train a model, then test its best checkpoint on the official MNIST test set.

    python -m src.train model=cnn trainer.max_epochs=5
    python -m src.train -m model=mlp,cnn model.optimizer.lr=1e-3,3e-3
    python -m src.train ckpt_path=<run dir>/checkpoints/last.ckpt      # resume
    python -m src.train hydra.run.dir=<run dir> ckpt_path=last         # resume if it has a last.ckpt, else start

Heavy imports (torch, Lightning) happen inside `train`, so `--help` and `--cfg job` stay fast.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from src import CONFIG_DIR
from src.errors import RunInterrupted, TrainingDiverged
from src.utils.command_line import run_command_line
from src.utils.command_words import ckpt_path_override, command, eval_overrides, original_overrides, run_it_again
from src.utils.run_folders import made_here, resumed_job_dir

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict:
    """Fit and/or test as `cfg` says; returns the metrics also written to `<run dir>/metrics.json`."""
    started_run = time.perf_counter()
    from src.models.checkpoint_file import read_checkpoint
    from src.utils.hparams import log_run_hparams
    from src.utils.config_io import take_the_checkpoints_settings
    from src.utils.continue_run import take_this_runs_last_checkpoint
    from src.utils.instantiate import build_group
    from src.utils.run import finish_run, start_run
    from src.utils.trainer_setup import build_trainer
    from src.utils.validate import validate_train_config

    continuation = take_this_runs_last_checkpoint(cfg)  # ckpt_path=last
    if continuation == "keep":
        from src.utils.sweep_summary import read_metrics

        return read_metrics(Path(cfg.paths.output_dir) / "metrics.json")
    validate_train_config(cfg)  # before any work: a bad value fails in a second, not after loading data
    ckpt_path = cfg.get("ckpt_path")
    checkpoint = read_checkpoint(ckpt_path) if ckpt_path else None  # a mistyped path too, before the run folder
    resuming = bool(ckpt_path and cfg.get("train"))
    if cfg.get("seed") is None:  # an unseeded run: one seed drawn for it, recorded in config.yaml and HParams
        from src.utils.rng import unseeded_run_seed

        cfg.seed = unseeded_run_seed(checkpoint if resuming else None)
    if OmegaConf.select(cfg, "data.shuffle_seed", default=0) is None:  # recorded in config.yaml and HParams too
        from src.utils.rng import unseeded_shuffle_seed

        cfg.data.shuffle_seed = unseeded_shuffle_seed(checkpoint if resuming else None)
    if ckpt_path and not cfg.get("train"):
        take_the_checkpoints_settings(cfg, checkpoint)  # the network and normalization it is tested with
    output_folder = Path(cfg.paths.output_dir).resolve()
    # A resume in the checkpoint's own run folder saves config.yaml only after its fit: a refused one changes nothing.
    resuming_in_place = resuming and (continuation == "resume" or resumed_job_dir(ckpt_path, True) == output_folder)
    continuing = resuming and (continuation == "resume" or Path(ckpt_path).expanduser().resolve().is_relative_to(
        output_folder))
    if resuming_in_place:
        from src.utils.resume_check import check_latest_state

        check_latest_state(ckpt_path, checkpoint, original_overrides())
    output_dir = start_run(cfg, save=not resuming_in_place, continuing=continuing or continuation == "start")
    metrics: dict = {"status": "ok"}
    if ckpt_path and not cfg.get("train"):
        from src.models.loading import checkpoint_record, load_classifier

        # Testing a checkpoint: its own network (class, sizes and weights). Loaded here, as src.eval does: Lightning,
        # given the file, would restore the training callbacks' state too, and warn that their folder is not the file's.
        model, checkpoint = load_classifier(ckpt_path, checkpoint)
        log.info("Testing %s as saved in %s", type(model).__name__, ckpt_path)
        metrics.update(checkpoint_record(ckpt_path, checkpoint, model))
        ckpt_path = metrics["checkpoint"]
    else:
        from src.models.loading import check_model_class, check_trainable

        check_model_class(str(OmegaConf.select(cfg, "model._target_", default="")))
        model = build_group(cfg, "model", "src.models.cnn.CNN")
        check_trainable(model, cfg.model._target_)
    datamodule = build_group(cfg, "data", "src.data.mnist_datamodule.MNISTDataModule")
    trainer, loggers = build_trainer(cfg)
    # A folder given again (hydra.run.dir) after an attempt that saved no last.ckpt (it failed, or was killed): that
    # attempt's curves are set apart, not drawn on as one run with this one's.
    if (continuation == "start" or not (resuming or made_here(output_dir))) and trainer.is_global_zero:
        from src.utils.continue_run import set_aside_earlier_attempt

        set_aside_earlier_attempt(loggers)

    if cfg.get("train"):
        resumed_at_step = None
        if resuming:
            from src.utils.resume_check import check_resumable, follow_the_checkpoints_threads
            from src.utils.run import is_rank_zero

            check_resumable(ckpt_path, checkpoint, model, datamodule, trainer.callbacks)
            follow_the_checkpoints_threads(checkpoint, trainer)
            resumed_at_step = checkpoint.get("global_step")
            checkpoint = None  # not held through the fit: Lightning reads the file itself
            metrics["resumed_from"] = str(Path(ckpt_path).expanduser().resolve())
            if is_rank_zero():  # once, not once per DDP process
                log.info("Resuming from %s (epoch, optimizer, scheduler and RNG state)", ckpt_path)
        with _row_kept_if_stopped(cfg, trainer, model, None):
            ckpt_path = _fit(cfg, trainer, model, datamodule, ckpt_path, resumed_at_step, resuming_in_place, output_dir,
                             metrics)
    if cfg.get("test"):
        with _row_kept_if_stopped(cfg, trainer, model, None if cfg.get("train") else checkpoint):
            _test(cfg, trainer, model, datamodule, ckpt_path, metrics)

    # The HParams row describes this run's config, or for a checkpoint tested alone, the checkpoint's.
    log_run_hparams(trainer.loggers, cfg, model, trainer, None if cfg.get("train") else checkpoint)
    metrics["wall_seconds"] = round(time.perf_counter() - started_run, 2)
    finish_run(metrics, output_dir, loggers)
    return metrics


@contextlib.contextmanager
def _row_kept_if_stopped(cfg: DictConfig, trainer, model, tested_checkpoint: dict | None):
    """A sweep's diverged or stopped job keeps its row in the HParams table, with the metrics it had reached (the row
    is otherwise written when the run ends). A full disk then must not hide why the run stopped."""
    from src.utils.hparams import log_run_hparams

    try:
        yield
    except (TrainingDiverged, RunInterrupted):
        with contextlib.suppress(OSError):
            log_run_hparams(trainer.loggers, cfg, model, trainer, tested_checkpoint)
        raise


def _fit(cfg: DictConfig, trainer, model, datamodule, ckpt_path: str | None, resumed_at_step: int | None,
         resuming_in_place: bool, output_dir: Path, metrics: dict) -> str | None:
    """Train (or resume, from `ckpt_path` at `resumed_at_step`), recording in `metrics` how it went; returns the best
    checkpoint's path (None: none saved)."""
    import torch

    from src.callbacks.early_stop import early_stop, stop_reason
    from src.utils.config_io import save_config
    from src.utils.interruptions import fit_or_report_interruption
    from src.utils.run import is_rank_zero
    from src.utils.run_folders import event_files

    resuming = resumed_at_step is not None
    logged_before = event_files(trainer.loggers) if resuming else set()  # only a resume may train nothing
    started = time.perf_counter()
    fit_or_report_interruption(trainer, model, datamodule, ckpt_path, tests=bool(cfg.get("test")))
    stopper = early_stop(trainer)
    # Stopped short of max_epochs: Lightning keeps a stop's record when min_epochs overrules it, and keeps one that
    # comes in the last epoch.
    if stopper and trainer.current_epoch >= trainer.max_epochs >= 0:
        stopper = None
    stopped_after = f"after {trainer.current_epoch} of {trainer.max_epochs} epochs"
    if stopper:
        metrics["stopped_early"] = f"{stopped_after}: {stop_reason(stopper)}"
    metrics["fit_seconds"] = round(time.perf_counter() - started, 2)
    if resuming and trainer.global_step == resumed_at_step:
        reached = (f"early stopping had ended its run {stopped_after}" if stopper
                   else f"the checkpoint had reached trainer.max_epochs={trainer.max_epochs} already")
        _nothing_left_to_train(cfg, trainer, reached, logged_before, resuming_in_place, output_dir, metrics)
    if resuming_in_place and is_rank_zero():
        save_config(cfg, output_dir)
    # The CPU results depend on it (sums split over threads round differently); parallel sweep jobs use fewer.
    metrics["cpu_threads"] = torch.get_num_threads()
    metrics["epochs"] = trainer.current_epoch
    if model.best_val_acc() is not None:
        metrics["val/acc_best"] = model.best_val_acc()
    best = (trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else None) or None
    metrics["best_model_path"] = best
    if "tested_checkpoint" in metrics:  # kept from an earlier test, perhaps before the run folder was moved
        metrics["tested_checkpoint"] = metrics["best_model_path"]
    if not best:
        log.warning("No best checkpoint was saved (no validation ran, or checkpointing is off): testing the final "
                    "weights.")
    return best


def _nothing_left_to_train(cfg: DictConfig, trainer, reached: str, logged_before: set, resuming_in_place: bool,
                           output_dir: Path, metrics: dict) -> None:
    """A resume of a run that had ended (`reached` says how): say so, and keep out of TensorBoard what it logged at
    this very state before."""
    from src.utils.run_folders import drop_empty_event_files
    from src.utils.sweep_summary import read_metrics

    then = "so its run's best checkpoint is tested again" if cfg.get("test") else "and test=false: no test"
    log.info("Nothing left to train: %s, %s.", reached, then)
    drop_empty_event_files(trainer.loggers, logged_before)
    finished = read_metrics(output_dir / "metrics.json") if resuming_in_place else {}
    same_state = finished.get("status") == "ok" and finished.get("epochs") == trainer.current_epoch
    if same_state:
        metrics["fit_seconds"] = finished.get("fit_seconds", metrics["fit_seconds"])  # its training's own
    if same_state and "test/acc" in finished:
        # At this very state: its test results, figures and HParams row are in its TensorBoard run already, and a job
        # requeued after it had finished would add another copy of each every time.
        trainer.loggers = []
        if not cfg.get("test"):  # those results stand: the same best checkpoint (its path is set after this)
            log.info("metrics.json keeps the results of that state's earlier test.")
            metrics.update({key: value for key, value in finished.items() if key.startswith("test")})


def _test(cfg: DictConfig, trainer, model, datamodule, ckpt_path: str | None, metrics: dict) -> None:
    """Test the best checkpoint (after a fit), the checkpoint given (loaded as `model` already), or else `model` as it
    is; the results go into `metrics`."""
    from src.utils.hparams import log_checkpoints_best
    from src.utils.interruptions import test_or_report_interruption

    if not cfg.get("train") and not ckpt_path:
        log.warning("test without train and without ckpt_path: testing an untrained model.")
    started = time.perf_counter()
    test_again = command("eval", [*eval_overrides(), ckpt_path_override(ckpt_path)]) if ckpt_path else None
    advice = f"The checkpoints are intact; test this one with: {test_again}" if ckpt_path else run_it_again()
    tested = (ckpt_path or None) if cfg.get("train") else None  # a checkpoint tested alone is loaded already
    if ckpt_path and not cfg.get("train"):
        log_checkpoints_best(trainer.loggers, model)
    results = test_or_report_interruption(trainer, model, datamodule, tested, advice)
    metrics["test_seconds"] = round(time.perf_counter() - started, 2)
    metrics.update({key: float(value) for key, value in results.items()})
    metrics["tested_checkpoint"] = ckpt_path or None


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    from src.utils.run import run_reporting_failures

    metrics = run_reporting_failures(train, cfg)
    return metrics.get("val/acc_best") if metrics else None


if __name__ == "__main__":
    run_command_line(main)
