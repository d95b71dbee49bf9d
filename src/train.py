"""Train a model, then test its best checkpoint on the official MNIST test set.

    python -m src.train model=cnn trainer.max_epochs=5
    python -m src.train -m model=mlp,cnn model.optimizer.lr=1e-3,3e-3

Heavy imports (torch, Lightning) happen inside `train`, so `--help` and `--cfg job` stay fast.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

from src import CONFIG_DIR
from src.errors import UserInputError

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict:
    """Fit and/or test as `cfg` says; returns the metrics also written to `<run dir>/metrics.json`."""
    started_run = time.perf_counter()
    import pytorch_lightning as pl
    import torch
    from hydra.utils import instantiate

    from src.utils.config_io import print_config_tree, save_config
    from src.utils.hparams import log_hparams_session, run_hparams
    from src.utils.instantiate import instantiate_entries
    from src.utils.jobs import parallel_jobs, threads_per_job

    output_dir = Path(cfg.paths.output_dir)
    print_config_tree(cfg)
    save_config(cfg, output_dir)
    if parallel_jobs() > 1:
        torch.set_num_threads(threads_per_job())
        log.info("%d sweep jobs run in parallel: using %d CPU threads", parallel_jobs(), threads_per_job())

    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    # _convert_="all": plain dicts/lists reach the constructors, which is what checkpoints then store.
    datamodule = instantiate(cfg.data, _convert_="all")
    model = instantiate(cfg.model, _convert_="all")
    callbacks = instantiate_entries(cfg.get("callbacks"), "callbacks")
    loggers = instantiate_entries(cfg.get("logger"), "logger")
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    metrics: dict = {"status": "ok"}
    ckpt_path = cfg.get("ckpt_path")
    if cfg.get("train"):
        started = time.perf_counter()
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        metrics["fit_seconds"] = round(time.perf_counter() - started, 2)
        metrics["epochs"] = trainer.current_epoch
        if "val/acc_best" in trainer.callback_metrics:
            metrics["val/acc_best"] = float(trainer.callback_metrics["val/acc_best"])
        ckpt_path = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else None
        metrics["best_model_path"] = ckpt_path or None
        if not ckpt_path:
            log.warning("No best checkpoint was saved (checkpointing off?): testing the final weights.")
    if cfg.get("test"):
        if not cfg.get("train") and not ckpt_path:
            log.warning("test without train and without ckpt_path: testing an untrained model.")
        started = time.perf_counter()
        (results,) = trainer.test(model, datamodule=datamodule, ckpt_path=ckpt_path or None)
        metrics["test_seconds"] = round(time.perf_counter() - started, 2)
        metrics.update({key: float(value) for key, value in results.items()})
        metrics["tested_checkpoint"] = ckpt_path or None

    num_parameters = sum(p.numel() for p in model.parameters())
    log_hparams_session(loggers, run_hparams(cfg, num_parameters))
    metrics["wall_seconds"] = round(time.perf_counter() - started_run, 2)
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    log_summary(metrics, output_dir, has_tensorboard=any(isinstance(x, pl.loggers.TensorBoardLogger) for x in loggers))
    return metrics


def log_summary(metrics: dict, output_dir: Path, has_tensorboard: bool) -> None:
    lines = ["", "=" * 60]
    if "test/acc" in metrics:
        lines.append(f"test accuracy : {metrics['test/acc']:.2%}  (official 10k MNIST test set)")
        lines.append(f"test loss     : {metrics['test/loss']:.4f}")
    if "val/acc_best" in metrics:
        lines.append(f"best val acc  : {metrics['val/acc_best']:.2%}")
    lines.append(f"run dir       : {output_dir}")
    if metrics.get("best_model_path"):
        lines.append(f"checkpoint    : {metrics['best_model_path']}")
    if has_tensorboard:
        lines.append(f"tensorboard   : tensorboard --logdir {output_dir}")
    lines.append("=" * 60)
    log.info("\n".join(lines))


def record_failure(cfg: DictConfig, err: Exception, wall_seconds: float) -> None:
    """Mark a sweep job as failed in its metrics.json, for the sweep summary."""
    error = str(err).splitlines()[0] if str(err) else type(err).__name__
    failure = {"status": "failed", "error": f"{type(err).__name__}: {error}", "wall_seconds": round(wall_seconds, 2)}
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "metrics.json").write_text(json.dumps(failure, indent=2) + "\n")


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    from src.utils.jobs import in_multirun

    started = time.perf_counter()
    try:
        metrics = train(cfg)
    except Exception as err:
        if in_multirun():
            # One bad job (say, a diverging lr) must not cost the rest of the sweep.
            if isinstance(err, UserInputError):
                log.error("This job failed: %s", err)
            else:
                log.exception("This job failed")
            record_failure(cfg, err, time.perf_counter() - started)
            return None
        if isinstance(err, UserInputError):
            log.error("%s", err)
            sys.exit(1)
        raise
    return metrics.get("val/acc_best")


if __name__ == "__main__":
    main()
