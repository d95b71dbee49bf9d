"""Every option of every config group composes, and what it describes can be built."""

from __future__ import annotations

import os
import re
from datetime import datetime
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.utils import setup_globals
from hydra.utils import instantiate
from omegaconf import OmegaConf

from src import CONFIG_DIR, PROJECT_ROOT
from src.models.classifier import DigitClassifier
from src.utils.instantiate import instantiate_entries
from tests.conftest import compose_config, run_module


def options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONFIG_DIR / group).glob("*.yaml"))


def test_every_option_the_readme_lists_composes():
    """The README's Configuration table: each option of each group row (column 2) can be selected."""
    readme = (PROJECT_ROOT / "README.md").read_text()
    rows = dict(re.findall(r"^\| `([a-z_/]+)` \| ([^|]+) \|", readme, flags=re.MULTILINE))
    assert {"data", "model", "trainer", "logger", "callbacks", "experiment", "sweep", "hydra/launcher"} <= set(rows)
    for group, listed in rows.items():
        names = re.findall(r"`([a-z_]+)`", listed)
        assert names, group
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            for name in names:  # the launchers come from Hydra plugins, so compose rather than list conf/
                compose("train", overrides=[f"{group}={name}"], return_hydra_config=group.startswith("hydra/"))


@pytest.mark.parametrize("option", options("model"))
def test_model_options_build_plain_hyperparameters(tmp_path, option):
    cfg = compose_config([f"model={option}", f"paths.output_dir={tmp_path}"])
    model = instantiate(cfg.model, _convert_="all")
    assert isinstance(model, DigitClassifier)
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert type(model.hparams["optimizer"]) is dict  # plain values, never DictConfig
    torch.save(dict(model.hparams), tmp_path / "hparams.pt")
    torch.load(tmp_path / "hparams.pt", weights_only=True)


@pytest.mark.parametrize("option", options("data"))
def test_data_options_build(tmp_path, option, synthetic_data_dir):
    cfg = compose_config([f"data={option}", f"data.data_dir={synthetic_data_dir}", f"paths.output_dir={tmp_path}"])
    assert isinstance(instantiate(cfg.data), pl.LightningDataModule)


@pytest.mark.parametrize("group", ["callbacks", "logger"])
def test_callback_and_logger_options_build(tmp_path, group):
    for option in options(group):
        cfg = compose_config([f"{group}={option}", f"paths.output_dir={tmp_path}"])
        objects = instantiate_entries(cfg[group], group)
        assert objects and all(isinstance(o, (pl.Callback, pl.loggers.Logger)) for o in objects)


def test_early_stopping_combines_with_the_default_callbacks(tmp_path):
    cfg = compose_config(["callbacks=[default,early_stopping]", f"paths.output_dir={tmp_path}"])
    names = {type(c).__name__ for c in instantiate_entries(cfg.callbacks, "callbacks")}
    assert {"RunFolderCheckpoint", "ResumableCheckpoint", "LearningRateMonitor", "EarlyStopping"} <= names


@pytest.mark.parametrize("option", options("trainer"))
def test_trainer_options_build(tmp_path, option):
    cfg = compose_config([f"trainer={option}", f"paths.output_dir={tmp_path}"])
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        from src.errors import UserInputError
        from src.utils.trainer_setup import build_trainer

        with pytest.raises(UserInputError, match="torch finds no CUDA GPU here. Use the default trainer"):
            build_trainer(cfg)  # one clear message instead of Lightning's MisconfigurationException
        return
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    assert isinstance(trainer, pl.Trainer)


def test_trainer_gpu_is_not_refused_on_a_mac(tmp_path, monkeypatch):
    """On a Mac, Lightning's accelerator=gpu is the Apple GPU (MPS): trainer=gpu was refused there as "no CUDA GPU"."""
    from src.errors import UserInputError
    from src.utils.trainer_setup import build_trainer

    cfg = compose_config(["trainer=gpu", f"paths.output_dir={tmp_path}"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)  # Lightning counts CUDA GPUs so: on a GPU machine too
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    with pytest.raises(UserInputError) as refusal:
        build_trainer(cfg)
    # Lightning's own MPS accelerator finds this machine is no Mac; this project's check let it try.
    assert "Trainer refused these settings" in str(refusal.value)


# What the README says of each recipe, as the built objects hold it: (model, its optimizer, epochs, augmentation).
RECIPES = {"fast": ("CNN", "adam", 1, False), "best": ("CNN", "adamw", 30, True), "quickcheck": ("MLP", "adam", 1, True),
           "cnn_sgd": ("CNN", "sgd", 8, True)}


@pytest.mark.parametrize("option", options("experiment"))
def test_experiments_compose_and_build(tmp_path, option, synthetic_data_dir):
    cfg = compose_config([f"experiment={option}", f"paths.output_dir={tmp_path}", f"data.data_dir={synthetic_data_dir}"])
    model = instantiate(cfg.model, _convert_="all")
    data = instantiate(cfg.data)
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    built = (type(model).__name__, model.hparams.optimizer["name"], trainer.max_epochs, data.hparams.augment["enabled"])
    assert built == RECIPES[option]
    assert cfg.callbacks.model_checkpoint.monitor == "val/acc" and cfg.callbacks.model_checkpoint.mode == "max"
    if option == "fast":  # what costs time without helping that path is off
        assert trainer.num_sanity_val_steps == 0 and "figures" not in cfg.callbacks and model.hparams.channels_last
    if option == "quickcheck":
        assert (trainer.limit_train_batches, trainer.limit_val_batches) == (20, 2)


def test_trainer_arguments_can_be_added_from_the_command_line(tmp_path):
    from src.utils.trainer_setup import build_trainer

    cfg = compose_config(["++trainer.gradient_clip_val=0.5", f"paths.output_dir={tmp_path}"])
    trainer, _ = build_trainer(cfg)
    assert trainer.gradient_clip_val == 0.5  # it reaches Lightning's Trainer


def test_default_paths_point_into_the_project(tmp_path):
    from src import PROJECT_ROOT

    cfg = compose_config([f"paths.output_dir={tmp_path}"])
    assert cfg.data.data_dir == str(PROJECT_ROOT / "data")
    assert cfg.paths.log_dir == str(PROJECT_ROOT / "outputs")


def test_null_logger_and_callbacks_mean_none():
    """`logger=null` (as other templates spell it) turns logging off instead of ending in Hydra's traceback."""
    from src.utils.command_line import empty_list_groups

    arguments = empty_list_groups(["logger=null", "callbacks=null", "ckpt_path=null", "model=mlp"])
    assert arguments == ["logger=[]", "callbacks=[]", "ckpt_path=null", "model=mlp"]
    cfg = compose_config(arguments)
    assert not cfg.get("logger") and not cfg.get("callbacks") and cfg.ckpt_path is None


def test_an_entry_without_target_is_an_error_not_skipped(tmp_path):
    from src.errors import UserInputError

    cfg = compose_config(["+callbacks.broken.monitor=val/acc", f"paths.output_dir={tmp_path}"])
    with pytest.raises(UserInputError, match="callbacks.broken has no _target_"):
        instantiate_entries(cfg.callbacks, "callbacks")


@pytest.mark.parametrize("override, group, message", [
    ("callbacks.lr_monitor.logging_interval=hour", "callbacks", "callbacks.lr_monitor: pytorch_lightning.callbacks."
     "LearningRateMonitor refused these settings: logging_interval should be `step` or `epoch` or `None`."),
    ("callbacks.model_checkpoint.save_top_k=-2", "callbacks", "callbacks.model_checkpoint: src.callbacks.checkpoint."
     "RunFolderCheckpoint refused these settings: Invalid value for save_top_k=-2. Must be >= -1"),
    ("+callbacks.notes._target_=builtins.dict", "callbacks", "callbacks.notes: builtins.dict is not a Lightning Callback, "
     "so `callbacks` cannot take it."),
    ("+logger.notes._target_=builtins.dict", "logger", "logger.notes: builtins.dict is not a Lightning Logger"),
])
def test_an_entry_its_class_refuses_or_that_is_no_callback_is_one_line(tmp_path, override, group, message):
    """Hydra's wrapped error, or a failure once training starts (a dict has no Callback hooks)."""
    from pytorch_lightning import Callback
    from pytorch_lightning.loggers import Logger

    from src.errors import UserInputError

    cfg = compose_config([override, f"paths.output_dir={tmp_path}"])
    with pytest.raises(UserInputError) as info:
        instantiate_entries(cfg[group], group, Callback if group == "callbacks" else Logger)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize("override", ["callbacks.figures.every_n_epochs=0", "callbacks.figures.num_mistakes=-1"])
def test_a_bad_figures_setting_fails_when_the_callbacks_are_built(tmp_path, override):
    from src.errors import UserInputError

    cfg = compose_config([override, f"paths.output_dir={tmp_path}"])
    with pytest.raises(UserInputError, match=rf"{override.split('=')[0]}=-?\d+ is invalid: it must be a whole number >="):
        instantiate_entries(cfg.callbacks, "callbacks")


def test_each_entry_points_help_shows_its_usage_and_only_the_groups_it_takes():
    helps = {module: run_module(module, "--help", timeout=120) for module in ("src.train", "src.eval", "src.predict")}
    assert all(result.returncode == 0 for result in helps.values())
    train_help, eval_help, predict_help = (helps[m].stdout for m in ("src.train", "src.eval", "src.predict"))
    assert train_help.startswith("python -m src.train [group=option ...]") and "experiment: best, cnn_sgd, fast" in train_help
    assert eval_help.startswith("python -m src.eval ckpt_path=") and "trainer: cpu, ddp, ddp_cpu, default, gpu" in eval_help
    assert "model:" not in eval_help and "experiment:" not in eval_help and "sweep:" not in eval_help
    assert predict_help.startswith("python -m src.predict ckpt_path=") and "group" not in predict_help
    assert "top_k: 3" in predict_help  # the values to set are listed


def test_the_resolved_config_is_shown_without_a_run_folder():
    """`--cfg job --resolve` resolves the loggers' folders without a run folder: the CSV logger's failed on it."""
    result = run_module("src.train", "--cfg", "job", "--resolve", "logger=[tensorboard,csv]", timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    shown = yaml.safe_load(result.stdout)["logger"]
    assert shown["csv"]["name"] == "csv" and shown["csv"]["version"] == shown["tensorboard"]["version"] == ""


def test_printing_the_resolved_config_makes_no_run_or_sweep_folder(tmp_path):
    """`--cfg all --resolve` shows the folders a run and a sweep would get, and makes neither: it runs nothing."""
    result = run_module("src.train", "--cfg", "all", "--resolve", f"paths.log_dir={tmp_path}", timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    shown = yaml.safe_load(result.stdout)["hydra"]
    assert Path(shown["run"]["dir"]).parent.parent == tmp_path and Path(shown["sweep"]["dir"]).is_relative_to(tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("path", ["/data/Fotos, März/*.png", "/data/Photos (1)/a.png", "/data/Müller's/a.png",
                                  "~/digits/a.png", "/data/img[0-9].png", '/data/say "hi"/a.png', "/plain/a.png",
                                  "2024", "1e3"])  # folders Hydra would read as numbers
def test_paths_reach_hydra_as_typed(path):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from src.utils.path_overrides import quote_paths

    expanded = os.path.expanduser(path)  # as a shell would: Hydra would make a folder named ~ for hydra.run.dir
    for key in ("inputs", "+ckpt_path", "output", "data.data_dir", "paths.log_dir", "hydra.run.dir", "hydra.sweep.dir"):
        (argument,) = quote_paths([f"{key}={path}"])
        assert OverridesParser.create().parse_override(argument).value() == expanded, argument
    if "," not in path:  # in a list, a comma separates paths
        (argument,) = quote_paths([f"inputs=[{path},/b.png]"])
        assert OverridesParser.create().parse_override(argument).value() == [expanded, "/b.png"], argument


def test_a_list_of_paths_takes_quoted_elements_and_file_names_with_commas(tmp_path):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from src.utils.path_overrides import quote_paths

    named = tmp_path / "my digits ü" / "a=b,c.png"  # a name Hydra reads only quoted
    named.parent.mkdir()
    named.touch()
    parser = OverridesParser.create()
    for typed in (f"inputs=['/x/a.png','/x/b c.png',{named.parent}/*.png]", f'inputs=["/x/a.png", "/x/b c.png", {named.parent}/*.png]'):
        (argument,) = quote_paths([typed])
        assert parser.parse_override(argument).value() == ["/x/a.png", "/x/b c.png", f"{named.parent}/*.png"], argument
    for typed in (f"inputs=[/x/a.png,{named}]", f'inputs=[/x/a.png,"{named}"]', f"inputs=[{named},'/x/b c.png']"):
        (argument,) = quote_paths([typed])
        assert str(named) in parser.parse_override(argument).value() and len(parser.parse_override(argument).value()) == 2


def test_a_sweep_over_paths_keeps_each_path_whole(tmp_path):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from src.utils.path_overrides import quote_paths

    jobs = [tmp_path / f"{n}_model=mlp,seed={n}" / "checkpoints" / "last.ckpt" for n in (0, 1)]
    for job in jobs:
        job.parent.mkdir(parents=True)
        job.touch()
    a, b = tmp_path / "a", tmp_path / "b"  # folders that do not exist (nor does "<tmp>/a,<tmp>/b")
    swept = quote_paths(["-m", f"ckpt_path={jobs[0]},{jobs[1]}", f"data.data_dir={a},{b}", "paths.log_dir=${oc.env:HOME}"])
    parser = OverridesParser.create()
    # Each job gets `key=<one of the values>`, quoted as typed in the sweep.
    jobs_values = [[parser.parse_override(f"x={value}").value() for value in sweep.sweep_string_iterator()]
                   for sweep in parser.parse_overrides(swept[1:3])]
    assert jobs_values == [[str(job) for job in jobs], [str(a), str(b)]]
    assert swept[3] == "paths.log_dir=${oc.env:HOME}"  # Hydra's own syntax is left as typed
    assert quote_paths(["-m", "inputs=choice(a.png,b.png)"]) == ["-m", "inputs=choice(a.png,b.png)"]
    # -m spelled as a setting sweeps too: two folders, as with -m, not one folder named "<a>,<b>".
    assert quote_paths(["hydra.mode=MULTIRUN", f"data.data_dir={a},{b}"]) == ["hydra.mode=MULTIRUN", f"data.data_dir={a},{b}"]
    assert quote_paths([f"data.data_dir={a},{b}"]) == [f'data.data_dir="{a},{b}"']  # a single run: one folder
    # A ready-made sweep (sweep=<name>) is a multirun too: both folders were taken for one, and every job failed.
    assert quote_paths(["sweep=seeds", f"data.data_dir={a},{b}"]) == ["sweep=seeds", f"data.data_dir={a},{b}"]
    # Its job resumed on its own runs once (hydra.mode=RUN, which its resume command adds), in one folder.
    assert quote_paths(["sweep=seeds", "hydra.mode=RUN", f"data.data_dir={a},{b}"])[2] == f'data.data_dir="{a},{b}"'
    # Hydra sweeps none of its own settings: a sweep's folder is one path, commas and all.
    assert quote_paths(["-m", f"hydra.sweep.dir={a}=1,b"]) == ["-m", f'hydra.sweep.dir="{a}=1,b"']


def test_a_ready_made_sweeps_job_is_resumed_on_its_own_as_one_run():
    """Its resume command repeated sweep=seeds, which made it a new sweep that started from scratch elsewhere."""
    from src.utils.command_words import resume_command
    from src.utils.path_overrides import is_multirun

    command = resume_command(["sweep=seeds", "seed=1"], "/runs/0_seed=1/checkpoints/last.ckpt")
    assert command.startswith("python -m src.train sweep=seeds seed=1 hydra.mode=RUN ")
    assert is_multirun(["sweep=seeds", "seed=1"]) and not is_multirun(["sweep=seeds", "seed=1", "hydra.mode=RUN"])
    assert resume_command(["seed=1"], "/runs/a/last.ckpt") == "python -m src.train seed=1 ckpt_path=/runs/a/last.ckpt"


def test_a_run_starting_at_midnight_is_named_by_one_instant(tmp_path):
    """The date and the time of a new run's or sweep's folder come from one reading of the clock: read twice, a run
    starting at midnight was filed under the day before with the new day's 00-00-00."""
    readings = iter([datetime(2026, 12, 5, 23, 59, 59, 999000)] + [datetime(2026, 12, 6)] * 10)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.log_dir={tmp_path}"], return_hydra_config=True)
    OmegaConf.register_new_resolver("now", lambda pattern: next(readings).strftime(pattern), replace=True)
    try:
        run_dir, sweep_dir = Path(cfg.hydra.run.dir), Path(cfg.hydra.sweep.dir)
    finally:
        setup_globals()  # Hydra's own `now` again
    assert run_dir.relative_to(tmp_path).as_posix() == "2026-12-05/23-59-59"
    assert sweep_dir.relative_to(tmp_path).as_posix() == "multirun/2026-12-06/00-00-00"
