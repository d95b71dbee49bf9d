"""The Lightning Trainer of a run, from the `trainer`, `callbacks` and `logger` groups."""

from __future__ import annotations

import logging

from omegaconf import DictConfig, OmegaConf

from src.errors import UserInputError

log = logging.getLogger(__name__)


def build_trainer(cfg: DictConfig):
    """(Trainer, loggers) from the `trainer`, `callbacks` and `logger` groups."""
    from pytorch_lightning import Callback
    from pytorch_lightning.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint, ModelSummary, ProgressBar
    from pytorch_lightning.loggers import Logger
    from pytorch_lightning.plugins.io import TorchCheckpointIO
    from pytorch_lightning.utilities.exceptions import MisconfigurationException

    from src.callbacks.safety import GracefulStop
    from src.utils.checkpoint_io import AtomicCheckpointIO
    from src.utils.instantiate import build, instantiate_entries
    from src.utils.quiet_lightning import quiet_lightning
    from src.utils.spawned_progress import return_spawned_progress

    quiet_lightning()
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda"):
        import torch

        # Lightning's `gpu` is also a Mac's Apple GPU (MPS); `cuda` is not.
        if not torch.cuda.is_available() and not (accelerator == "gpu" and torch.backends.mps.is_available()):
            raise UserInputError(
                f"trainer.accelerator={accelerator} (trainer=gpu or trainer=ddp), but torch finds no CUDA GPU here. "
                "Use the default trainer (it picks the GPU when there is one) or trainer=cpu."
            )
    if cfg.get("test", True) and cfg.trainer.get("limit_test_batches") == 0:
        raise UserInputError("trainer.limit_test_batches=0 would test on no images. Use test=false to skip testing "
                             "(python -m src.train), or a limit above 0.")
    callbacks = instantiate_entries(cfg.get("callbacks"), "callbacks", Callback)
    # A trainer switch turned off means the callbacks it governs are not wanted: Lightning would refuse them (progress
    # bar, checkpoints) or still run them (model summary).
    for switch, kind in (("enable_model_summary", ModelSummary), ("enable_progress_bar", ProgressBar),
                         ("enable_checkpointing", ModelCheckpoint)):
        if cfg.trainer.get(switch) is False:
            callbacks = [cb for cb in callbacks if not isinstance(cb, kind)]
    if cfg.get("train") and cfg.get("test"):
        from src.callbacks.test_limit import TestLimitCheck

        callbacks.append(TestLimitCheck())
    if any(isinstance(cb, EarlyStopping) for cb in callbacks):
        from src.callbacks.early_stop import StayStoppedEarly

        callbacks.append(StayStoppedEarly())
    # Ctrl-C's stop is raised in GracefulStop's on_train_batch_end, so that hook must come after the other callbacks'
    # (weight averaging must count the batch; Lightning moves the checkpoint callbacks, which do nothing per batch
    # here, to the end), as Lightning's SIGTERM stop comes after all of them.
    stops = [cb for cb in callbacks if isinstance(cb, GracefulStop)]
    callbacks = [cb for cb in callbacks if cb not in stops] + stops
    _check_tensorboard_settings(cfg.get("logger"))
    loggers = instantiate_entries(cfg.get("logger"), "logger", Logger)
    if any(isinstance(cb, LearningRateMonitor) for cb in callbacks) and (reason := _learning_rate_not_charted(cfg, loggers)):
        log.info("%s", reason)
        callbacks = [cb for cb in callbacks if not isinstance(cb, LearningRateMonitor)]
    trainer = build(cfg.trainer, callbacks=callbacks, logger=loggers or False, **_slurm_plugin(cfg.trainer),
                    refused_by=(MisconfigurationException, ValueError, TypeError, ImportError))
    _refuse_lightnings_slurm_checkpoints(trainer.default_root_dir)
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # Lightning's default, not one a user configured
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()
    return_spawned_progress(trainer)
    return trainer, loggers


def _slurm_plugin(trainer: DictConfig) -> dict:
    """In a SLURM job, Lightning's SLURM environment without its auto-requeue (src/utils/slurm.py stops and requeues
    instead); none where the trainer config names plugins of its own."""
    from src.utils.slurm import in_slurm_job

    if not in_slurm_job() or trainer.get("plugins"):
        return {}
    from pytorch_lightning.plugins.environments import SLURMEnvironment

    return {"plugins": [SLURMEnvironment(auto_requeue=False)]}


def _refuse_lightnings_slurm_checkpoints(folder: str) -> None:
    """In a SLURM job Lightning would resume from (and test) an hpc_ckpt_<n>.ckpt in the run folder whenever it is given
    no checkpoint, unchecked. This project never writes one (src/utils/slurm.py); one left by another tool is refused."""
    from pathlib import Path

    from src.utils.slurm import in_slurm_job

    found = sorted(Path(folder).glob("hpc_ckpt_*.ckpt")) if in_slurm_job() else []
    if found:
        raise UserInputError(
            f"{found[-1]} is a checkpoint of Lightning's own SLURM auto-requeue, which Lightning would resume from "
            "without this run's checks. Move the hpc_ckpt_*.ckpt files out of that folder; this project continues a run "
            "from its checkpoints/last.ckpt (ckpt_path=last).")


def _check_tensorboard_settings(loggers: DictConfig | None) -> None:
    """TensorBoardLogger hands settings it does not know to the SummaryWriter it makes at the first metric: a typo
    (+logger.tensorboard.nme=x) would fail with a traceback once training has run a while."""
    import inspect

    from pytorch_lightning.loggers import TensorBoardLogger
    from torch.utils.tensorboard import SummaryWriter

    for name, entry in (loggers or {}).items():
        if not isinstance(entry, DictConfig) or not _builds_a_tensorboard_logger(entry.get("_target_")):
            continue
        known = set(inspect.signature(TensorBoardLogger).parameters) | set(inspect.signature(SummaryWriter).parameters)
        known -= {"self", "kwargs", "log_dir"}  # log_dir: TensorBoardLogger passes its own
        unknown = sorted(set(entry) - known - {"_target_"})
        if unknown:
            raise UserInputError(f"logger.{name}.{unknown[0]} is not a setting of logger.{name} (TensorBoardLogger and "
                                 f"the SummaryWriter it makes), a typo? Its settings are: {', '.join(sorted(known))}.")


def _builds_a_tensorboard_logger(target: object) -> bool:
    """TensorBoardLogger under any of its names, or a subclass of it."""
    from hydra.utils import get_class
    from pytorch_lightning.loggers import TensorBoardLogger

    try:
        found = get_class(str(target))
    except Exception:  # reported when the loggers are built
        return False
    return isinstance(found, type) and issubclass(found, TensorBoardLogger)


def _learning_rate_not_charted(cfg: DictConfig, loggers: list) -> str | None:
    """Why the learning-rate monitor is left out, if it is."""
    if not loggers:  # Lightning refuses a learning-rate monitor without a logger; there is nowhere to log to
        return "No logger configured (logger=[]): the learning rate is not logged."
    scheduler = OmegaConf.select(cfg, "model.scheduler", default=None)
    if "model" in cfg and (scheduler is None or scheduler.get("name", "none") == "none"):
        # Nothing to chart, and Lightning would name the curve after the optimizer (lr-Adam), not `lr`.
        return "No learning-rate schedule (model.scheduler.name=none): the learning rate stays at model.optimizer.lr."
    return None
