"""Evaluate a checkpoint on the official 10k MNIST test set, rebuilding the model from the checkpoint alone.

    python -m src.eval ckpt_path=outputs/<date>/<time>/checkpoints/epoch004.ckpt

Writes metrics.json (test/acc, test/loss, per-class accuracy), confusion_matrix.png and, if the model got any
image wrong, misclassified.png into its own run dir, and logs them to TensorBoard.
"""

from __future__ import annotations

import time

import hydra
from omegaconf import DictConfig, OmegaConf

from src import CONFIG_DIR
from src.errors import UserInputError
from src.utils.command_line import run_command_line


def evaluate(cfg: DictConfig) -> dict:
    started = time.perf_counter()
    if OmegaConf.is_missing(cfg, "ckpt_path") or not cfg.ckpt_path:
        raise UserInputError("ckpt_path is required: python -m src.eval ckpt_path=<run dir>/checkpoints/<name>.ckpt")
    from src.models.checkpoint_file import read_checkpoint
    from src.utils.validate import check_run_settings

    check_run_settings(cfg)
    checkpoint = read_checkpoint(cfg.ckpt_path)  # before any other work (and imports): a bad path fails at once
    from src.models.loading import checkpoint_record, load_classifier
    from src.utils.command_words import run_it_again
    from src.utils.config_io import take_the_checkpoints_settings
    from src.utils.hparams import log_checkpoints_best, log_run_hparams
    from src.utils.instantiate import build_group
    from src.utils.interruptions import test_or_report_interruption
    from src.utils.run import finish_run, start_run
    from src.utils.trainer_setup import build_trainer

    model, checkpoint = load_classifier(cfg.ckpt_path, checkpoint)
    take_the_checkpoints_settings(cfg, checkpoint)  # preprocess exactly as in training, whatever data.* says
    output_dir = start_run(cfg)
    datamodule = build_group(cfg, "data", "src.data.mnist_datamodule.MNISTDataModule")
    trainer, loggers = build_trainer(cfg)
    log_checkpoints_best(loggers, model)
    results = test_or_report_interruption(trainer, model, datamodule, None, run_it_again())

    metrics = {
        "status": "ok",
        **checkpoint_record(cfg.ckpt_path, checkpoint, model),
        **{key: float(value) for key, value in results.items()},
        "wall_seconds": round(time.perf_counter() - started, 2),
    }
    log_run_hparams(loggers, cfg, model, trainer, checkpoint)  # a row in the HParams table, as for a training run
    finish_run(metrics, output_dir, loggers)
    return metrics


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="eval")
def main(cfg: DictConfig) -> float | None:
    from src.utils.run import run_reporting_failures

    metrics = run_reporting_failures(evaluate, cfg)
    return metrics.get("test/acc") if metrics else None


if __name__ == "__main__":
    run_command_line(main)
