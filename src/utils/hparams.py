"""One HParams session per run, with the same hyperparameter and metric keys in every run, so a sweep
is a sortable table in TensorBoard's HParams tab."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from src.models.optim_config import optimizer_settings, scheduler_settings
from src.utils.command_words import override_value

# The metric columns of the HParams table; their values are the scalars logged under these tags.
HPARAM_METRICS = ("val/acc_best", "test/acc", "test/loss")
_SHARED_MODEL_KEYS = (
    "_target_", "optimizer", "scheduler", "dropout", "conv_dropout", "batch_norm", "label_smoothing", "compile",
    "channels_last", "cuda_graph",
)


def run_hparams(
    cfg: DictConfig, num_parameters: int, model_config: DictConfig | dict | None = None, actual: dict | None = None
) -> dict[str, str | float | int | None]:
    """Flat, plain values under a fixed set of keys, whatever the model: architecture-specific sizes
    are folded into one `model/arch` string so MLP and CNN runs share the same columns. `model_config`: when a
    checkpoint is tested, its model settings; `actual`: values under these keys that replace the config's (what
    Lightning ran with; a tested checkpoint's `trained_settings`)."""
    model = cfg.model if model_config is None else model_config
    model = OmegaConf.to_container(model, resolve=True) if isinstance(model, DictConfig) else dict(model)
    optimizer = optimizer_settings(model.get("optimizer") or {})  # settings left out at their defaults
    scheduler = scheduler_settings(model.get("scheduler"))
    augment = OmegaConf.to_container(cfg.data, resolve=True).get("augment") or {}
    arch = ", ".join(f"{k}={v}" for k, v in sorted(model.items()) if k not in _SHARED_MODEL_KEYS)
    values = {
        "model": model["_target_"].rsplit(".", 1)[-1],
        "model/arch": arch,
        "model/parameters": num_parameters,
        "model/dropout": float(model.get("dropout", 0.0)),
        "model/conv_dropout": float(model.get("conv_dropout", 0.0)),  # a CNN's; 0 for other models, as for one without
        "model/batch_norm": "true" if model.get("batch_norm", False) else "false",  # a bool would show as 1.0/0.0
        "model/label_smoothing": float(model.get("label_smoothing", 0.0)),
        # Speed switches, yet compiled or channels-last kernels sum in another order: a sweep over one differs a little.
        "model/compile": "true" if model.get("compile", False) else "false",
        "model/channels_last": "true" if model.get("channels_last", False) else "false",
        "model/cuda_graph": str(model.get("cuda_graph", False)).lower(),
        "optimizer/name": str(optimizer["name"]),
        "optimizer/lr": float(optimizer.get("lr", 0.0)),
        "optimizer/weight_decay": float(optimizer["weight_decay"]),
        "optimizer/settings": _settings_read(optimizer),  # momentum, betas, ...
        "scheduler": str(scheduler["name"]),
        "scheduler/settings": _settings_read(scheduler),  # pct_start, warmup_steps, ...
        "callbacks/ema_decay": float(OmegaConf.select(cfg, "callbacks.ema.decay") or 0.0),  # 0 = off
        "data/batch_size": int(cfg.data.batch_size),
        "data/val_size": int(cfg.data.val_size),
        "data/augment": _describe_augment(augment),
        "trainer/max_epochs": int(cfg.trainer.max_epochs),
        "trainer/precision": str(cfg.trainer.get("precision", "32-true")),
        "trainer/accumulate_grad_batches": int(cfg.trainer.get("accumulate_grad_batches") or 1),
        "trainer/gradient_clip_val": float(cfg.trainer.get("gradient_clip_val") or 0.0),  # 0 = off
        "seed": int(cfg.seed) if cfg.get("seed") is not None else -1,
    }
    values.update({key: value for key, value in (actual or {}).items() if value is not None})
    return values


def _settings_read(settings: dict) -> str:
    """The settings without a column of their own that the chosen optimizer or scheduler reads, defaults included,
    as one text: sweeps over them must not give identical rows, nor the same training two different ones."""
    from src.models.optim_config import SETTINGS_READ_BY

    read = SETTINGS_READ_BY.get(str(settings["name"]), set(settings) - {"name"})
    return ", ".join(f"{key}={_word(value)}" for key, value in sorted(settings.items()) if key in read)


def _word(value) -> str:
    """A setting as an override writes it, whether it came from a config (25, [0.9, 0.999]) or a default (25.0,
    (0.9, 0.999)), so the same value gives the same text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(float(value))
    if isinstance(value, (list, tuple)):
        return f"[{', '.join(map(_word, value))}]"
    return override_value(value)


def trained_settings(checkpoint: dict) -> dict:
    """What a checkpoint records of how it was trained, under run_hparams' keys (None: not recorded). The epochs are
    those it had trained when saved; -1: weight averaging of an unrecorded decay, or a trainer setting unrecorded (a
    checkpoint of an older version)."""
    data = checkpoint.get("datamodule_hyper_parameters") or {}
    trainer = checkpoint.get("trainer_settings") or {}
    ema_states = [state for key, state in (checkpoint.get("callbacks") or {}).items() if key.startswith("WeightEMA")]
    if ema_states:
        ema_decay = float(ema_states[0].get("decay", -1.0))
    else:
        ema_decay = -1.0 if "current_model_state" in checkpoint else 0.0
    return {
        "data/batch_size": data.get("batch_size"),
        "data/val_size": data.get("val_size"),
        "data/augment": _describe_augment(data["augment"]) if "augment" in data else None,
        "trainer/max_epochs": checkpoint["epoch"] + 1 if "epoch" in checkpoint else None,
        "callbacks/ema_decay": ema_decay,
        "trainer/accumulate_grad_batches": trainer.get("accumulate_grad_batches", -1),
        "trainer/gradient_clip_val": trainer.get("gradient_clip_val", -1.0),
        # Checkpoints saved before they recorded the run's seed: the shuffle seed, which follows it by default.
        "seed": checkpoint.get("run_seed", data.get("shuffle_seed")),
    }


def _describe_augment(augment: dict) -> str:
    """The same text for the same settings, whether from a config (degrees: 8) or a checkpoint (degrees: 8.0)."""
    from src.data.augment_settings import augment_settings

    augment = augment_settings(augment)
    if not augment["enabled"]:
        return "off"
    return ", ".join(f"{k}={v}" for k, v in sorted(augment.items()) if k != "enabled")


def log_run_hparams(loggers, cfg: DictConfig, model, trainer, tested_checkpoint: dict | None = None) -> None:
    """The run's HParams session (from rank zero); for a checkpoint tested without training, the settings it was
    trained with. The precision is the one Lightning used: it runs 16-mixed as bf16-mixed on a CPU."""
    if not trainer.is_global_zero:
        return
    model_config, ran = None, {"trainer/precision": str(trainer.precision)}
    if tested_checkpoint is not None:
        model_config = {"_target_": tested_checkpoint["model_class"], **tested_checkpoint["hyper_parameters"]}
        ran.update(trained_settings(tested_checkpoint))
    log_hparams_session(loggers, run_hparams(cfg, sum(p.numel() for p in model.parameters()), model_config, ran))


def log_checkpoints_best(loggers, model) -> None:
    """For a checkpoint tested alone: its training's best validation accuracy, as the scalar the HParams table's
    column reads (a test alone logs no validation). Before the test, whose end saves and closes the loggers."""
    best = model.best_val_acc()
    if best is not None:
        for logger in loggers:
            logger.log_metrics({"val/acc_best": best}, step=0)


HPARAMS_FILE_SUFFIX = ".hparams"


def log_hparams_session(loggers, hparams: dict) -> None:
    """Write the HParams session into each TensorBoard logger's run, in an event file of its own that replaces the
    one an earlier attempt of the run wrote (a resume, an extension): TensorBoard shows only the first session it
    reads in a run. Metric values are not written here: TensorBoard reads them from the scalars already logged
    under the HPARAM_METRICS tags."""
    from pathlib import Path

    from pytorch_lightning.loggers import TensorBoardLogger
    from torch.utils.tensorboard.summary import hparams as hparams_summaries
    from torch.utils.tensorboard.writer import FileWriter

    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            for earlier in Path(logger.log_dir).glob(f"events.out.tfevents.*{HPARAMS_FILE_SUFFIX}"):
                earlier.unlink()
            writer = FileWriter(logger.log_dir, filename_suffix=HPARAMS_FILE_SUFFIX)
            try:
                for summary in hparams_summaries(hparams, {key: 0.0 for key in HPARAM_METRICS}):
                    writer.add_summary(summary)
            finally:  # its writer thread would otherwise outlive a failure here
                writer.close()
