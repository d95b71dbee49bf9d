"""Checks of the composed training config that must run before any work starts. Data sizes are checked
by the DataModule's constructor, which runs before any data is read."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from src.errors import UserInputError
from src.models.optim_config import check_optimizer_config, check_scheduler_config


def validate_train_config(cfg: DictConfig) -> None:
    from src.utils.jobs import in_multirun

    model = OmegaConf.to_container(cfg.model, resolve=True)
    check_optimizer_config(model.get("optimizer") or {})
    check_scheduler_config(model.get("scheduler"))
    for key, usual in (("label_smoothing", "; 0.1 is usual"), ("dropout", "")):
        value = model.get(key, 0.0)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1:
            raise UserInputError(f"model.{key}={value} is invalid: it must be a number in [0, 1) (0 turns it off{usual}).")
    seed = cfg.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise UserInputError(f"seed={seed} is invalid: it must be an integer, or null for an unseeded run.")
    max_epochs = cfg.trainer.get("max_epochs")
    if not isinstance(max_epochs, int) or isinstance(max_epochs, bool) or max_epochs < 1:
        raise UserInputError(f"trainer.max_epochs={max_epochs} is invalid: it must be an integer >= 1.")
    strategy = str(cfg.trainer.get("strategy", "auto"))
    if in_multirun() and strategy.startswith("ddp") and not strategy.startswith("ddp_spawn") and not _in_slurm_task():
        raise UserInputError(
            f"trainer.strategy={strategy} cannot run inside a Hydra multirun: Lightning would relaunch the whole "
            "sweep in every process. Use trainer.strategy=ddp_spawn in sweeps, or hydra/launcher=slurm for clusters."
        )


def _in_slurm_task() -> bool:
    """Inside a SLURM task (hydra/launcher=slurm), SLURM starts every DDP process itself: Lightning relaunches nothing."""
    from pytorch_lightning.plugins.environments import SLURMEnvironment

    return SLURMEnvironment.detect()
