"""src.eval reproduces training's test metrics; resuming is exact; bad checkpoints are clear errors."""

from __future__ import annotations

import argparse
import ast
import csv
import errno
import io
import json
import logging
import os
import re
import shlex
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from src.callbacks.safety import GracefulStop
from src.errors import ResumeRefused, RunInterrupted
from src.eval import evaluate
from src.models.checkpoint_file import CheckpointError
from src.models.loading import load_classifier
from src.train import train
from src.utils.run_folders import empty_event_file
from tests.conftest import compose_config, hparams_values, run_module, tiny_run_overrides


class StopAfterEpoch(pl.Callback):
    """Ends fitting after `epoch`, as an interruption would (but cleanly)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, synthetic_data_dir) -> Path:
    run_dir = tmp_path_factory.mktemp("trained")
    # Not the default normalization: src.eval must take the checkpoint's, whatever data.mean/std say.
    train(compose_config([*tiny_run_overrides(synthetic_data_dir, run_dir), "model=mlp", "data.mean=0.5", "data.std=0.6"]))
    return run_dir


def test_eval_reproduces_the_metrics_training_reported(tmp_path, trained_run, synthetic_data_dir, caplog):
    trained = json.loads((trained_run / "metrics.json").read_text())
    # A different eval batch size must not matter: the loss is a per-image mean.
    cfg = compose_config(
        [*tiny_run_overrides(synthetic_data_dir, tmp_path), f"ckpt_path={trained['best_model_path']}", "data.eval_batch_size=7",
         "logger=[tensorboard,csv]"],
        config_name="eval",
    )
    evaluated = evaluate(cfg)
    assert evaluated["test/acc"] == trained["test/acc"]
    assert evaluated["test/loss"] == pytest.approx(trained["test/loss"], rel=1e-5)
    assert {f"test/acc_class/{d}" for d in range(10)} <= evaluated.keys()
    for name in ("metrics.json", "confusion_matrix.png", "config.yaml"):
        assert (tmp_path / name).exists(), name
    assert (tmp_path / "misclassified.png").exists() == (evaluated["test/acc"] < 1)  # only when there are mistakes
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert hparams_values(tmp_path) == hparams_values(trained_run)  # a row with the checkpoint's settings
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()  # the row's metric columns: the checkpoint's best validation accuracy too, not only the test's
    assert [event.value for event in events.Scalars("val/acc_best")] == [pytest.approx(trained["val/acc_best"])]
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 2  # the scalars', the HParams row's
    with open(tmp_path / "csv" / "metrics.csv") as file:
        assert [float(row["val/acc_best"]) for row in csv.DictReader(file) if row["val/acc_best"]] == [
            pytest.approx(trained["val/acc_best"])]
    assert "mean: 0.5\n" in (tmp_path / "config.yaml").read_text()  # the normalization used: the checkpoint's
    assert "Not used" not in caplog.text  # data.mean/std were not set here: nothing to warn about


def test_checkpoints_load_weights_only(trained_run):
    model, checkpoint = load_classifier(trained_run / "checkpoints" / "last.ckpt")
    assert type(model).__name__ == "MLP" and not model.training
    assert "rng_states" in checkpoint and checkpoint["epoch"] == 0


def test_a_checkpoint_loaded_for_fine_tuning_starts_anew_and_leaves_the_callers_random_numbers(tmp_path, trained_run,
                                                                                               synthetic_data_dir):
    """load_from_checkpoint in a script of one's own: not a resume. It crashed at the next fit (its schedule length
    checked against a resume's), and reset the caller's random generators to the checkpoint's."""
    from src.data.mnist_datamodule import MNISTDataModule
    from src.models.mlp import MLP

    checkpoint = trained_run / "checkpoints" / "last.ckpt"
    draws = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        model = MLP.load_from_checkpoint(checkpoint)
        draws.append(torch.rand(3))
    assert not torch.equal(*draws)
    data = MNISTDataModule(str(synthetic_data_dir), download=False, batch_size=32, val_size=80, mean=0.5, std=0.6)
    trainer = pl.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=data)  # a schedule of 3 epochs, the checkpoint's had 1
    assert trainer.current_epoch == 3
    # Testing a checkpoint through the trainer loads it too, and a later fit of the model starts anew as well.
    trainer.test(model, datamodule=data, ckpt_path=str(checkpoint), verbose=False)
    again = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                       enable_model_summary=False, default_root_dir=tmp_path)
    again.fit(model, datamodule=data)
    assert again.current_epoch == 2


def test_checkpoints_of_paths_numpy_numbers_and_omegaconf_settings_load_weights_only(tmp_path, synthetic_data_dir):
    """What a script of one's own passes: each of these, saved as it was, made torch.load(weights_only=True) refuse
    the checkpoint (and so src.eval, src.predict and load_network)."""
    import numpy as np
    from omegaconf import OmegaConf
    from pytorch_lightning.callbacks import ModelCheckpoint

    from src.data.mnist_datamodule import MNISTDataModule
    from src.models.loading import load_network
    from src.models.mlp import MLP

    # hydra.utils.instantiate without _convert_ passes OmegaConf containers; np.arange and np.logspace give numpy numbers.
    model = MLP(hidden_sizes=[np.int64(16)], optimizer=OmegaConf.create({"lr": 0.01}), dropout=np.float64(0.1))
    data = MNISTDataModule(synthetic_data_dir, download=False, batch_size=np.int64(32), val_size=80)  # a Path
    saving = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    pl.Trainer(max_epochs=1, logger=False, callbacks=[saving], enable_progress_bar=False,
               enable_model_summary=False).fit(model, datamodule=data)
    checkpoint = torch.load(saving.last_model_path, weights_only=True)
    assert checkpoint["hyper_parameters"]["hidden_sizes"] == [16]
    assert checkpoint["hyper_parameters"]["optimizer"]["lr"] == pytest.approx(0.01)
    assert checkpoint["datamodule_hyper_parameters"]["data_dir"] == str(synthetic_data_dir)
    network, _ = load_network(saving.last_model_path)
    assert network(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert MLP(optimizer={"lr": 0.01}, hidden_sizes=np.arange(16, 48, 16)).hparams.hidden_sizes == [16, 32]  # an array


@pytest.mark.parametrize("group, value", [("optimizer", 0.001), ("optimizer", "adam"), ("scheduler", "onecycle")])
def test_a_setting_where_a_group_of_settings_belongs_is_a_clear_error(group, value):
    """It failed at fit with "'float' object is not iterable", or took a string's letters for keys."""
    from src.errors import UserInputError
    from src.models.cnn import CNN

    settings = {"optimizer": {"lr": 0.001}, group: value}
    with pytest.raises(UserInputError, match=rf"^model\.{group}={value} is invalid: it is a group of settings, such as"):
        CNN(**settings)


def test_checkpoints_saved_without_checksums_are_not_taken_for_damaged(tmp_path, trained_run):
    """The damage check reads the zip records' checksums: torch can save without them, or in its older format."""
    from src.models.checkpoint_file import read_checkpoint

    content = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True)
    crc32 = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(False)
    try:
        torch.save(content, tmp_path / "no_checksums.ckpt")
    finally:
        torch.serialization.set_crc32_options(crc32)
    torch.save(content, tmp_path / "legacy.ckpt", _use_new_zipfile_serialization=False)
    for name in ("no_checksums.ckpt", "legacy.ckpt"):
        assert read_checkpoint(tmp_path / name)["model_class"] == content["model_class"]


def test_a_checkpoint_replaced_while_it_is_read_is_checked_as_it_was_loaded(tmp_path, trained_run, monkeypatch):
    """A run saves last.ckpt by renaming a new file over it: a read at that moment checks the bytes it loaded, not the
    file that took their place (damaged weights then passed the check, or good ones failed it)."""
    from src.models.checkpoint_file import read_checkpoint

    good = (trained_run / "checkpoints" / "last.ckpt").read_bytes()
    damaged = bytearray(good)
    damaged[len(good) // 2:len(good) // 2 + 1000] = bytes(1000)  # a weight tensor's bytes zeroed
    checkpoint = tmp_path / "last.ckpt"
    load = torch.load
    for read, saved_meanwhile in ((damaged, good), (good, damaged)):
        checkpoint.write_bytes(read)

        def load_as_a_save_lands(source, *args, **kwargs):
            loaded = load(source, *args, **kwargs)
            checkpoint.write_bytes(saved_meanwhile)
            return loaded

        monkeypatch.setattr(torch, "load", load_as_a_save_lands)
        if read is damaged:
            with pytest.raises(CheckpointError, match="is damaged: its part archive/data/"):
                read_checkpoint(checkpoint)
        else:
            assert read_checkpoint(checkpoint)["state_dict"].keys() == load(io.BytesIO(good), weights_only=True)[
                "state_dict"].keys()


@pytest.mark.parametrize("error, message", [
    (PermissionError(errno.EACCES, "Permission denied"), "this user may not read it (Permission denied); check the "
                                                         "file's permissions"),
    (OSError(errno.EIO, "Input/output error"), "cannot be read (Input/output error): a disk or network error. Use "
                                               "another checkpoint beside it"),
], ids=["forbidden", "disk error"])
def test_a_checkpoint_that_cannot_be_read_is_named_with_the_cause(tmp_path, trained_run, monkeypatch, error, message):
    """Not "cannot be read as a checkpoint (not a torch file, or truncated or corrupt)": the file may be fine."""
    from src.models.checkpoint_file import read_checkpoint

    checkpoints = shutil.copytree(trained_run / "checkpoints", tmp_path / "checkpoints")

    def refused(path):
        raise error

    monkeypatch.setattr(Path, "read_bytes", refused)
    with pytest.raises(CheckpointError, match=re.escape(f"ckpt_path={checkpoints / 'last.ckpt'}: {message}")):
        read_checkpoint(checkpoints / "last.ckpt")


def test_a_resume_from_an_earlier_checkpoint_of_the_run_is_refused_and_keeps_last(tmp_path, synthetic_data_dir, caplog):
    """The best epoch's checkpoint, which a run's summary prints, resumed in its run folder would train the later
    epochs again and replace last.ckpt; a copy of it, resumed elsewhere, starts a new run folder."""
    common = ["model=mlp", "trainer.max_epochs=2", "callbacks.model_checkpoint.save_top_k=-1"]  # every epoch's kept
    train(compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path / "a"), *common]))
    checkpoints = tmp_path / "a" / "checkpoints"
    before = {path.name: path.read_bytes() for path in checkpoints.iterdir()}
    with pytest.raises(ResumeRefused, match=rf"ckpt_path={checkpoints / 'epoch000.ckpt'} is not the latest state of its "
                                            rf"run: {checkpoints / 'last.ckpt'} is further along \(epoch 1, step \d+; "
                                            r"this one: epoch 0, step \d+\)\. .* Resume from the latest state: .*"
                                            rf"ckpt_path={checkpoints / 'last.ckpt'}; or, to train again"):
        train(compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path / "a"), *common,
                              f"ckpt_path={checkpoints / 'epoch000.ckpt'}"]))
    assert {path.name: path.read_bytes() for path in checkpoints.iterdir()} == before
    # The last epoch's own checkpoint holds the state last.ckpt holds: a resume from it is no step back.
    again = train(compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path / "a"), *common,
                                  f"ckpt_path={checkpoints / 'epoch001.ckpt'}"]))
    assert again["status"] == "ok" and again["epochs"] == 2
    # A damaged last.ckpt is no state to go on from: the resume from the earlier checkpoint goes ahead, and says so.
    (checkpoints / "last.ckpt").write_bytes(before["last.ckpt"][:5000])
    resumed = train(compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path / "a"), *common,
                                    f"ckpt_path={checkpoints / 'epoch000.ckpt'}"]))
    assert resumed["status"] == "ok" and torch.load(checkpoints / "last.ckpt", weights_only=True)["epoch"] == 1
    assert (f"{checkpoints / 'last.ckpt'} cannot be read (damaged or truncated), so {checkpoints / 'epoch000.ckpt'} is "
            "the run's latest state to go on from") in caplog.text

    copy = shutil.copy(checkpoints / "epoch000.ckpt", tmp_path / "epoch000.ckpt")
    branched = train(compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path / "b"), *common, f"ckpt_path={copy}"]))
    assert branched["status"] == "ok" and branched["epochs"] == 2
    assert (tmp_path / "b" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.parametrize("averaging", [[], ["callbacks=[default,ema]", "callbacks.ema.decay=0.9"]], ids=["plain", "ema"])
def test_resume_is_exact(tmp_path, synthetic_data_dir, averaging):
    """2 epochs straight == 1 epoch, stop, resume from last.ckpt for the 2nd: same weights and metrics."""
    common = ["model=mlp", "trainer.max_epochs=2", "model.dropout=0.3", *averaging]
    straight = train(compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path / "straight"), *common]))

    stop = [f"+callbacks.stop._target_={__name__}.StopAfterEpoch", "+callbacks.stop.epoch=0"]
    train(compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path / "first"), *common, *stop]))
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["epoch"] == 0
    # Resuming continues in the same run dir (what `python -m src.train ckpt_path=...` does by default),
    # so the best-checkpoint tracking carries on too.
    resumed = train(compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path / "first"), *common, f"ckpt_path={last}"]))

    assert resumed["resumed_from"] == str(last) and resumed["epochs"] == straight["epochs"] == 2
    for key in ("val/acc_best", "test/acc", "test/loss"):
        assert resumed[key] == straight[key], key
    weights = [torch.load(d / "checkpoints" / "last.ckpt", weights_only=True) for d in (tmp_path / "straight", tmp_path / "first")]
    for state in ("state_dict", "current_model_state") if averaging else ("state_dict",):  # averaged and raw
        for name, tensor in weights[0][state].items():
            assert torch.equal(tensor, weights[1][state][name]), (state, name)
    assert weights[0]["optimizer_states"][0]["state"][0]["exp_avg"].equal(weights[1]["optimizer_states"][0]["state"][0]["exp_avg"])


class InterruptAtStep(pl.Callback):
    """Ctrl-C during the batch of optimizer step `step`: the run's own GracefulStop then stops after that batch, where
    it stands among the callbacks (a checkpoint is saved at that batch)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step - 1:
            (graceful_stop,) = [cb for cb in trainer.callbacks if isinstance(cb, GracefulStop)]
            graceful_stop._request_stop(signal.SIGINT, None)


def test_a_stop_whose_save_fails_is_still_a_stop_naming_the_last_saved_state(tmp_path, synthetic_data_dir, monkeypatch):
    """A full disk at the stop's save made it an ordinary failure (exit 1; in a sweep, the next job started)."""
    from src.utils import checkpoint_io

    saving = checkpoint_io._save

    def full_at_the_stop(checkpoint, path):
        if checkpoint["global_step"] == 13:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        saving(checkpoint, path)

    monkeypatch.setattr(checkpoint_io, "_save", full_at_the_stop)
    last = tmp_path / "checkpoints" / "last.ckpt"
    with pytest.raises(RunInterrupted) as stopped:
        train(compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path), "model=mlp", "trainer.max_epochs=2",
                              f"+callbacks.stop._target_={__name__}.InterruptAtStep", "+callbacks.stop.step=13"]))
    assert stopped.value.exit_code == 130
    assert str(stopped.value).startswith(
        "Training stopped by Ctrl-C at epoch 1, step 13, but saving its state failed ([Errno 28] No space left on "
        f"device: '{last}'). {last} holds the last saved state; resume with: ")
    assert torch.load(last, weights_only=True)["global_step"] == 10  # the end of epoch 0, whole
    # Saved, and then Lightning's closing of the loggers failed on the same full disk: the state of the stop is there.
    monkeypatch.setattr(checkpoint_io, "_save", saving)
    monkeypatch.setattr("pytorch_lightning.loggers.TensorBoardLogger.finalize", lambda self, status: full_at_the_stop(
        {"global_step": 13}, tmp_path / "tensorboard" / "events"))
    with pytest.raises(RunInterrupted) as stopped:
        train(compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path / "again"), "model=mlp",
                              "trainer.max_epochs=2", f"+callbacks.stop._target_={__name__}.InterruptAtStep",
                              "+callbacks.stop.step=13"]))
    assert "Training stopped by Ctrl-C at epoch 1, step 13, and saved its state, but then failed" in str(stopped.value)
    assert torch.load(tmp_path / "again" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 13


class InterruptDuringLastValidation(pl.Callback):
    """Ctrl-C during the final epoch's validation, after which no training batch comes to stop at."""

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.sanity_checking and trainer.current_epoch == trainer.max_epochs - 1:
            (graceful_stop,) = [cb for cb in trainer.callbacks if isinstance(cb, GracefulStop)]
            graceful_stop._request_stop(signal.SIGINT, None)


class SignalDuringTest(pl.Callback):
    """Sends this process a real signal after the first test batch: SIGTERM, as SLURM's pre-emption would, or
    SIGINT, as Ctrl-C would."""

    def __init__(self, signum: int) -> None:
        self.signum = signum

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx == 0:
            os.kill(os.getpid(), self.signum)
            if self.signum == signal.SIGINT:
                time.sleep(5)  # the KeyboardInterrupt is raised here, when the signal interrupts the sleep


@pytest.mark.parametrize("entry_point", ["src.train", "src.eval"])
@pytest.mark.parametrize("signum, exit_code, by", [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "Ctrl-C")])
def test_an_interrupted_test_pass_is_reported_not_taken_for_success(tmp_path, trained_run, synthetic_data_dir, entry_point,
                                                                   signum, exit_code, by):
    """Lightning ends a test pass stopped by SIGTERM with a SystemExit that exits 0 (a pre-empted job looked finished),
    and one stopped by Ctrl-C with exit code 1, an ordinary failure."""
    run_dir = tmp_path / "run"
    setup = (["model=mlp"] if entry_point == "src.train" else [f"ckpt_path={trained_run / 'checkpoints' / 'last.ckpt'}"])
    result = run_module(entry_point, *tiny_run_overrides(synthetic_data_dir, run_dir), *setup, f"hydra.run.dir={run_dir}",
                        f"+callbacks.signal._target_={__name__}.SignalDuringTest", f"+callbacks.signal.signum={int(signum)}")
    output = result.stdout + result.stderr
    assert result.returncode == exit_code, output[-3000:]
    assert f"Testing stopped by {by}: no test results were written." in output and "Traceback" not in output
    assert not (run_dir / "metrics.json").exists()
    if entry_point == "src.train":  # training had finished: its best checkpoint is named, to be tested on its own
        (best,) = (run_dir / "checkpoints").glob("epoch*.ckpt")
        advice = output.split("test this one with: python -m src.eval ")[1].splitlines()[0]
        assert advice.endswith(f"ckpt_path={best}") and f"data.data_dir={synthetic_data_dir}" in advice
        assert "paths.output_dir" not in advice  # the training run's folder: src.eval writes one of its own
        tested = run_module("src.eval", *shlex.split(advice), f"hydra.run.dir={tmp_path / 'eval'}")
        assert tested.returncode == 0, tested.stderr[-3000:]  # the advice works as printed
        assert (tmp_path / "eval" / "metrics.json").exists() and not (run_dir / "metrics.json").exists()


# With OneCycle, Lightning builds the train loader before restoring its loops (for the total step count),
# and only the datamodule's state can restore it; without a scheduler, Lightning restores the loader too.
@pytest.mark.parametrize("options", [[], ["model.scheduler.name=none"], ["callbacks=[default,ema]", "callbacks.ema.decay=0.9"]],
                         ids=["onecycle", "no-scheduler", "ema"])
def test_resume_from_the_middle_of_an_epoch_is_exact(tmp_path, synthetic_data_dir, options):
    """2 epochs straight == stopped by Ctrl-C after 3 of epoch 1's 10 batches, resumed, stopped again 3 batches
    later and resumed again: same weights. The second stop checks that the position counts from the epoch's start."""
    common = ["model=mlp", "trainer.max_epochs=2", "model.dropout=0.3", *options]
    straight = train(compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path / "straight"), *common]))

    run = [*tiny_run_overrides(synthetic_data_dir, tmp_path / "first"), *common]
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    for resume, step in ((None, 13), (last, 16)):  # 10 batches of 32 per epoch: steps 13 and 16 are in epoch 1
        stop = [f"+callbacks.stop._target_={__name__}.InterruptAtStep", f"+callbacks.stop.step={step}"]
        with pytest.raises(RunInterrupted):
            train(compose_config([*run, *stop, *([f"ckpt_path={resume}"] if resume else [])]))
        stopped = torch.load(last, weights_only=True)
        assert (stopped["epoch"], stopped["global_step"]) == (1, step)
    resumed = train(compose_config([*run, f"ckpt_path={last}"]))

    for key in ("val/acc_best", "test/acc", "test/loss"):
        assert resumed[key] == straight[key], key
    weights = [torch.load(d / "checkpoints" / "last.ckpt", weights_only=True) for d in (tmp_path / "straight", tmp_path / "first")]
    assert weights[0]["global_step"] == weights[1]["global_step"] == 20
    for state in ("state_dict", "current_model_state") if "current_model_state" in weights[0] else ("state_dict",):
        for name, tensor in weights[0][state].items():
            assert torch.equal(tensor, weights[1][state][name]), (state, name)
    # The learning curves too: epoch 1's training loss and accuracy cover all its batches, not those after a resume.
    curves = [[state["history"] for name, state in w["callbacks"].items() if "DiagnosticFigures" in name][0] for w in weights]
    assert curves[0] == curves[1] and len(curves[0]) == 2


def test_a_bf16_true_resume_from_the_middle_of_an_epoch_continues_its_float32_sums(tmp_path, synthetic_data_dir):
    """trainer.precision=bf16-true: Lightning converts the module after loading the checkpoint, and the epoch's running
    loss sum, float32, came back rounded to bfloat16 (92.25 as 92): epoch 1's training loss was not the straight run's."""
    common = ["model=mlp", "trainer.max_epochs=2", "model.dropout=0.3", "trainer.precision=bf16-true"]
    straight = train(compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path / "straight"), *common]))

    run = [*tiny_run_overrides(synthetic_data_dir, tmp_path / "first"), *common]
    with pytest.raises(RunInterrupted):
        train(compose_config([*run, f"+callbacks.stop._target_={__name__}.InterruptAtStep", "+callbacks.stop.step=13"]))
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    loss_sum = torch.load(last, weights_only=True)["state_dict"]["train_metrics.loss_sum"]
    assert loss_sum.dtype == torch.float32 and loss_sum.bfloat16().float() != loss_sum  # else rounding would change nothing
    resumed = train(compose_config([*run, f"ckpt_path={last}"]))

    for key in ("val/acc_best", "test/acc", "test/loss"):
        assert resumed[key] == straight[key], key
    weights = [torch.load(d / "checkpoints" / "last.ckpt", weights_only=True) for d in (tmp_path / "straight", tmp_path / "first")]
    for name, tensor in weights[0]["state_dict"].items():
        assert torch.equal(tensor, weights[1]["state_dict"][name]), name
    curves = [[state["history"] for name, state in w["callbacks"].items() if "DiagnosticFigures" in name][0] for w in weights]
    assert curves[0] == curves[1] and len(curves[0]) == 2


class StopDuringBatch(pl.Callback):
    """Ctrl-C (through the run's own GracefulStop) or a real SIGTERM to this process during training batch `batch`,
    counted from 1 across epochs: unlike optimizer steps, batches count the ones of an accumulation too."""

    def __init__(self, batch: int, signal_name: str) -> None:
        self.batch, self.signum = batch, getattr(signal, signal_name)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch * trainer.num_training_batches + batch_idx + 1 != self.batch:
            return
        if self.signum == signal.SIGINT:
            (graceful_stop,) = [cb for cb in trainer.callbacks if isinstance(cb, GracefulStop)]
            graceful_stop._request_stop(signal.SIGINT, None)
        else:
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize("signal_name, by", [("SIGINT", "Ctrl-C"), ("SIGTERM", "SIGTERM")])
def test_a_stop_half_way_through_a_gradient_accumulation_waits_for_its_end_and_resumes_exactly(
        tmp_path, synthetic_data_dir, caplog, signal_name, by):
    """With trainer.accumulate_grad_batches=2, a stop after an odd batch saved the state between an accumulation's
    two batches: the first one's gradient, in no checkpoint, was lost, and the resumed run's next step used the second
    batch's alone."""
    common = ["model=mlp", "trainer.max_epochs=2", "model.dropout=0.3", "++trainer.accumulate_grad_batches=2"]
    straight = train(compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path / "straight"), *common]))

    run = [*tiny_run_overrides(synthetic_data_dir, tmp_path / "first"), *common]
    stop = [f"+callbacks.stop._target_={__name__}.StopDuringBatch", "+callbacks.stop.batch=13",  # epoch 1's third
            f"+callbacks.stop.signal_name={signal_name}"]
    with pytest.raises(RunInterrupted, match=rf"^Training stopped by {by} at epoch 1, step 7\. Saved ") as stopped:
        train(compose_config([*run, *stop]))
    assert stopped.value.exit_code == {"Ctrl-C": 130, "SIGTERM": 143}[by]
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 7  # after batch 14, which ends the accumulation
    assert f"{by}: the stop waits for the end of this gradient accumulation" in caplog.text
    resumed = train(compose_config([*run, f"ckpt_path={last}"]))

    for key in ("val/acc_best", "test/acc", "test/loss"):
        assert resumed[key] == straight[key], key
    weights = [torch.load(d / "checkpoints" / "last.ckpt", weights_only=True) for d in (tmp_path / "straight", tmp_path / "first")]
    assert weights[0]["global_step"] == weights[1]["global_step"] == 10
    for name, tensor in weights[0]["state_dict"].items():
        assert torch.equal(tensor, weights[1]["state_dict"][name]), name
    optimizers = [w["optimizer_states"][0]["state"] for w in weights]
    assert optimizers[0].keys() == optimizers[1].keys()
    for param, state in optimizers[0].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(optimizers[1][param][name])), (param, name)


def test_a_ctrl_c_in_an_epochs_last_batch_stops_after_its_validation_and_resumes_exactly(tmp_path, synthetic_data_dir):
    """Stopped at once, that epoch would never be validated (a resume starts with the next): no epoch000.ckpt, and
    another checkpoint tested."""
    common = ["model=mlp", "trainer.max_epochs=2"]
    straight = train(compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path / "straight"), *common]))
    run = [*tiny_run_overrides(synthetic_data_dir, tmp_path / "first"), *common]
    stop = [f"+callbacks.stop._target_={__name__}.InterruptAtStep", "+callbacks.stop.step=10"]  # epoch 0's last batch
    with pytest.raises(RunInterrupted, match=r"Training stopped by Ctrl-C at the end of epoch 0, step 10\. "
                                             r"Saved .*last\.ckpt; resume with: python -m src\.train ") as stopped:
        train(compose_config([*run, *stop]))
    assert stopped.value.exit_code == 130  # Ctrl-C's, as a shell reports it
    assert (tmp_path / "first" / "checkpoints" / "epoch000.ckpt").exists()
    resumed = train(compose_config([*run, f"ckpt_path={tmp_path / 'first' / 'checkpoints' / 'last.ckpt'}"]))
    for key in ("val/acc_best", "test/acc", "test/loss"):
        assert resumed[key] == straight[key], key
    assert Path(resumed["tested_checkpoint"]).name == Path(straight["tested_checkpoint"]).name


def test_a_ctrl_c_during_the_last_validation_stops_the_run_before_testing(tmp_path, synthetic_data_dir):
    """Training has finished by then, but the user asked to stop: no test pass, and the resume command tests."""
    stop = [f"+callbacks.stop._target_={__name__}.InterruptDuringLastValidation"]
    with pytest.raises(RunInterrupted, match=r"Training stopped by Ctrl-C after its last epoch \(0\) had trained, before "
                                             r"testing\. Saved "):  # not "at the end of epoch 0", as if more were left
        train(compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path), "model=mlp", *stop]))
    assert (tmp_path / "checkpoints" / "epoch000.ckpt").exists() and not (tmp_path / "metrics.json").exists()
    with pytest.raises(RunInterrupted, match=r"after its last epoch \(0\) had trained\. Saved "):  # nothing to test
        train(compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path / "untested"), "model=mlp", *stop,
                              "test=false"]))


def test_weights_that_do_not_fit_their_settings_are_a_clear_error(tmp_path, trained_run):
    from src.models.loading import load_network

    checkpoint = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint["hyper_parameters"]["hidden_sizes"] = [size + 1 for size in checkpoint["hyper_parameters"]["hidden_sizes"]]
    altered = tmp_path / "altered.ckpt"
    torch.save(checkpoint, altered)
    for load in (load_classifier, load_network):
        with pytest.raises(CheckpointError, match=r"altered\.ckpt: its weights do not fit the network its settings "
                                                  r"describe \(size mismatch for (net\.)?1\.weight: copying a param "):
            load(altered)


def test_bad_checkpoints_are_clear_errors(tmp_path, trained_run):
    no_checkpoint = run_module("src.eval", f"hydra.run.dir={tmp_path / 'no_checkpoint'}")  # the likeliest first slip
    output = no_checkpoint.stdout + no_checkpoint.stderr
    assert no_checkpoint.returncode == 1 and "Traceback" not in output and "omegaconf" not in output, output[-3000:]
    assert "ckpt_path is required: python -m src.eval ckpt_path=<run dir>/checkpoints/<name>.ckpt" in output
    with pytest.raises(CheckpointError, match="no such file. Checkpoints are in <run dir>/checkpoints/"):
        load_classifier(tmp_path / "missing.ckpt")
    with pytest.raises(CheckpointError, match="^ckpt_path=123: no such file"):  # Hydra reads ckpt_path=123 as a number
        load_classifier(123)
    # The run folder given, or a checkpoint's name mistyped: the checkpoints there are named.
    there = f"Checkpoints there: {trained_run / 'checkpoints' / 'epoch000.ckpt'}, {trained_run / 'checkpoints' / 'last.ckpt'} "
    for path, what in ((trained_run, "is a folder"), (trained_run / "checkpoints" / "epoch009.ckpt", "no such file")):
        with pytest.raises(CheckpointError) as refused:
            load_classifier(path)
        assert str(refused.value).startswith(f"ckpt_path={path}: {what}. {there}(last.ckpt: the latest state")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes((trained_run / "checkpoints" / "last.ckpt").read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="truncated"):
        load_classifier(truncated)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match="not a checkpoint of this project"):
        load_classifier(foreign)
    text = tmp_path / "notes.ckpt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_classifier(text)
    pickled = tmp_path / "pickled.ckpt"  # what a checkpoint with objects in its hyperparameters looks like
    torch.save({**torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True),
                "hyper_parameters": argparse.Namespace(lr=0.1)}, pickled)
    with pytest.raises(CheckpointError, match="holds pickled Python objects, which are not loaded here") as refused:
        load_classifier(pickled)
    assert "\x1b" not in str(refused.value)  # torch's own message carries terminal colour codes

    # Written by another version of this project: a model module, class or setting this one lacks.
    ours = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True)
    for model_class, hyper_parameters, message in (
        ("src.models.resnet.ResNet", ours["hyper_parameters"], "which does not exist in this version"),
        ("src.models.mlp.ResNet", ours["hyper_parameters"], "which does not exist in this version"),
        (ours["model_class"], {**ours["hyper_parameters"], "width_mult": 2}, "settings do not fit this version"),
    ):
        other = tmp_path / "other_version.ckpt"
        torch.save({**ours, "model_class": model_class, "hyper_parameters": hyper_parameters}, other)
        with pytest.raises(CheckpointError, match=message):
            load_classifier(other)


def test_a_sweep_jobs_checkpoint_path_works_unquoted(tmp_path, trained_run, synthetic_data_dir):
    """As a run's summary prints it: the folder name's `=` made Hydra refuse the override with a bare parse error."""
    job_checkpoint = tmp_path / "3_model=mlp,seed=1" / "checkpoints" / "last.ckpt"
    job_checkpoint.parent.mkdir(parents=True)
    shutil.copy(trained_run / "checkpoints" / "last.ckpt", job_checkpoint)
    result = run_module("src.eval", f"ckpt_path={job_checkpoint}", f"hydra.run.dir={tmp_path / 'eval'}",
                        f"data.data_dir={synthetic_data_dir}", "data.download=false")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["checkpoint"] == str(job_checkpoint)


@pytest.mark.parametrize("entry_point", ["src.eval", "src.train"])
def test_entry_points_reject_a_truncated_checkpoint_in_one_line(tmp_path, trained_run, entry_point):
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes((trained_run / "checkpoints" / "last.ckpt").read_bytes()[:5000])
    result = run_module(entry_point, f"ckpt_path={truncated}", f"hydra.run.dir={tmp_path / 'run'}", "data.download=false")
    output = result.stdout + result.stderr
    assert result.returncode == 1
    assert f"ckpt_path={truncated}" in output and "Traceback" not in output


def test_resuming_with_another_schedule_length_is_refused_before_training(tmp_path, trained_run, synthetic_data_dir):
    last = trained_run / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    assert torch.load(last, weights_only=True)["schedule_steps"] == 10  # 320 training images / batch 32, 1 epoch
    result = run_module(
        "src.train", *tiny_run_overrides(synthetic_data_dir, tmp_path / "run"), "model=mlp", "trainer.max_epochs=2",
        "data.mean=0.5", "data.std=0.6", f"ckpt_path={last}", f"hydra.run.dir={tmp_path / 'run'}",
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in output, output[-3000:]
    assert "onecycle learning-rate schedule of 10 steps; this run would take 20" in output
    assert last.read_bytes() == before
    # The overrides to repeat are named, as for the other refused resumes, when the checkpoint records them.
    checkpoint = torch.load(last, weights_only=True)
    checkpoint["command_overrides"] = ["model=mlp", "data.mean=0.5", "data.std=0.6"]
    torch.save(checkpoint, tmp_path / "recorded.ckpt")
    result = run_module(
        "src.train", *tiny_run_overrides(synthetic_data_dir, tmp_path / "run2"), "model=mlp", "trainer.max_epochs=2",
        "data.mean=0.5", "data.std=0.6", f"ckpt_path={tmp_path / 'recorded.ckpt'}", f"hydra.run.dir={tmp_path / 'run2'}",
    )
    assert ("resume with the overrides of the run that saved it: python -m src.train model=mlp data.mean=0.5 data.std=0.6 "
            f"ckpt_path={tmp_path / 'recorded.ckpt'}, or start a new run.") in result.stdout + result.stderr
    # A shorter run too: its schedule would stop before annealing, without a word.
    from src.utils.resume_check import check_schedule_length

    with pytest.raises(ResumeRefused, match="schedule of 20 steps; this run would take 10 "):
        check_schedule_length("cosine", 20, 10, str(last), ["model=mlp"])
    check_schedule_length("cosine", 20, 20, str(last), ["model=mlp"])  # the same length resumes


@pytest.mark.parametrize("path", ["outputs/2026-11-24/13-27-54/checkpoints/last.ckpt",
                                  "outputs/multirun/2026-11-24/13-27-54/1_model=cnn,seed=2/checkpoints/last.ckpt",
                                  "/tmp/Läufe/checkpoints/last.ckpt", "/tmp/bob's runs/last.ckpt", '/tmp/a "b"/last.ckpt',
                                  "/scratch/run~2/checkpoints/last.ckpt", "/tmp/my runs/last.ckpt", "/tmp/runs $HOME/x",
                                  "/tmp/folder ending in a space /last.ckpt", " /tmp/starts with a space"])
def test_the_printed_resume_override_reads_back_as_the_path(path):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from src.utils.command_words import advice_as_calls, ckpt_path_override, typed
    from src.utils.path_overrides import quote_paths

    (word,) = shlex.split(typed(ckpt_path_override(path)))  # what the shell hands to Hydra
    with advice_as_calls():
        assert ast.literal_eval(typed(ckpt_path_override(path))) == word  # what a src.api call hands to Hydra
    override = OverridesParser.create().parse_override(word)
    assert override.key_or_group == "ckpt_path" and override.value() == path
    for key in ("ckpt_path", "+ckpt_path", "inputs", "data.data_dir", "paths.log_dir"):
        (pasted,) = quote_paths([f"{key}={path}"])  # the path typed or pasted unquoted
        assert OverridesParser.create().parse_override(pasted).value() == path, pasted


def test_printed_commands_hand_hydra_the_overrides_as_typed():
    from src.utils.command_words import advice_as_calls, command

    overrides = ["callbacks=[default,ema]", "model.channels=[8,16]", "data.data_dir=/tmp/bob's data", 'ckpt_path="a b"']
    assert shlex.split(command("train", overrides)) == ["python", "-m", "src.train", *overrides]
    with advice_as_calls():
        call = ast.parse(command("eval", overrides), mode="eval").body
        # src.api takes no Hydra flags: a run from a config of one's own is named as a command line there too.
        flags = ["--config-dir=/tmp/my conf", "--config-name=mine"]
        own = command("train", [*flags, "seed=3"])
    assert call.func.id == "evaluate" and [ast.literal_eval(argument) for argument in call.args] == overrides
    assert shlex.split(own) == ["python", "-m", "src.train", *flags, "seed=3"]


def test_the_eval_advice_leaves_out_the_training_runs_output_folder(tmp_path, monkeypatch):
    """src.eval writes a run folder of its own: a paths.output_dir among the training run's overrides (allowed when it
    names the run's folder) must not send the test's files into the training run, nor be refused there as not its folder."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from src import CONFIG_DIR
    from src.utils.command_words import eval_overrides

    overrides = ["model=mlp", f"paths.output_dir={tmp_path}", f"++paths.output_dir={tmp_path}", "data.batch_size=64",
                 "trainer.max_epochs=3"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)  # put back as it was after the test
    HydraConfig.instance().set_config(cfg)
    assert eval_overrides() == ["data.batch_size=64", "++trainer.max_epochs=3"]


def test_resuming_continues_in_the_checkpoints_run_dir(trained_run, tmp_path):
    from src.utils.run_folders import resume_run_dir

    last = str(trained_run / "checkpoints" / "last.ckpt")
    (trained_run / ".hydra").mkdir(exist_ok=True)  # what Hydra leaves in every run dir
    new = tmp_path / "outputs" / "12-00-00"
    assert resume_run_dir(last, True, str(new)) == str(trained_run) and not new.exists()
    assert resume_run_dir(last, False, str(new)) == str(new) and new.is_dir()  # testing a checkpoint never writes into its run
    assert resume_run_dir(None, True, str(new)) == f"{new}-2"  # a new folder each time
    # A run kept without Hydra's record (hydra.output_subdir=null) is known by its config.yaml.
    shutil.copytree(trained_run / "checkpoints", tmp_path / "no_record" / "checkpoints")
    (tmp_path / "no_record" / "config.yaml").write_text("seed: 42\n")
    assert resume_run_dir(str(tmp_path / "no_record" / "checkpoints" / "last.ckpt"), True, str(new)) == str(tmp_path / "no_record")


def test_resuming_with_another_model_config_names_the_original_overrides(tmp_path, trained_run, synthetic_data_dir):
    from src.errors import UserInputError

    (trained_run / ".hydra").mkdir(exist_ok=True)
    (trained_run / ".hydra" / "overrides.yaml").write_text("- model=mlp\n- trainer.max_epochs=1\n")
    cfg = compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path), "model=cnn",
                          f"ckpt_path={trained_run / 'checkpoints' / 'last.ckpt'}"])
    with pytest.raises(UserInputError, match="repeat the overrides of the run that saved it: python -m src.train model=mlp trainer.max_epochs=1"):
        train(cfg)

    # A checkpoint saved by a command-line run holds that run's overrides: they win over any record in the folder
    # (whose file times a copy may have reordered).
    checkpoint = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True)
    (tmp_path / "copy" / "checkpoints").mkdir(parents=True)
    torch.save({**checkpoint, "command_overrides": ["model=mlp", "seed=3"]}, tmp_path / "copy" / "checkpoints" / "last.ckpt")
    shutil.copytree(trained_run / ".hydra", tmp_path / "copy" / ".hydra")
    cfg = compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path / "run"), "model=cnn",
                          f"ckpt_path={tmp_path / 'copy' / 'checkpoints' / 'last.ckpt'}"])
    with pytest.raises(UserInputError, match="repeat the overrides of the run that saved it: python -m src.train model=mlp seed=3 ckpt"):
        train(cfg)


def test_a_checkpoint_saved_before_a_setting_existed_resumes_with_the_settings_default(tmp_path, synthetic_data_dir):
    """model.conv_dropout came later: its default (0) builds the network those checkpoints were trained with."""
    from src.errors import UserInputError

    common = [*tiny_run_overrides(synthetic_data_dir, tmp_path / "run"), "model=cnn", "model.channels=[4,8]",
              "model.kernel_size=3", "model.hidden_size=16", "model.scheduler.name=none"]
    train(compose_config(common))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    del checkpoint["hyper_parameters"]["conv_dropout"]
    torch.save(checkpoint, last)
    resume = [*common, "trainer.max_epochs=2", f"ckpt_path={last}"]
    with pytest.raises(UserInputError, match=r"model config \(model.conv_dropout=0.0 \(this run: 0.2\)\)\. To resume"):
        train(compose_config([*resume, "model.conv_dropout=0.2"]))
    assert train(compose_config(resume))["epochs"] == 2


def test_a_refused_resume_names_the_model_settings_that_differ_and_speed_switches_may_change(tmp_path, trained_run,
                                                                                              synthetic_data_dir):
    from src.errors import UserInputError
    from src.utils.resume_check import _in_effect, _model_changes

    # Names were taken in any case before: a checkpoint saved with name=Adam resumes with adam, as it must be written now.
    assert _model_changes(_in_effect({"optimizer": {"name": "Adam", "lr": 0.1}, "scheduler": {"name": "OneCycle"}}),
                          _in_effect({"optimizer": {"name": "adam", "lr": 0.1}, "scheduler": {"name": "onecycle"}})) == []
    assert _model_changes({"fc": (120, 84)}, {"fc": [120, 84]}) == []  # a class's default against the config's list
    speed_only = {"cuda_graph": "auto", "compile": True, "channels_last": True}
    assert _model_changes(_in_effect({key: False for key in speed_only}), _in_effect(speed_only)) == []
    # OneCycle set the momentum (beta1) at every step: a run saved with momentum=0.8 resumes without it, now refused.
    for cycled in ({"name": "sgd", "lr": 0.1, "momentum": 0.8}, {"name": "adam", "lr": 0.1, "betas": [0.5, 0.999]}):
        assert _model_changes(_in_effect({"optimizer": cycled, "scheduler": {"name": "onecycle"}}),
                              _in_effect({"optimizer": {**cycled, "momentum": 0.9, "betas": [0.9, 0.999]},
                                          "scheduler": {"name": "onecycle"}})) == []
    kept = {"name": "onecycle", "cycle_momentum": False}
    assert _model_changes(_in_effect({"optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.8}, "scheduler": kept}),
                          _in_effect({"optimizer": {"name": "sgd", "lr": 0.1}, "scheduler": kept})) == [
        "model.optimizer.momentum=0.8 (this run: 0.9)"]
    adam_beta2 = [_in_effect({"optimizer": {"name": "adam", "lr": 0.1, "betas": betas}, "scheduler": {"name": "onecycle"}})
                  for betas in ([0.9, 0.999], [0.9, 0.99])]
    assert _model_changes(*adam_beta2) == ["model.optimizer.betas=[0.9, 0.999] (this run: [0.9, 0.99])"]  # beta2 is read

    resume = [*tiny_run_overrides(synthetic_data_dir, tmp_path), "data.mean=0.5", "data.std=0.6",
              f"ckpt_path={trained_run / 'checkpoints' / 'last.ckpt'}"]
    with pytest.raises(UserInputError, match=r"with a different model config \(model.dropout=0.2 \(this run: 0.5\); "
                                             r"model.optimizer.lr=0.003 \(this run: 0.01\)\)\. To resume"):
        train(compose_config([*resume, "model=mlp", "model.dropout=0.5", "model.optimizer.lr=0.01"]))
    with pytest.raises(UserInputError, match=r"with another model \(src.models.mlp.MLP; this run's is src.models.cnn.CNN\)"):
        train(compose_config([*resume, "model=cnn"]))
    # Switches that change only the speed: the run (finished already) resumes and tests its best checkpoint again.
    resumed = train(compose_config([*resume, "model=mlp", "model.channels_last=true"]))
    assert resumed["status"] == "ok" and resumed["resumed_from"].endswith("last.ckpt")
    # Defaults written out, a setting of another optimizer: the same training (each was refused as "(not set)").
    as_before = ["+model.optimizer.betas=[0.9,0.999]", "++model.optimizer.decay_norm_and_bias=true",
                 "+model.scheduler.div_factor=25", "+model.optimizer.momentum=0.5", "+model.scheduler.min_lr=0.5"]
    assert train(compose_config([*resume, *tiny_run_overrides(synthetic_data_dir, tmp_path / "again"), "model=mlp",
                                 *as_before]))["status"] == "ok"
    with pytest.raises(UserInputError, match=r"model config \(model.scheduler.div_factor=25.0 \(this run: 10\)\)\. To"):
        train(compose_config([*resume, *tiny_run_overrides(synthetic_data_dir, tmp_path / "other"), "model=mlp",
                              "+model.scheduler.div_factor=10"]))


@pytest.mark.parametrize("changed, refused", [
    ("data.val_size=96", r"data.val_size=80 \(this run: 96\)"),
    ("data.split_seed=3", r"data.split_seed=0 \(this run: 3\)"),
    ("data.mean=0.4", r"data.mean=0.5 \(this run: 0.4\)"),
    ("data.std=0.7", r"data.std=0.6 \(this run: 0.7\)"),
])
def test_resuming_with_another_validation_split_or_normalization_is_refused(tmp_path, trained_run, synthetic_data_dir,
                                                                            changed, refused):
    from src.errors import UserInputError

    # trained_run validated on 80 images, normalized with mean 0.5 and std 0.6.
    cfg = compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path), "model=mlp", "data.mean=0.5", "data.std=0.6",
                          changed, f"ckpt_path={trained_run / 'checkpoints' / 'last.ckpt'}"])
    with pytest.raises(UserInputError, match=rf"was trained with other data settings or seed \({refused}\)"):
        train(cfg)


def test_resuming_with_another_seed_is_refused(tmp_path, trained_run, synthetic_data_dir):
    """The batch order follows the seed: a resume that forgot seed=... would continue another run than it claims."""
    from src.errors import UserInputError

    cfg = compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path), "model=mlp", "data.mean=0.5", "data.std=0.6",
                          "seed=7", f"ckpt_path={trained_run / 'checkpoints' / 'last.ckpt'}"])  # trained with seed 42
    with pytest.raises(UserInputError, match=r"was trained with other data settings or seed \(seed=42 \(this run: 7\)\)"):
        train(cfg)
    # A run that set the shuffle seed itself is told so (the checkpoint records the overrides that saved it).
    checkpoint = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint["command_overrides"] = ["model=mlp", "data.shuffle_seed=42"]
    torch.save(checkpoint, tmp_path / "own_seed.ckpt")
    with pytest.raises(UserInputError, match=r"other data settings or seed \(data.shuffle_seed=42 \(this run: 7\)\)\. To resume, repeat the "
                                             r"overrides of the run that saved it: python -m src.train model=mlp data.shuffle_seed=42 "):
        train(compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path), "model=mlp", "data.mean=0.5",
                              "data.std=0.6", "seed=7", f"ckpt_path={tmp_path / 'own_seed.ckpt'}"]))


def test_resuming_on_other_data_is_refused_and_a_copy_of_the_same_data_is_not(tmp_path, trained_run, synthetic_data_dir,
                                                                                monkeypatch):
    """Another data.data_dir went on, without a word, with the best validation accuracy of the checkpoint's own
    validation set, and tested that checkpoint."""
    from src.data.idx import read_idx, write_idx
    from src.data.mnist_datamodule import MNISTDataModule
    from src.data.synthetic import write_synthetic_mnist

    last = trained_run / "checkpoints" / "last.ckpt"
    saved = last.read_bytes()
    resume = ["model=mlp", "data.mean=0.5", "data.std=0.6", f"ckpt_path={last}"]
    # As many images (the schedule's length is checked already), other labels.
    other_data = write_synthetic_mnist(tmp_path / "other")
    labels_file = other_data / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz"
    write_idx(labels_file, np.roll(read_idx(labels_file, expected_ndim=1).numpy(), 1))
    trained_on = torch.load(last, weights_only=True)["MNISTDataModule"]["train_file"]["labels_sha256"]
    with pytest.raises(ResumeRefused, match=rf"was trained with another train file \(400 images, labels {trained_on}; "
                                            rf"data.data_dir={other_data} holds 400 images, labels (?!{trained_on})\w+\)\. "
                                            r"To resume, repeat the overrides of the run that saved it: python -m src\.train "):
        train(compose_config([*tiny_run_overrides(other_data, tmp_path / "refused"), *resume]))
    assert last.read_bytes() == saved
    # Files still to be downloaded are checked once there: fetched before the check, as the fit would.
    to_download = tmp_path / "to_download"
    monkeypatch.setattr(MNISTDataModule, "prepare_data", lambda self: shutil.copytree(other_data, to_download))
    with pytest.raises(ResumeRefused, match=rf"data.data_dir={to_download} holds 400 images"):
        train(compose_config([*tiny_run_overrides(to_download, tmp_path / "refused"), *resume]))
    monkeypatch.undo()
    assert last.read_bytes() == saved
    # The same files elsewhere (moved, another machine) are the same data.
    moved = tmp_path / "moved"
    shutil.copytree(synthetic_data_dir, moved)
    assert train(compose_config([*tiny_run_overrides(moved, tmp_path / "resumed"), *resume]))["status"] == "ok"


def test_a_refused_resume_names_the_overrides_of_the_run_that_saved_the_checkpoint(tmp_path):
    from src.utils.resume_check import overrides_that_wrote

    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"saved at t=20")
    records = {}
    for name, written_at in (("", 0), ("resumed-2026-12-01_10-00-00", 10), ("resumed-2026-12-01_11-00-00", 30)):
        records[written_at] = tmp_path / ".hydra" / name / "overrides.yaml"
        records[written_at].parent.mkdir(parents=True, exist_ok=True)
        records[written_at].write_text("- model=mlp\n")
        os.utime(records[written_at], (written_at, written_at))
    os.utime(checkpoint, (20, 20))
    assert overrides_that_wrote(checkpoint) == records[10]  # the extension that saved it, not the refused attempt at 30
    os.utime(checkpoint, (10, 10))  # written in the same second as that record (file times rounded to seconds)
    assert overrides_that_wrote(checkpoint) == records[10]
    os.utime(checkpoint, (5, 5))
    assert overrides_that_wrote(checkpoint) == records[0]
    os.utime(records[0], (40, 40))  # a folder copied without its times: no record is older than the checkpoint
    assert overrides_that_wrote(checkpoint) == records[0]


def test_resuming_averaged_weights_without_averaging_is_refused(tmp_path, trained_run, synthetic_data_dir):
    from src.errors import UserInputError

    checkpoint = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint["current_model_state"] = checkpoint["state_dict"]  # what callbacks.ema saves beside the average
    averaged = tmp_path / "checkpoints" / "last.ckpt"
    averaged.parent.mkdir()
    torch.save(checkpoint, averaged)
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text("- model=mlp\n- callbacks=[default,ema]\n")
    cfg = compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path / "run"), "model=mlp", "data.mean=0.5",
                          "data.std=0.6", f"ckpt_path={averaged}"])
    with pytest.raises(UserInputError, match=r"weight averaging \(callbacks.ema\).*python -m src.train model=mlp 'callbacks=\[default,ema\]'"):
        train(cfg)


def test_a_refused_resume_from_the_command_line_leaves_the_run_folder_as_it_was(tmp_path, synthetic_data_dir):
    # As a user resumes: no hydra.run.dir, so Hydra and the run write into the checkpoint's own run folder.
    run_dir = tmp_path / "run"
    settings = [f"data.data_dir={synthetic_data_dir}", "data.download=false", "data.batch_size=32", "data.val_size=80",
                "trainer=cpu", "trainer.max_epochs=1", "callbacks.progress_bar=null", "++trainer.enable_progress_bar=false"]
    first = run_module("src.train", *settings, "model=mlp", f"hydra.run.dir={run_dir}")
    assert first.returncode == 0, first.stderr[-3000:]
    files_before = {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file() and path.suffix != ".log"}

    def unchanged_but_for_the_attempts_record() -> bool:
        added = {path for path in run_dir.rglob("*") if path.is_file()} - set(files_before)
        # New: the attempt's log lines and Hydra record, and, once fitting had begun, an empty TensorBoard file.
        expected = {path for path in added if path.suffix == ".log" or ".hydra/resumed-" in str(path)
                    or (path.name.startswith("events.out") and path.stat().st_size < 200)}
        return added == expected and {path: path.read_bytes() for path in files_before} == files_before

    last = run_dir / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["command_overrides"] == [*settings, "model=mlp"]  # as typed
    refused = run_module("src.train", *settings, "model=cnn", f"ckpt_path={last}")
    output = refused.stdout + refused.stderr
    assert refused.returncode == 1 and "Traceback" not in output, output[-3000:]
    # It names the overrides the checkpoint was trained with, not the ones just typed.
    assert f"repeat the overrides of the run that saved it: python -m src.train {' '.join(settings)} model=mlp ckpt_path={last}" in output
    assert unchanged_but_for_the_attempts_record()
    (attempt,) = (run_dir / ".hydra").glob("resumed-*")  # Hydra's record of the attempt, beside the original's
    assert "model=cnn" in (attempt / "overrides.yaml").read_text()

    # Refused later, once fitting has begun: the OneCycle schedule was laid out for one epoch.
    refused = run_module("src.train", *settings, "model=mlp", "trainer.max_epochs=2", f"ckpt_path={last}")
    assert refused.returncode == 1 and "learning-rate schedule of 10 steps" in refused.stdout + refused.stderr
    assert unchanged_but_for_the_attempts_record()


def test_a_resume_takes_the_cpu_threads_its_checkpoint_was_trained_with(tmp_path, synthetic_data_dir, caplog,
                                                                        monkeypatch):
    """A parallel sweep job trains with its share of the cores; resumed alone, it would take them all, and its sums
    (so its weights) would drift from those of the run it continues."""
    common = ["model=mlp", "trainer.max_epochs=2", "model.dropout=0.3"]
    callers = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("src.utils.jobs.usable_cpus", lambda: 2)  # a 1-core machine would not follow a 2-thread one
    try:
        torch.set_num_threads(1)
        straight = train(compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path / "straight"), *common]))
        stop = [f"+callbacks.stop._target_={__name__}.StopAfterEpoch", "+callbacks.stop.epoch=0"]
        train(compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path / "first"), *common, *stop]))
        last = tmp_path / "first" / "checkpoints" / "last.ckpt"
        assert torch.load(last, weights_only=True)["cpu_threads"] == 1
        torch.set_num_threads(2)
        caplog.set_level(logging.INFO)
        resumed = train(compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path / "first"), *common,
                                        f"ckpt_path={last}"]))
    finally:
        torch.set_num_threads(callers)
    assert "Using 1 CPU thread, as the run that saved the checkpoint did" in caplog.text
    assert resumed["cpu_threads"] == straight["cpu_threads"] == 1
    assert all(resumed[key] == straight[key] for key in ("val/acc_best", "test/acc", "test/loss"))

    # The user's own thread count stands, with a word on what it means.
    from src.utils.resume_check import follow_the_checkpoints_threads

    def threads_resuming_from_one_with_two() -> int:
        try:
            torch.set_num_threads(2)
            follow_the_checkpoints_threads({"cpu_threads": 1}, pl.Trainer(accelerator="cpu", logger=False))
            return torch.get_num_threads()
        finally:
            torch.set_num_threads(callers)

    # All the cores here, as the checkpoint's run had: followed, up to and with the last one.
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("src.utils.jobs.usable_cpus", lambda: 2)
    try:
        torch.set_num_threads(1)
        follow_the_checkpoints_threads({"cpu_threads": 2}, pl.Trainer(accelerator="cpu", logger=False))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(callers)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads_resuming_from_one_with_two() == 2
    assert ("The checkpoint was trained with 1 CPU thread; this resume uses 2 (OMP_NUM_THREADS), so it may differ "
            "from the run it continues in the last bits.") in caplog.text
    # In a parallel sweep's job, joblib sets OMP_NUM_THREADS itself: the job keeps its share of the cores.
    monkeypatch.setattr("src.utils.jobs.joblib_workers", lambda: 2)
    assert threads_resuming_from_one_with_two() == 2
    assert "this resume uses 2 (its share of the cores in this parallel sweep)" in caplog.text


def test_only_a_normalization_given_other_than_the_checkpoints_is_named_as_not_used(monkeypatch, caplog):
    from omegaconf import OmegaConf

    from src.utils.config_io import take_the_checkpoints_settings

    monkeypatch.setattr("src.utils.command_words.command_overrides", lambda: ["data.mean=0.5", "data.std=0.7"])
    cfg = OmegaConf.create({"data": {"mean": 0.5, "std": 0.7}})
    with caplog.at_level(logging.WARNING):
        take_the_checkpoints_settings(cfg, {"datamodule_hyper_parameters": {"mean": 0.5, "std": 0.6}})
    assert "Not used: data.std=0.7 (the checkpoint's: 0.6). The checkpoint's network is tested" in caplog.text
    assert "data.mean" not in caplog.text and (cfg.data.mean, cfg.data.std) == (0.5, 0.6)


def test_model_settings_given_to_a_test_only_run_are_named_as_not_used(monkeypatch, caplog):
    """src.train train=false ckpt_path=<a CNN's> model=mlp model.dropout=0.9 tested the CNN, and config.yaml said
    so, without a word about the settings given."""
    from omegaconf import OmegaConf

    from src.utils.config_io import take_the_checkpoints_settings

    checkpoint = {"model_class": "src.models.cnn.CNN", "hyper_parameters": {"dropout": 0.1, "optimizer": {"lr": 0.003}},
                  "datamodule_hyper_parameters": {"mean": 0.5, "std": 0.6}}
    given = ["model=mlp", "model.dropout=0.9", "model.optimizer.lr=0.003", "train=false"]
    monkeypatch.setattr("src.utils.command_words.command_overrides", lambda: given)
    cfg = OmegaConf.create({"data": {"mean": 0.5, "std": 0.6},
                            "model": {"_target_": "src.models.mlp.MLP", "dropout": 0.9, "optimizer": {"lr": 0.003}}})
    with caplog.at_level(logging.WARNING):
        take_the_checkpoints_settings(cfg, checkpoint)
    assert ("Not used: the network src.models.mlp.MLP (the checkpoint's: src.models.cnn.CNN); model.dropout=0.9 (the "
            "checkpoint's: 0.1). The checkpoint's network is tested") in caplog.text
    assert cfg.model == {"_target_": "src.models.cnn.CNN", "dropout": 0.1, "optimizer": {"lr": 0.003}}
    caplog.clear()
    given[:] = ["model=cnn", "model.dropout=0.1"]  # the training's own settings: nothing to warn about
    cfg.model = {"_target_": "src.models.cnn.CNN", "dropout": 0.1, "optimizer": {"lr": 0.003}}
    take_the_checkpoints_settings(cfg, checkpoint)
    assert "Not used" not in caplog.text


def test_saving_a_checkpoint_does_not_start_an_unused_cuda(monkeypatch):
    """A CPU run on a GPU machine read CUDA's random state into each checkpoint, which started CUDA: a notebook could
    not use ddp_fork/ddp_notebook afterwards."""
    import torch

    from src.utils.rng import capture_rng_states

    def started(*args):
        raise AssertionError("CUDA started")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", started)
    assert "cuda" not in capture_rng_states()
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)  # in use: its state goes with the others
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [torch.zeros(16, dtype=torch.uint8)])
    assert capture_rng_states()["cuda"][0].shape == (16,)


def test_an_apple_gpus_random_state_is_saved_and_restored(monkeypatch):
    """On a Mac the MPS device draws dropout masks and augmentations from a generator of its own: without its state in
    the checkpoint a resumed run drew other ones than an uninterrupted run."""
    import torch

    from src.utils.rng import capture_rng_states, restore_rng_states

    generator = {"state": torch.arange(8, dtype=torch.uint8)}
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.mps, "get_rng_state", lambda: generator["state"].clone())
    monkeypatch.setattr(torch.mps, "set_rng_state", lambda state: generator.update(state=state))
    states = capture_rng_states()
    generator["state"] = torch.zeros(8, dtype=torch.uint8)  # drawn from since
    restore_rng_states(states)
    assert torch.equal(generator["state"], torch.arange(8, dtype=torch.uint8))


def test_a_checkpoint_naming_a_class_outside_the_projects_models_imports_nothing(monkeypatch):
    """A checkpoint's model class is imported to build the network: only a module of src.models may be."""
    import importlib

    from src.models.checkpoint_file import CheckpointError
    from src.models.loading import model_class

    imported = []
    monkeypatch.setattr(importlib, "import_module", lambda name, *args: imported.append(name))
    for class_path in ("torch.nn.Linear", "os.system", "tests.conftest.Anything"):
        with pytest.raises(CheckpointError, match=rf"names model class '{re.escape(class_path)}', which is not one of "
                                                  r"src\.models\.$"):
            model_class(class_path)
    assert imported == []


def test_a_resume_in_the_same_folder_keeps_the_first_runs_csv_log(tmp_path, synthetic_data_dir):
    """Lightning's CSV logger deletes an existing metrics.csv; the resume writes its rows beside it instead."""
    run_dir = tmp_path / "run"
    settings = [f"data.data_dir={synthetic_data_dir}", "data.download=false", "data.batch_size=32", "data.val_size=80",
                "trainer=cpu", "model=mlp", "model.scheduler.name=none", "logger=[tensorboard,csv]",
                "callbacks.progress_bar=null", "++trainer.enable_progress_bar=false"]
    first = run_module("src.train", *settings, "trainer.max_epochs=1", f"hydra.run.dir={run_dir}")
    assert first.returncode == 0, first.stderr[-3000:]
    first_log = (run_dir / "csv" / "metrics.csv").read_text()
    assert "val/acc" in first_log
    resumed = run_module("src.train", *settings, "trainer.max_epochs=2", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "exists and is not empty" not in resumed.stderr  # Lightning's warning: continuing in its folder is the point
    assert (run_dir / "csv" / "metrics.csv").read_text() == first_log
    (resumed_log,) = (run_dir / "csv").glob("resumed-*/metrics.csv")
    epochs = {row["epoch"] for row in csv.DictReader(resumed_log.open()) if row.get("val/acc")}
    assert epochs == {"1"}


def test_resuming_a_finished_run_in_a_moved_folder_tests_its_own_best_checkpoint(tmp_path, synthetic_data_dir, caplog):
    """A resubmitted job that had finished: nothing left to train, and the run folder has moved since (Lightning
    keeps the best checkpoint's old path). The best validation accuracy and the test are those of this folder."""
    common = ["model=mlp", "model.scheduler.name=none"]
    first = train(compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path / "a"), *common]))
    assert "Nothing left to train" not in caplog.text
    shutil.move(tmp_path / "a", tmp_path / "b")
    events_before = _scalar_counts(tmp_path / "b" / "tensorboard")
    last = tmp_path / "b" / "checkpoints" / "last.ckpt"
    untested = train(compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path / "b"), *common, f"ckpt_path={last}",
                                     "test=false"]))  # keeps the test results of that state, naming the moved checkpoint
    assert untested["tested_checkpoint"] == str(tmp_path / "b" / "checkpoints" / "epoch000.ckpt")
    assert untested["test/acc"] == first["test/acc"]
    with caplog.at_level(logging.INFO):
        again = train(compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path / "b"), *common, f"ckpt_path={last}"]))
    assert ("Nothing left to train: the checkpoint had reached trainer.max_epochs=1 already, so its run's best "
            "checkpoint is tested again.") in caplog.text
    assert again["val/acc_best"] == first["val/acc_best"]
    assert again["best_model_path"] == again["tested_checkpoint"] == str(tmp_path / "b" / "checkpoints" / "epoch000.ckpt")
    assert again["test/acc"] == first["test/acc"]
    # Its TensorBoard run holds its test results and figures once, however often a finished job is requeued, and its
    # training time is the training's.
    assert _scalar_counts(tmp_path / "b" / "tensorboard") == events_before and events_before["test/acc"] == 1
    assert again["fit_seconds"] == first["fit_seconds"]
    # The best checkpoint's state is filed under ModelCheckpoint's key, as before RunFolderCheckpoint: older
    # checkpoints resume with their best score and path.
    keys = torch.load(last, weights_only=True)["callbacks"]
    assert any(key.startswith("ModelCheckpoint{'monitor': 'val/acc'") for key in keys), list(keys)
    assert any(key.startswith("ResumableCheckpoint{") for key in keys), list(keys)


def test_a_finished_run_resumed_logs_the_tests_its_tensorboard_run_lacks(tmp_path, synthetic_data_dir):
    """Left out only when this very state was tested before: not after a run with test=false, nor when metrics.json
    is an earlier attempt's (a test pass interrupted writes none)."""
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.ckpt"
    common = [*tiny_run_overrides(synthetic_data_dir, run_dir), "model=mlp", "model.scheduler.name=none"]
    first = train(compose_config([*common, "test=false"]))
    assert train(compose_config([*common, f"ckpt_path={last}"]))["fit_seconds"] == first["fit_seconds"]
    assert _scalar_counts(run_dir / "tensorboard")["test/acc"] == 1
    (run_dir / "learning_curves.png").unlink()  # as if the first fit had been stopped before its end
    train(compose_config([*common, f"ckpt_path={last}"]))
    assert _scalar_counts(run_dir / "tensorboard")["test/acc"] == 1 and (run_dir / "learning_curves.png").is_file()
    # The fits that trained nothing opened an event file each, and left nothing in it.
    assert not [path for path in (run_dir / "tensorboard").iterdir() if empty_event_file(path)]
    tested = json.loads((run_dir / "metrics.json").read_text())
    train(compose_config([*common, "test=false", f"ckpt_path={last}"]))  # keeps the results of that state's test
    kept = json.loads((run_dir / "metrics.json").read_text())
    assert {key: kept.get(key) for key in tested if key.startswith("test")} == {
        key: value for key, value in tested.items() if key.startswith("test")}
    train(compose_config([*common, f"ckpt_path={last}"]))
    assert _scalar_counts(run_dir / "tensorboard")["test/acc"] == 1

    one_epoch = (run_dir / "metrics.json").read_text()
    train(compose_config([*common, "trainer.max_epochs=2", f"ckpt_path={last}"]))
    (run_dir / "metrics.json").write_text(one_epoch)  # what a 2-epoch test pass stopped by Ctrl-C leaves
    train(compose_config([*common, "trainer.max_epochs=2", f"ckpt_path={last}"]))
    assert _scalar_counts(run_dir / "tensorboard")["test/acc"] == 3  # after 1 epoch, after 2, and the 2-epoch test again


def _scalar_counts(folder: Path) -> dict[str, int]:
    """How many values each scalar and image tag of a TensorBoard folder holds."""
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, SCALARS, EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={SCALARS: 0, IMAGES: 0})
    events.Reload()
    tags = events.Tags()
    return {**{tag: len(events.Scalars(tag)) for tag in tags[SCALARS]}, **{tag: len(events.Images(tag)) for tag in tags[IMAGES]}}


def test_extending_a_run_in_a_moved_folder_trains_and_checkpoints_there(tmp_path, synthetic_data_dir):
    """A run folder moved, then extended by an epoch: every checkpoint path the resumed state names must follow the
    folder (Lightning looks the k-th best one up among the best checkpoints at the first validation)."""
    common = ["model=mlp", "model.scheduler.name=none"]  # no OneCycle schedule: a run can be extended
    train(compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path / "a"), *common]))
    shutil.move(tmp_path / "a", tmp_path / "b")
    last = tmp_path / "b" / "checkpoints" / "last.ckpt"
    extended = train(compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path / "b"), *common,
                                     "trainer.max_epochs=2", f"ckpt_path={last}"]))
    assert extended["epochs"] == 2
    assert Path(extended["best_model_path"]).parent == tmp_path / "b" / "checkpoints"
    assert not (tmp_path / "a").exists()  # nothing written back into the old place


def test_a_moved_run_folder_keeps_its_best_score_so_a_worse_epoch_cannot_become_the_best(tmp_path):
    from src.callbacks.checkpoint import RunFolderCheckpoint

    old, new = tmp_path / "a" / "checkpoints", tmp_path / "b" / "checkpoints"
    new.mkdir(parents=True)
    (new / "epoch003.ckpt").write_bytes(b"moved")
    callback = RunFolderCheckpoint(dirpath=str(new), monitor="val/acc", mode="max")
    callback.load_state_dict({"dirpath": str(old), "best_model_path": str(old / "epoch003.ckpt"), "best_model_score": torch.tensor(0.99),
                              "best_k_models": {str(old / "epoch003.ckpt"): torch.tensor(0.99)}, "kth_best_model_path": str(old / "epoch003.ckpt"),
                              "kth_value": torch.tensor(0.99), "last_model_path": ""})
    assert callback.best_model_path == str(new / "epoch003.ckpt") and float(callback.best_model_score) == pytest.approx(0.99)
    assert list(callback.best_k_models) == [str(new / "epoch003.ckpt")]


def test_a_resume_keeps_both_seeds_of_a_run_that_drew_each(tmp_path, synthetic_data_dir):
    """seed=null data.shuffle_seed=null: the resume took the shuffle seed for the run's seed, and config.yaml lost it."""
    from omegaconf import OmegaConf

    run = [*tiny_run_overrides(synthetic_data_dir, tmp_path), "model=mlp", "model.scheduler.name=none", "seed=null",
           "data.shuffle_seed=null"]
    train(compose_config(run))
    drawn = OmegaConf.load(tmp_path / "config.yaml")
    assert drawn.seed != drawn.data.shuffle_seed
    train(compose_config([*run, "trainer.max_epochs=2", f"ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}"]))
    kept = OmegaConf.load(tmp_path / "config.yaml")
    assert (kept.seed, kept.data.shuffle_seed) == (drawn.seed, drawn.data.shuffle_seed)


def test_an_unseeded_run_draws_one_seed_and_a_resume_keeps_it(tmp_path, synthetic_data_dir, monkeypatch):
    """seed=null: the drawn seed is in config.yaml and the checkpoint, and a resume shuffles with it (not a new
    draw), so a mid-epoch resume continues the same order; DDP's other processes take rank 0's draw."""
    from omegaconf import OmegaConf

    from src.utils import rng

    run = [*tiny_run_overrides(synthetic_data_dir, tmp_path), "model=mlp", "model.scheduler.name=none", "seed=null"]
    train(compose_config(run))
    last = tmp_path / "checkpoints" / "last.ckpt"
    drawn = torch.load(last, weights_only=True)["datamodule_hyper_parameters"]["shuffle_seed"]
    assert OmegaConf.load(tmp_path / "config.yaml").seed == drawn
    train(compose_config([*run, "trainer.max_epochs=2", f"ckpt_path={last}"]))
    assert torch.load(last, weights_only=True)["datamodule_hyper_parameters"]["shuffle_seed"] == drawn

    monkeypatch.setattr("src.utils.run.is_rank_zero", lambda: False)
    monkeypatch.setenv("PL_GLOBAL_SEED", "1234")
    assert rng.unseeded_run_seed(None) == 1234
