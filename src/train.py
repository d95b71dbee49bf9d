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
    import pytorch_lightning as pl
    from hydra.utils import instantiate

    from src.utils.config_io import print_config_tree, save_config
    from src.utils.instantiate import instantiate_entries

    output_dir = Path(cfg.paths.output_dir)
    print_config_tree(cfg)
    save_config(cfg, output_dir)

    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    # _convert_="all": plain dicts/lists reach the constructors, which is what checkpoints then store.
    datamodule = instantiate(cfg.data, _convert_="all")
    model = instantiate(cfg.model, _convert_="all")
    callbacks = instantiate_entries(cfg.get("callbacks"), "callbacks")
    loggers = instantiate_entries(cfg.get("logger"), "logger")
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    metrics: dict = {}
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


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        metrics = train(cfg)
    except UserInputError as err:
        log.error("%s", err)
        sys.exit(1)
    return metrics.get("val/acc_best")


if __name__ == "__main__":
    main()
