"""Checks of the composed training config that must run before any work starts, and before torch and Lightning are
imported where they can."""

from __future__ import annotations

import logging

from omegaconf import DictConfig, OmegaConf

from src.errors import UserInputError
from src.models.optim_config import (
    check_momentum_is_used,
    check_optimizer_config,
    check_scheduler_config,
    optimizer_settings,
)
from src.utils.command_words import override_value
from src.utils.instantiate import not_a_setting, takes_setting
from src.utils.launchers import Launcher, external_launcher
from src.utils.setting_checks import is_finite_number, is_number, is_whole, require_true_or_false

log = logging.getLogger(__name__)


# Lightning checks these only once training runs, with a traceback after the data has been read (text fails a
# comparison; check_val_every_n_epoch=0 and accumulate_grad_batches=0 divide by zero). 0 turns step logging off.
WHOLE_NUMBER_SETTINGS = {"trainer.check_val_every_n_epoch": 1, "trainer.accumulate_grad_batches": 1,
                         "trainer.log_every_n_steps": 0, "trainer.num_sanity_val_steps": -1,  # -1: every batch
                         "callbacks.model_summary.max_depth": -1, "callbacks.progress_bar.refresh_rate": 0}
BATCH_LIMITS = ("trainer.limit_train_batches", "trainer.limit_val_batches", "trainer.limit_test_batches")


def check_run_settings(cfg: DictConfig) -> None:
    """The settings that src.train and src.eval both read: the seed, the data's, and the trainer's numbers and
    switches."""
    seed = cfg.get("seed")
    if seed is not None and (not is_whole(seed) or not 0 <= seed < 2**32):
        raise UserInputError(f"seed={override_value(seed)} is invalid: "
                             "it must be an integer from 0 to 2**32-1, or null for an unseeded run.")
    _check_data(cfg)  # after the seed, which data.shuffle_seed follows
    for key, low in WHOLE_NUMBER_SETTINGS.items():
        value = OmegaConf.select(cfg, key, default=None)  # null: Lightning's default, or the callback left out
        if value is not None and (not is_whole(value) or value < low):
            raise UserInputError(f"{key}={override_value(value)} is invalid: it must be an integer >= {low}.")
    for key in BATCH_LIMITS:
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and not (is_whole(value) and value >= 0 or is_number(value) and 0 <= value <= 1):
            raise UserInputError(f"{key}={override_value(value)} is invalid: "
                                 "it must be a whole number of batches >= 0, or a fraction "
                                 "of the batches from 0.0 to 1.0 (1.0: all of them).")
    # The trainer is built with the logger and callbacks groups' objects, which would replace these without a word.
    for key, instead in (("logger", "logger=[] for none, or logger=csv"),
                         ("callbacks", "callbacks=[default,early_stopping], or +callbacks.<name>._target_=<class>")):
        if key in cfg.trainer:
            raise UserInputError(f"trainer.{key} is not a setting here: the {key} group chooses them. Use {instead}.")
    clip = cfg.trainer.get("gradient_clip_val")
    # Lightning fails on nan only mid-step, and takes a negative value as no clipping without a word.
    if clip is not None and not (is_finite_number(clip) and clip >= 0):
        raise UserInputError(f"trainer.gradient_clip_val={override_value(clip)} is invalid: "
                             "it must be a finite number > 0, or 0 or null for no clipping.")
    deterministic = cfg.trainer.get("deterministic")
    # Lightning half applies a text switch or a number (1 == True in Python, but not to Lightning's `is True`)
    if not (deterministic is None or isinstance(deterministic, bool) or deterministic == "warn"):
        raise UserInputError(f"trainer.deterministic={override_value(cfg.trainer.deterministic)} is invalid: "
                             "it must be true, false or warn.")


def _check_data(cfg: DictConfig) -> None:
    """This project's DataModule checks its settings itself, but only once Lightning is imported to build it."""
    import inspect

    from src.data.augment_settings import augment_settings
    from src.data.data_settings import check_data_settings

    data = cfg.get("data")
    if not isinstance(data, DictConfig) or data.get("_target_") != "src.data.mnist_datamodule.MNISTDataModule":
        return
    settings = OmegaConf.to_container(data, resolve=True)
    checked = inspect.signature(check_data_settings).parameters
    if all(name in settings for name in checked):  # else the constructor's defaults fill in, and it checks
        check_data_settings(**{name: settings[name] for name in checked})
    augment_settings(settings.get("augment"))


def validate_train_config(cfg: DictConfig) -> None:
    """The checks that need no imports come first: a refused value should not wait seconds for Lightning."""
    model = OmegaConf.to_container(cfg.model, resolve=True)
    check_optimizer_config(model.get("optimizer") or {})
    check_scheduler_config(model.get("scheduler"), lr=(model.get("optimizer") or {}).get("lr"))
    check_momentum_is_used(model.get("optimizer") or {}, model.get("scheduler"))
    _check_switches(cfg, model)
    _check_precision(cfg, model)
    check_run_settings(cfg)
    _check_epochs(cfg)
    _check_fractions(cfg, model)
    _check_callbacks(cfg)
    _check_strategy(cfg)
    _warn_of_unvalidated_epochs(cfg)


def _check_switches(cfg: DictConfig, model: dict) -> None:
    for key in ("train", "test"):
        if key in cfg:
            require_true_or_false(key, cfg[key])
    for key in ("batch_norm", "pool", "compile", "channels_last"):
        if key in model:
            require_true_or_false(f"model.{key}", model[key])
    if cfg.get("train") and model.get("batch_norm") and is_whole(cfg.data.get("batch_size")) and cfg.data.batch_size == 1:
        raise UserInputError("data.batch_size=1 cannot train with batch norm (it needs 2 or more images per batch). "
                             "Use data.batch_size>=2, or model.batch_norm=false.")


def _check_precision(cfg: DictConfig, model: dict) -> None:
    optimizer = optimizer_settings(model.get("optimizer") or {})["name"]
    if cfg.get("train") and str(cfg.trainer.get("precision")) == "16-true" and optimizer in ("adam", "adamw"):
        # Adam's eps (1e-8) is 0 in float16 and small squared gradients underflow to 0: updates of 0/0 from the start.
        raise UserInputError(f"trainer.precision=16-true cannot train with model.optimizer.name={optimizer}: its "
                             "running averages underflow in float16, and the first steps give nan. Use "
                             "trainer.precision=bf16-true (the same memory, float32's range), 16-mixed, or "
                             "model.optimizer.name=sgd.")


def _check_epochs(cfg: DictConfig) -> None:
    max_epochs = cfg.trainer.get("max_epochs")
    if not is_whole(max_epochs) or max_epochs < 1:
        raise UserInputError(f"trainer.max_epochs={override_value(max_epochs)} is invalid: it must be an integer >= 1.")
    interval = cfg.trainer.get("val_check_interval")
    if is_whole(interval) and interval < 1:  # 0 batches: a ZeroDivisionError once training runs
        raise UserInputError(f"trainer.val_check_interval={override_value(interval)} is invalid: "
                             "it must be a number of training batches >= 1, or a fraction of an epoch such as 0.25.")


def _warn_of_unvalidated_epochs(cfg: DictConfig) -> None:
    """After the checks: finding the process's rank imports Lightning, which a refusal should not wait for."""
    max_epochs, every = cfg.trainer.max_epochs, cfg.trainer.get("check_val_every_n_epoch") or 1
    if cfg.get("train") and max_epochs % every and _rank_zero():
        unvalidated = "no epoch is" if max_epochs < every else f"the last {max_epochs % every} epoch(s) are never"
        log.warning("trainer.max_epochs=%d with trainer.check_val_every_n_epoch=%d: %s validated, so the weights tested "
                    "are not the last ones trained. A multiple of %d epochs avoids that.",
                    max_epochs, every, unvalidated, every)


def _check_fractions(cfg: DictConfig, model: dict) -> None:
    for key, usual in (("label_smoothing", "; 0.1 is usual"), ("dropout", ""), ("conv_dropout", "")):
        value = model.get(key, 0.0)
        if not is_number(value) or not 0 <= value < 1:
            # +model.conv_dropout=1.5 for an MLP: a typo first. Only for a key added so: finding out imports the model.
            if key in model and _added_by_the_user(f"model.{key}") and not takes_setting(cfg.model, key):
                raise not_a_setting(cfg.model, key)
            raise UserInputError(f"model.{key}={override_value(value)} is invalid: "
                                 f"it must be a number in [0, 1) (0 turns it off{usual}).")


def _added_by_the_user(key: str) -> bool:
    """Whether an override added `key` (+key=..., ++key=...) rather than set one the config has; True when there is
    no record of the overrides to tell (a config composed without Hydra's app)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return True
    return any(word.startswith("+") and word.lstrip("+").partition("=")[0] == key
               for word in HydraConfig.get().overrides.task)


def _check_callbacks(cfg: DictConfig) -> None:
    callbacks = cfg.get("callbacks") or {}
    # Callbacks chosen without `default` (callbacks=early_stopping); not callbacks=[] or a checkpoint set to null.
    if cfg.get("train") and callbacks and "model_checkpoint" not in callbacks and not _has_checkpoint_callback(callbacks):
        chosen = _chosen_callbacks() or f"[{','.join(callbacks)}]"
        options = chosen[1:-1] if chosen.startswith("[") else chosen
        raise UserInputError(
            f"callbacks={chosen} leaves out the checkpoint callbacks, which come with `default`: training could neither "
            f"test its best epoch nor be resumed. Keep the defaults and add to them: "
            f"callbacks=[default{',' + options if options else ''}]."
        )
    _check_early_stopping(callbacks, OmegaConf.select(cfg, "trainer.limit_val_batches", default=None))


def _check_strategy(cfg: DictConfig) -> None:
    """Strategies that start this script again for each further device, where it cannot be started again."""
    from src.utils.command_words import called_from_python
    from src.utils.jobs import in_multirun

    launcher = external_launcher()
    if launcher:
        _check_launched_processes(cfg.trainer, launcher)
        unseeded = [key for key in ("seed", "data.shuffle_seed") if OmegaConf.select(cfg, key, default=0) is None]
        if unseeded and _process_count(cfg.trainer) > 1:  # no process can hand its draw to the others
            raise UserInputError(f"{unseeded[0]}=null cannot be used in a {launcher.name} of several training processes: "
                                 f"{launcher.by} starts each of them, and each would draw a seed of its own "
                                 f"(their shares of the data would overlap). Give one: {unseeded[0]}=<number>.")
        return  # SLURM or torchrun starts every DDP process itself: Lightning relaunches nothing
    from_python, sweeping = called_from_python(), in_multirun()
    if not (from_python or sweeping):  # the command line of a single run: Lightning's relaunch works
        return
    strategy = str(cfg.trainer.get("strategy", "auto"))
    relaunches = strategy.startswith("ddp") or (strategy == "auto" and _several_processes(cfg.trainer))
    if relaunches and from_python and not strategy.startswith(("ddp_spawn", "ddp_fork", "ddp_notebook")):
        raise UserInputError(
            f"trainer.strategy={strategy} with trainer.devices={cfg.trainer.get('devices', 'auto')} would start this "
            "script again for each further device, which a call from Python (a notebook) cannot be: use "
            "++trainer.strategy=ddp_spawn, or the command line."
        )
    if sweeping and relaunches and not strategy.startswith("ddp_spawn"):
        raise UserInputError(
            f"trainer.strategy={strategy} with trainer.devices={cfg.trainer.get('devices', 'auto')} cannot run inside a "
            "Hydra multirun: Lightning would relaunch the whole sweep in every process. Use ++trainer.strategy=ddp_spawn "
            "in sweeps, or hydra/launcher=slurm for clusters."
        )


def _check_launched_processes(trainer: DictConfig, launcher: Launcher) -> None:
    """Under SLURM or torchrun each DDP process is one the launcher started: with fewer than the trainer's processes
    Lightning would train in fewer without a word (SLURM), or each would train a model of its own into the same folder
    (torchrun); with more it fails with a traceback."""
    processes, nodes = _process_count(trainer), trainer.get("num_nodes", 1)
    on_each_node = processes // nodes if isinstance(nodes, int) and nodes > 0 else processes
    if launcher.per_node.isdigit() and int(launcher.per_node) != on_each_node:
        have = f"{launcher.per_node} {launcher.unit} per node ({launcher.per_node_variable})"
    elif launcher.processes.isdigit() and int(launcher.processes) != processes:
        have = f"{launcher.processes} {launcher.unit} ({launcher.processes_variable})"
    else:
        return
    raise UserInputError(
        f"This {launcher.name} has {have}, but trainer.devices={trainer.get('devices', 'auto')} and "
        f"trainer.num_nodes={trainer.get('num_nodes', 1)} make {processes} training process(es): in a "
        f"{launcher.name} {launcher.by} starts each of them. To match, {launcher.ask_for}, or set "
        "trainer.devices to the processes there are.")


def _check_early_stopping(callbacks: DictConfig | dict, limit_val_batches) -> None:
    """EarlyStopping takes any value and compares it only at the end of an epoch: patience=abc failed with a
    traceback after the first validation's training, and without validation it fails then (before last.ckpt is
    saved: the epoch is lost) on a validation metric it cannot find. The values first: finding an entry's class
    imports Lightning, which a refusal of another setting should not wait for."""
    for name, entry in callbacks.items():
        if not isinstance(entry, DictConfig):  # null: left out; no entry of another kind builds a callback
            continue
        monitor = entry.get("monitor")
        if limit_val_batches == 0 and str(monitor).startswith("val/") and _is_subclass(entry, EARLY_STOPPING):
            raise UserInputError(f"callbacks.{name} stops on {monitor}, but trainer.limit_val_batches="
                                 f"{override_value(limit_val_batches)} turns validation "
                                 f"off, so there is none to watch. Validate (leave trainer.limit_val_batches out), or "
                                 f"leave early stopping out (callbacks=[default]).")
        patience = entry.get("patience", 3)
        if (not is_whole(patience) or patience < 0) and _is_subclass(entry, EARLY_STOPPING):
            raise UserInputError(f"callbacks.{name}.patience={override_value(patience)} is invalid: "
                                 "it must be a whole number of validations >= 0.")
        for key in ("min_delta", "stopping_threshold", "divergence_threshold"):
            value = entry.get(key, 0.0)
            # nan compares false with everything: min_delta=nan stopped a run that was improving, without a word.
            if not is_finite_number(value) and (value is not None or key == "min_delta") and _is_subclass(entry, EARLY_STOPPING):
                raise UserInputError(f"callbacks.{name}.{key}={override_value(value)} is invalid: it must be a finite "
                                     f"number{'' if key == 'min_delta' else ', or null for none'}.")


EARLY_STOPPING = "pytorch_lightning.callbacks.EarlyStopping"


def _is_subclass(entry, class_path: str) -> bool:
    """Whether a callbacks entry builds the class at `class_path`, or a subclass of it."""
    from hydra.utils import get_class

    if not isinstance(entry, DictConfig) or not entry.get("_target_"):
        return False
    try:
        target = get_class(entry._target_)
    except Exception:  # reported when the callbacks are built
        return False
    return isinstance(target, type) and issubclass(target, get_class(class_path))


# conf/callbacks/'s other classes, told apart from a checkpoint without importing them (and Lightning): so
# callbacks=early_stopping is refused at once.
NOT_CHECKPOINTS = {EARLY_STOPPING, "pytorch_lightning.callbacks.LearningRateMonitor",
                   "pytorch_lightning.callbacks.TQDMProgressBar", "src.callbacks.figures.DiagnosticFigures",
                   "src.callbacks.safety.GracefulStop", "src.callbacks.safety.DivergenceGuard",
                   "src.callbacks.network_summary.NetworkSummary", "src.callbacks.weight_averaging.WeightEMA"}


def _has_checkpoint_callback(callbacks: DictConfig | None) -> bool:
    entries = [entry for entry in (callbacks or {}).values()
               if not (isinstance(entry, DictConfig) and entry.get("_target_") in NOT_CHECKPOINTS)]
    return any(_is_subclass(entry, "pytorch_lightning.callbacks.ModelCheckpoint") for entry in entries)


def _chosen_callbacks() -> str | None:
    """The `callbacks` choice as the user gave it ("early_stopping", "[early_stopping,ema]"); None when composed
    without @hydra.main (tests). Hydra records a single option among its choices, but not a list of them."""
    from hydra.core.hydra_config import HydraConfig

    try:
        hydra_config = HydraConfig.get()
    except ValueError:
        return None
    for override in hydra_config.overrides.task:
        key, _, value = override.partition("=")
        if key == "callbacks":
            return value
    choice = hydra_config.runtime.choices.get("callbacks")
    return choice if isinstance(choice, str) else None


def _rank_zero() -> bool:
    from src.utils.run import is_rank_zero

    return is_rank_zero()


def _several_processes(trainer: DictConfig) -> bool:
    """Whether Lightning's automatic strategy starts more than one process (it picks DDP for several devices)."""
    return _process_count(trainer) > 1


def _process_count(trainer: DictConfig) -> int:
    """How many training processes the trainer's devices and nodes make (one per device, on each node)."""
    import torch

    devices, nodes = trainer.get("devices", "auto"), trainer.get("num_nodes", 1)
    gpus = torch.cuda.device_count() if str(trainer.get("accelerator", "auto")) in ("auto", "gpu", "cuda") else 0
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        devices = int(devices)
    if devices == "auto":
        count = gpus or 1
    elif devices == -1:  # every GPU (Lightning refuses it on a CPU)
        count = gpus or 1
    elif isinstance(devices, int):
        count = devices
    else:  # a list or a comma-separated string of GPU indices
        count = len(devices) if not isinstance(devices, str) else len([d for d in devices.split(",") if d.strip()])
    return count * (nodes if isinstance(nodes, int) and nodes > 0 else 1)
