"""The checks before a training resume: the checkpoint must fit this run's model, data split and callbacks."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import OmegaConf

from src.utils.command_words import counted, override_value, resume_command

log = logging.getLogger(__name__)

# Data settings a run must keep: which images validate (changed mid-run, the best score so far would have been
# measured on other images, and images would move between training and validation), the input normalization, and
# the seed of the batch order (it follows `seed`: a resume that forgot seed=7 would not continue the same run).
FIXED_DATA_KEYS = ("val_size", "split_seed", "mean", "std", "shuffle_seed")
# Model settings that change only how fast the same arithmetic runs: a resume may switch them (a CPU run continued on
# a GPU, with channels_last, compile or a CUDA graph).
SPEED_ONLY_MODEL_KEYS = ("compile", "channels_last", "cuda_graph")


def check_resumable(ckpt_path: str, checkpoint: dict, model, datamodule, callbacks: list) -> None:
    """Fail before any work if the checkpoint (`ckpt_path`, read) was trained with another model config, validation
    split, normalization, seed or train file, or holds averaged weights this run would not average on, naming the
    overrides of the run that wrote it (they must be repeated to resume)."""
    from pytorch_lightning.callbacks import WeightAveraging

    from src.data.mnist_files import train_file_record
    from src.errors import ResumeRefused

    this_class = model.class_path
    trained_data = checkpoint.get("datamodule_hyper_parameters") or {}
    trained_file = (checkpoint.get(type(datamodule).__qualname__) or {}).get("train_file")  # older ones: none
    data_dir = getattr(datamodule, "data_dir", None)
    file_here = train_file_record(data_dir) if trained_file and data_dir else None
    if trained_file and data_dir and file_here is None:  # not there yet: fetched (downloaded) now, as fit would
        datamodule.prepare_data()
        file_here = train_file_record(data_dir)
    changed = [key for key in FIXED_DATA_KEYS if key in trained_data and trained_data[key] != datamodule.hparams[key]]
    saved = overrides_that_saved(ckpt_path, checkpoint.get("command_overrides"))
    this_model = dict(model.hparams)
    model_changes = _model_changes(_in_effect(_with_defaults(type(model), checkpoint["hyper_parameters"], this_model)),
                                   _in_effect(this_model))
    if checkpoint["model_class"] != this_class:
        trained_with = f"another model ({checkpoint['model_class']}; this run's is {this_class})"
    elif model_changes:
        trained_with = f"a different model config ({'; '.join(model_changes)})"
    elif changed:
        # The shuffle seed follows `seed`, unless the run set data.shuffle_seed itself.
        own_seed = any(override.lstrip("+").startswith("data.shuffle_seed=") for override in saved or [])
        names = {key: "seed" if key == "shuffle_seed" and not own_seed else f"data.{key}" for key in changed}
        differ = "; ".join(f"{names[key]}={override_value(trained_data[key])} "
                           f"(this run: {override_value(datamodule.hparams[key])})" for key in changed)
        trained_with = f"other data settings or seed ({differ})"
    elif file_here and file_here != trained_file:
        # The best validation accuracy so far would be the other validation set's, and its checkpoint tested.
        trained_with = (f"another train file ({_file(trained_file)}; data.data_dir={data_dir} holds "
                        f"{_file(file_here)})")
    elif "current_model_state" in checkpoint and not any(isinstance(cb, WeightAveraging) for cb in callbacks):
        # Without the callback, the averaged weights would silently replace the raw ones and averaging would stop.
        trained_with = "weight averaging (callbacks.ema), which this run lacks"
    else:
        return
    original = saved if saved is not None else ["?"]
    raise ResumeRefused(
        f"ckpt_path={ckpt_path} was trained with {trained_with}. To resume, repeat the overrides of the run that "
        f"saved it: {resume_command(original, ckpt_path)}"
    )


def _file(record: dict) -> str:
    return f"{record['images']} images, labels {record['labels_sha256']}"


def check_latest_state(ckpt_path: str, checkpoint: dict, overrides: list[str]) -> None:
    """A resume in the checkpoint's own run folder must start from the run's latest state: from an earlier checkpoint
    (the best epoch's, which the run's summary prints) it would train the later epochs again and replace last.ckpt,
    which holds them. `overrides`: this command's (the advice repeats them)."""
    from src.errors import ResumeRefused
    from src.models.checkpoint_file import CheckpointError, read_checkpoint

    resumed = Path(ckpt_path).expanduser().resolve()
    last = resumed.parent / "last.ckpt"
    if resumed == last or not last.is_file():
        return
    try:
        latest = read_checkpoint(last)
    except CheckpointError:  # an earlier checkpoint is what there is to go on from
        log.warning("%s cannot be read (damaged or truncated), so %s is the run's latest state to go on from; a "
                    "resumed training replaces it.", last, ckpt_path)
        return
    steps = checkpoint.get("global_step", 0), latest.get("global_step", 0)
    if steps[0] >= steps[1]:
        return
    raise ResumeRefused(
        f"ckpt_path={ckpt_path} is not the latest state of its run: {last} is further along (epoch {latest.get('epoch')}, "
        f"step {steps[1]}; this one: epoch {checkpoint.get('epoch')}, step {steps[0]}). Resuming from it would train those "
        f"epochs again in the run's folder and replace last.ckpt. Resume from the latest state: "
        f"{resume_command(overrides, last)}; or, to train again from this checkpoint, copy it out of the run folder and "
        "resume from the copy, which starts a new run folder."
    )


def _with_defaults(model_class: type, trained: dict, this: dict) -> dict:
    """The checkpoint's settings, and for those it lacks (saved before the setting existed) and this run has, the
    class's default: what the model was built with then, as a new setting's default keeps the network as it was.
    (A setting the class keeps out of its hyperparameters is in neither.)"""
    import inspect

    takes = inspect.signature(model_class.__init__).parameters
    return {**{name: p.default for name, p in takes.items() if p.default is not p.empty and name in this}, **trained}


def _in_effect(settings: dict) -> dict:
    """The model settings as training reads them: the optimizer's and the scheduler's at their defaults where left out,
    without those the chosen one ignores. A default written out (+model.scheduler.div_factor=25), or a setting of
    another choice (momentum with adam), trains the same."""
    from src.models.optim_config import OPTIMIZER_DEFAULTS, SETTINGS_READ_BY, optimizer_settings, scheduler_settings

    settings = dict(settings)
    for key, filled_in, always_read in (("optimizer", optimizer_settings, {"name", "lr", "weight_decay"}),
                                        ("scheduler", scheduler_settings, {"name"})):
        if key in settings and (settings[key] is None or isinstance(settings[key], dict)):
            full = filled_in(settings[key] or {})
            name = str(full["name"]).lower()  # taken in any case before; now only as written
            read = always_read | SETTINGS_READ_BY.get(name, set(full))  # a name unknown now: every setting counts
            settings[key] = {**{setting: value for setting, value in full.items() if setting in read}, "name": name}
    scheduler, optimizer = settings.get("scheduler"), settings.get("optimizer")
    if isinstance(scheduler, dict) and isinstance(optimizer, dict) and scheduler["name"] == "onecycle" and \
            scheduler.get("cycle_momentum", True):
        # OneCycle set SGD's momentum and Adam's beta1 at every step: what the config said of them trained the same.
        optimizer.pop("momentum", None)
        if "betas" in optimizer:
            optimizer["betas"] = [OPTIMIZER_DEFAULTS["betas"][0], *list(optimizer["betas"])[1:]]
    return settings


def _model_changes(trained: dict, this: dict) -> list[str]:
    """The model settings that differ, as `model.<key>=<checkpoint's value> (this run: <value>)`."""
    trained, this = _flat(trained, "model."), _flat(this, "model.")
    speed_only = tuple(f"model.{key}" for key in SPEED_ONLY_MODEL_KEYS)
    unset = object()

    def word(value) -> str:
        return "(not set)" if value is unset else override_value(value)

    return [f"{key}={word(trained.get(key, unset))} (this run: {word(this.get(key, unset))})"
            for key in sorted(set(trained) | set(this))
            if not key.startswith(speed_only) and trained.get(key, unset) != this.get(key, unset)]


def _flat(settings: dict, prefix: str) -> dict:
    flat = {}
    for key, value in settings.items():
        if isinstance(value, tuple):  # a class default, (120, 84), is the config's [120, 84]
            value = list(value)
        flat.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) and value else {f"{prefix}{key}": value})
    return flat


def overrides_that_saved(ckpt_path: str, recorded: list[str] | None) -> list[str] | None:
    """The overrides of the run that saved the checkpoint (None: not known), which a refused resume must repeat:
    those it `recorded`, else Hydra's record in its run folder."""
    if recorded is not None:
        return recorded
    # Saved outside a Hydra run (a ddp_spawn process) or by an older version.
    record = overrides_that_wrote(Path(ckpt_path).expanduser().resolve())
    return list(OmegaConf.load(record)) if record else None


def overrides_that_wrote(checkpoint: Path) -> Path | None:
    """Hydra's record of the overrides of the run that saved `checkpoint`: the newest record (the first run's, or a
    resume's in .hydra/resumed-<time>/) from before the checkpoint was saved (a later one is a resume that was
    refused or has not saved yet); the first run's when no record is older (a folder copied without its times)."""
    hydra_dir = checkpoint.parent.parent / ".hydra"
    records = [record for record in [hydra_dir / "overrides.yaml", *sorted(hydra_dir.glob("resumed-*/overrides.yaml"))]
               if record.is_file()]
    earlier = [record for record in records if record.stat().st_mtime <= checkpoint.stat().st_mtime]
    if earlier:
        return earlier[-1]
    return records[0] if records else None


def check_schedule_length(name: str, saved_steps: int | None, total_steps: int, ckpt_path: str | None,
                          saved_overrides: list[str] | None) -> None:
    """A resumed schedule continues from its saved state, whose length was fixed when training began: with another
    length, OneCycle fails mid-run and a cosine would silently climb back up. `saved_steps`: the checkpoint's (None:
    not a resume, or no schedule)."""
    from src.errors import ResumeRefused

    if saved_steps is None or saved_steps == total_steps:
        return
    overrides = overrides_that_saved(ckpt_path, saved_overrides)
    repeat = f": {resume_command(overrides, ckpt_path)}" if overrides is not None else ""
    raise ResumeRefused(
        f"The checkpoint was trained with a {name} learning-rate schedule of {saved_steps} steps; this run would take "
        f"{total_steps} (trainer.max_epochs, data.batch_size, data.val_size, trainer.limit_train_batches or "
        "trainer.accumulate_grad_batches changed). A schedule's length is fixed when training starts: resume with the "
        f"overrides of the run that saved it{repeat}, or start a new run."
    )


def follow_the_checkpoints_threads(checkpoint: dict, trainer) -> None:
    """Sums split over another number of CPU threads round differently, so a resume on the CPU continues bit-exact
    only with the threads the checkpoint's run used: a parallel sweep job's share of the cores, resumed alone, would
    otherwise take them all. Not over the user's own OMP_NUM_THREADS, a parallel sweep's share of the cores, nor
    beyond the cores there are here."""
    import os

    import torch
    from pytorch_lightning.accelerators import CPUAccelerator

    from src.utils.jobs import joblib_workers, usable_cpus

    threads, now = checkpoint.get("cpu_threads"), torch.get_num_threads()
    if not isinstance(trainer.accelerator, CPUAccelerator) or not isinstance(threads, int) or threads < 1 or threads == now:
        return
    if joblib_workers() > 1:  # joblib's workers set OMP_NUM_THREADS themselves: not the user's choice
        why = "its share of the cores in this parallel sweep"
    elif "OMP_NUM_THREADS" in os.environ:
        why = "OMP_NUM_THREADS"
    elif threads > usable_cpus():
        why = f"the cores here: {usable_cpus()}"
    else:
        why = None
    if why:
        log.info("The checkpoint was trained with %s; this resume uses %d (%s), so it may differ from the run it "
                 "continues in the last bits.", counted(threads, "CPU thread"), now, why)
        return
    torch.set_num_threads(threads)
    log.info("Using %s, as the run that saved the checkpoint did (the sums then continue bit-exact).",
             counted(threads, "CPU thread"))

