"""Bad input -> one clear message, non-zero exit, nothing damaged; determinism; SIGTERM/Ctrl-C + resume;
atomic checkpoint writes; DDP on 2 CPU processes."""

from __future__ import annotations

import errno
import gzip
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from src import CONFIG_DIR, PROJECT_ROOT
from src.data.idx import write_idx
from src.data.synthetic import write_synthetic_mnist
from src.errors import RunInterrupted, TrainingDiverged, UserInputError
from src.eval import evaluate
from src.train import train
from src.utils.run import run_reporting_failures
from src.utils.run_folders import empty_event_file
from tests.conftest import compose_config, ctrl_c_as_in_a_terminal, run_module, tiny_run_overrides


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory, synthetic_data_dir) -> Path:
    run_dir = tmp_path_factory.mktemp("good")
    train(compose_config([*tiny_run_overrides(synthetic_data_dir, run_dir), "model=mlp"]))
    return run_dir / "checkpoints" / "last.ckpt"


def break_file(data_dir: Path, how: str) -> None:
    raw = data_dir / "MNIST" / "raw"
    if how == "missing":
        shutil.rmtree(raw)
    elif how == "truncated":
        path = raw / "train-images-idx3-ubyte.gz"
        path.write_bytes(path.read_bytes()[:-300])
    elif how == "wrong magic":
        (raw / "t10k-labels-idx1-ubyte.gz").unlink()
        (raw / "t10k-labels-idx1-ubyte").write_bytes(b"PK\x03\x04" + bytes(200))
    elif how == "gzip under a plain name":
        (raw / "t10k-labels-idx1-ubyte.gz").rename(raw / "t10k-labels-idx1-ubyte")
    elif how == "plain under a gzip name":  # a browser decompressed it and kept the name
        images = raw / "t10k-images-idx3-ubyte.gz"
        images.write_bytes(gzip.decompress(images.read_bytes()))
    elif how == "compressed twice":
        images = raw / "t10k-images-idx3-ubyte.gz"
        images.write_bytes(gzip.compress(images.read_bytes()))
    elif how == "counts disagree":
        write_idx(raw / "train-labels-idx1-ubyte.gz", np.zeros(399, dtype=np.uint8))
    elif how == "label out of range":
        write_idx(raw / "t10k-labels-idx1-ubyte.gz", np.full(100, 11, dtype=np.uint8))
    elif how == "a file as data_dir":
        shutil.rmtree(raw)
        raw.parent.rmdir()
        data_dir.rmdir()
        data_dir.write_text("not a folder")
    elif how == "one train image":  # no data.val_size can help
        write_idx(raw / "train-images-idx3-ubyte.gz", np.zeros((1, 28, 28), dtype=np.uint8))
        write_idx(raw / "train-labels-idx1-ubyte.gz", np.zeros(1, dtype=np.uint8))
    elif how == "no test images":  # valid files: it failed only when testing began, after the training
        write_idx(raw / "t10k-images-idx3-ubyte.gz", np.zeros((0, 28, 28), dtype=np.uint8))
        write_idx(raw / "t10k-labels-idx1-ubyte.gz", np.zeros(0, dtype=np.uint8))


CONFIG_CASES = {
    "lr zero": (["model.optimizer.lr=0"], "model.optimizer.lr=0 is invalid: it must be a finite number > 0"),
    "lr negative": (["model.optimizer.lr=-0.1"], "model.optimizer.lr=-0.1 is invalid"),
    "lr infinite": (["model.optimizer.lr=inf"], "model.optimizer.lr=inf is invalid: it must be a finite number > 0"),
    "patience as text": (["callbacks=[default,early_stopping]", "callbacks.early_stopping.patience=abc"],
                         "callbacks.early_stopping.patience=abc is invalid: it must be a whole number of validations >= 0."),
    "early stopping min_delta null": (["callbacks=[default,early_stopping]", "callbacks.early_stopping.min_delta=null"],
                                      "callbacks.early_stopping.min_delta=null is invalid: it must be a finite number."),
    # nan never compares as an improvement: the run stopped after `patience` epochs however well it trained.
    "early stopping min_delta nan": (["callbacks=[default,early_stopping]", "callbacks.early_stopping.min_delta=nan"],
                                     "callbacks.early_stopping.min_delta=nan is invalid: it must be a finite number."),
    # OneCycle set the momentum to 0.85-0.95 at every step, and the HParams row said 0.
    "momentum onecycle replaces": (["model.optimizer.name=sgd", "++model.optimizer.momentum=0", "++model.optimizer.nesterov=false"],
                                   "model.optimizer.momentum=0 has no effect with model.scheduler.name=onecycle"),
    # Lightning looked for val/acc after the first epoch's training and failed before last.ckpt was saved.
    "early stopping without validation": (["callbacks=[default,early_stopping]", "++trainer.limit_val_batches=0"],
                                          "callbacks.early_stopping stops on val/acc, but trainer.limit_val_batches=0 "
                                          "turns validation off, so there is none to watch."),
    "early stopping threshold as text": (["callbacks=[default,early_stopping]", "+callbacks.early_stopping.stopping_threshold=x"],
                                         "callbacks.early_stopping.stopping_threshold=x is invalid: it must be a finite number, or null"),
    # Replaced by the logger and callbacks groups' objects without a word (TensorBoard wrote its events all the same).
    "trainer logger": (["++trainer.logger=false"], "trainer.logger is not a setting here: the logger group chooses them. "
                                                   "Use logger=[] for none, or logger=csv."),
    "trainer callbacks": (["++trainer.callbacks=[]"], "trainer.callbacks is not a setting here: the callbacks group"),
    "gradient clipping nan": (["++trainer.gradient_clip_val=nan"], "trainer.gradient_clip_val=nan is invalid: it must be "
                              "a finite number > 0, or 0 or null for no clipping."),
    # Lightning took it as no clipping without a word.
    "gradient clipping negative": (["++trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val=-1 is invalid"),
    "unknown optimizer": (["model.optimizer.name=rmsprop"], "model.optimizer.name=rmsprop is unknown: choose one of adam, adamw, sgd"),
    "unknown scheduler": (["model.scheduler.name=step"], "model.scheduler.name=step is unknown: choose one of none, onecycle, cosine"),
    "batch size zero": (["data.batch_size=0"], "data.batch_size=0 is invalid"),
    "val size negative": (["data.val_size=-5"], "data.val_size=-5 is invalid"),
    "val size >= train size": (["data.val_size=400"], "data.val_size=400 is invalid: the train file has only 400 images"),
    "one training image left": (["data.val_size=399"], "data.val_size=399 is invalid: the train file has only 400 images "
                                                       "and training needs at least 2"),
    "batch size not whole": (["data.batch_size=32.0"], "data.batch_size=32.0 is invalid: it must be a positive integer"),
    "val size true": (["data.val_size=true"], "data.val_size=true is invalid: it must be an integer >= 1"),
    "seed text": (["seed=abc"], "seed=abc is invalid: it must be an integer from 0 to 2**32-1, or null"),
    "seed too big": (["seed=4294967296"], "seed=4294967296 is invalid: it must be an integer from 0 to 2**32-1"),
    "seed negative": (["seed=-1"], "seed=-1 is invalid: it must be an integer from 0 to 2**32-1"),
    "shuffle seed negative": (["data.shuffle_seed=-1"], "data.shuffle_seed=-1 is invalid: it must be an integer >= 0"),
    "switch as text": (["model.batch_norm=off"], "model.batch_norm=off is invalid: it must be true or false"),
    "train as text": (["train=no"], "train=no is invalid: it must be true or false"),
    # Values are shown as an override writes them, so that the message can be typed back: null, not None.
    "learning rate null": (["model.optimizer.lr=null"], "model.optimizer.lr=null is invalid: it must be a finite number"),
    "download null": (["data.download=null"], "data.download=null is invalid: it must be true or false"),
    "degrees as quoted text": (["data.augment.degrees='15'"], "data.augment.degrees='15' is invalid: it must be a finite number"),
    "degrees nan": (["data.augment.degrees=nan"], "data.augment.degrees=nan is invalid: it must be a finite number"),
    "batch of one with batch norm": (["data.batch_size=1"], "data.batch_size=1 cannot train with batch norm"),
    "batch size true with batch norm": (["data.batch_size=true"], "data.batch_size=true is invalid: it must be a positive integer"),
    "model setting typo": (["+model.dropuot=0.1"], "model.dropuot is not a setting of model (src.models.mlp.MLP), a typo? "
                                                   "Its settings are: optimizer, scheduler, hidden_sizes, dropout"),
    "data setting typo": (["++data.batchsize=3"], "data.batchsize is not a setting of data"),
    "callback setting typo": (["+callbacks.model_checkpoint.monitr=val/loss"],
                              "callbacks.model_checkpoint.monitr is not a setting of callbacks.model_checkpoint"),
    "optimizer setting typo": (["+model.optimizer.weight_decy=0.1"], "model.optimizer.weight_decy is not a setting of model.optimizer"),
    "warm-up share": (["model.scheduler.pct_start=1.5"], "model.scheduler.pct_start=1.5 is invalid: it must be a number in (0, 1)"),
    "max_epochs zero": (["trainer.max_epochs=0"], "trainer.max_epochs=0 is invalid: it must be an integer >= 1"),
    "dropout 1.5": (["model.dropout=1.5"], "model.dropout=1.5 is invalid: it must be a number in [0, 1)"),
    "CNN setting out of range on an MLP": (["+model.conv_dropout=1.5"], "model.conv_dropout is not a setting of model "
                                                                         "(src.models.mlp.MLP), a typo?"),
    "label smoothing 1": (["model.label_smoothing=1.0"], "model.label_smoothing=1.0 is invalid: it must be a number in [0, 1)"),
    "no full batch": (["data.batch_size=1000", "data.drop_last=true"],
                      "data.batch_size=1000 with data.drop_last=true leaves no training batch: the training split has 320 images"),
    "layer width zero": (["model.hidden_sizes=[64,0]"], "model.hidden_sizes=[64, 0] is invalid: sizes and counts must be whole numbers >= 1"),
    "layer list as a number": (["model.hidden_sizes=64"], "model.hidden_sizes=64 is invalid: it must be a list, e.g. model.hidden_sizes=[64,128]"),
    "ema decay as text": (["callbacks=[default,ema]", "callbacks.ema.decay=abc"], "callbacks.ema.decay=abc is invalid"),
    "augmentation as a switch": (["data.augment=true"], "data.augment=true is invalid: it is a group of settings. "
                                                        "Switch augmentation with data.augment.enabled=true"),
    "no data folder": (["data.data_dir=null"], "data.data_dir=null is invalid: it must be a folder"),
    "no test batches": (["++trainer.limit_test_batches=0"], "trainer.limit_test_batches=0 would test on no images. "
                                                            "Use test=false to skip testing"),
    "no devices": (["trainer.devices=0"], "trainer: pytorch_lightning.Trainer refused these settings: `Trainer(devices=0)`"),
    "devices as text": (["trainer.devices=abc"], "trainer: pytorch_lightning.Trainer refused these settings: `devices`"),
    "accelerator needing a package": (["trainer.accelerator=tpu"], "trainer: pytorch_lightning.Trainer refused these settings"),
    "unknown trainer setting": (["+trainer.max_epoch=3"], "trainer.max_epoch is not a setting of trainer"),
    "validation interval beyond the epoch": (["+trainer.val_check_interval=500"],
                                             "trainer.val_check_interval=500 is more than the 10 training batches of an "
                                             "epoch, so validation would never run; nothing was trained. Use at most 10"),
    "validation every 0 batches": (["+trainer.val_check_interval=0"],
                                   "trainer.val_check_interval=0 is invalid: it must be a number of training batches >= 1"),
    "validation every 0 epochs": (["trainer.check_val_every_n_epoch=0"], "trainer.check_val_every_n_epoch=0 is invalid"),
    "accumulating 0 batches": (["++trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches=0 is invalid"),
    "log interval as text": (["trainer.log_every_n_steps=abc"], "trainer.log_every_n_steps=abc is invalid: it must be an integer >= 0"),
    "summary depth as text": (["callbacks.model_summary.max_depth=abc"], "callbacks.model_summary.max_depth=abc is invalid"),
    "logger setting typo": (["+logger.tensorboard.nme=x"], "logger.tensorboard.nme is not a setting of logger.tensorboard"),
    "logger setting typo, the logger by its module's name": (
        ["logger.tensorboard._target_=pytorch_lightning.loggers.tensorboard.TensorBoardLogger", "+logger.tensorboard.nme=x"],
        "logger.tensorboard.nme is not a setting of logger.tensorboard"),
    "sanity steps as text": (["++trainer.num_sanity_val_steps=abc"], "trainer.num_sanity_val_steps=abc is invalid: it must be an integer >= -1"),
    "batch limit as text": (["++trainer.limit_train_batches=abc"], "trainer.limit_train_batches=abc is invalid: it must be a whole number"),
    "batch fraction over 1": (["++trainer.limit_val_batches=1.5"], "trainer.limit_val_batches=1.5 is invalid: it must be a whole number"),
    "deterministic as text": (["trainer.deterministic=yes"], "trainer.deterministic=yes is invalid: it must be true, false or warn"),
    "deterministic as a number": (["trainer.deterministic=1"], "trainer.deterministic=1 is invalid: it must be true, false or warn"),
    "ema decay 1": (["callbacks=[default,ema]", "callbacks.ema.decay=1"], "callbacks.ema.decay=1 is invalid: it must be a number in (0, 1)"),
    "ema decay 0": (["callbacks=[default,ema]", "callbacks.ema.decay=0"], "callbacks.ema.decay=0 is invalid: it must be a number in (0, 1)"),
    "betas of three": (["+model.optimizer.betas=[0.9,0.99,0.5]"], "model.optimizer.betas=[0.9, 0.99, 0.5] is invalid"),
    "rotation past 180": (["data.augment.degrees=181"], "data.augment.degrees=181 is invalid"),
    # It trained into nan at once, then advised a lower learning rate, which could not help.
    "float16 weights with adam": (["trainer.precision=16-true"], "trainer.precision=16-true cannot train with "
                                  "model.optimizer.name=adam: its running averages underflow in float16"),
    "float16 weights with adamw": (["trainer.precision=16-true", "model.optimizer.name=adamw"], "trainer.precision=16-true "
                                   "cannot train with model.optimizer.name=adamw: its running averages underflow"),
    "tensorboard log_dir": (["+logger.tensorboard.log_dir=x"], "logger.tensorboard.log_dir is not a setting of logger.tensorboard"),
    "diverging lr": (
        ["model.batch_norm=false", "model.optimizer.name=sgd", "model.optimizer.lr=1e30", "model.scheduler.name=none"],
        "Training diverged at epoch 0",
    ),
}
DATA_CASES = {
    "missing": "MNIST files are missing",
    "truncated": "train-images-idx3-ubyte.gz: cannot read this file",
    "wrong magic": "t10k-labels-idx1-ubyte: not an IDX file (bad magic number 504b0304). It is not an MNIST file",
    "gzip under a plain name": "t10k-labels-idx1-ubyte: a gzip archive under a plain name. Rename it to t10k-labels-idx1-ubyte.gz",
    "plain under a gzip name": "t10k-images-idx3-ubyte.gz: an uncompressed IDX file under a .gz name. Rename it to "
                               "t10k-images-idx3-ubyte (it is read as it is).",
    "compressed twice": "t10k-images-idx3-ubyte.gz: compressed twice (a gzip archive inside the gzip archive). Decompress "
                        "it once: gunzip ",
    "counts disagree": "has 400 images but",
    "label out of range": "t10k-labels-idx1-ubyte.gz: labels must be digits 0-9, found 11",
    "a file as data_dir": "is a file; it must name a folder: the one that holds MNIST/raw/",
    "one train image": "The train file holds only 1 image: too few to validate on one and train on two. It is not the MNIST",
    "no test images": "t10k-images-idx3-ubyte.gz: holds no images. It is not the MNIST test file: download or copy it again.",
}
CHECKPOINT_CASES = {
    "missing": ("missing.ckpt", "no such file"),
    "truncated": ("truncated.ckpt", "cannot be read as a checkpoint"),
    "empty": ("empty.ckpt", "cannot be read as a checkpoint (not a torch file, or truncated or corrupt: EOFError)"),
    "text": ("text.ckpt", "cannot be read as a checkpoint (not a torch file, or truncated or corrupt"),
    "foreign": ("foreign.ckpt", "not a checkpoint of this project"),
    "damaged": ("damaged.ckpt", "is damaged: its part archive/data/"),
    "a folder without checkpoints": ("stopped_run", "a folder that holds no checkpoints (.ckpt files, in it or in its "
                                                    "checkpoints/). Name a checkpoint file"),
}


def expect_clean_failure(cfg, caplog, message: str, checkpoint: Path) -> None:
    before = checkpoint.read_bytes()
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exited:
        run_reporting_failures(train, cfg)
    assert exited.value.code == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and message in errors[0], errors
    # The good checkpoint is untouched, and the failed run saved none beside it (Lightning would not overwrite it, but
    # would add its own: a half-trained one, or a last.ckpt that a resume would take for the good state).
    assert checkpoint.read_bytes() == before
    assert [path.name for path in checkpoint.parent.iterdir()] == [checkpoint.name]


def prepared_run(tmp_path: Path, good_checkpoint: Path) -> tuple[Path, Path]:
    """A data dir to break and a run dir that already holds a good checkpoint (not a last.ckpt: a folder with one is
    refused as another run's)."""
    data_dir = write_synthetic_mnist(tmp_path / "data")
    checkpoint = tmp_path / "run" / "checkpoints" / "epoch003.ckpt"
    checkpoint.parent.mkdir(parents=True)
    shutil.copy(good_checkpoint, checkpoint)
    return data_dir, checkpoint


@pytest.mark.parametrize("value", [None, True, False, 3, 2.5, 1e-3, "adam", "cuda:1", "", "cuda 1", "true", "True",
                                   "NULL", "15", "~/data", "/données", "it's", "C:\\digits", [0.9, 0.999], (120, 84),
                                   ["a", None]])
def test_a_value_named_in_a_message_reads_back_as_the_same_value(value):
    """Messages write `key=value` as an override does, so that it can be typed back (True and None could not)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from src.utils.command_words import override_value

    (override,) = OverridesParser.create().parse_overrides([f"key={override_value(value)}"])
    assert override.value() == (list(value) if isinstance(value, tuple) else value)


@pytest.mark.parametrize("case", CONFIG_CASES)
def test_bad_config_values(tmp_path, caplog, good_checkpoint, case):
    overrides, message = CONFIG_CASES[case]
    data_dir, checkpoint = prepared_run(tmp_path, good_checkpoint)
    cfg = compose_config([*tiny_run_overrides(data_dir, tmp_path / "run"), "model=mlp", *overrides])
    expect_clean_failure(cfg, caplog, message, checkpoint)


@pytest.mark.parametrize("case", DATA_CASES)
def test_bad_data_files(tmp_path, caplog, good_checkpoint, case):
    data_dir, checkpoint = prepared_run(tmp_path, good_checkpoint)
    break_file(data_dir, case)
    cfg = compose_config([*tiny_run_overrides(data_dir, tmp_path / "run"), "model=mlp"])
    expect_clean_failure(cfg, caplog, DATA_CASES[case], checkpoint)


@pytest.mark.parametrize("case", CHECKPOINT_CASES)
def test_bad_checkpoint_paths(tmp_path, caplog, good_checkpoint, case):
    name, message = CHECKPOINT_CASES[case]
    data_dir, checkpoint = prepared_run(tmp_path, good_checkpoint)
    bad = tmp_path / name
    if case == "truncated":
        bad.write_bytes(good_checkpoint.read_bytes()[:4000])
    elif case == "empty":  # what a killed copy can leave
        bad.touch()
    elif case == "text":
        bad.write_text("hello\n")
    elif case == "a folder without checkpoints":
        (bad / "checkpoints").mkdir(parents=True)
    elif case == "damaged":  # bytes of a weight tensor zeroed: torch.load reads it, and the weights are wrong
        content = bytearray(good_checkpoint.read_bytes())
        content[len(content) // 2:len(content) // 2 + 1000] = bytes(1000)
        bad.write_bytes(content)
        assert torch.load(bad, weights_only=True)["model_class"]
    elif case == "foreign":  # a Lightning checkpoint of another project: weights and hyperparameters, no model_class
        torch.save({"state_dict": {"w": torch.zeros(2)}, "hyper_parameters": {"lr": 0.1}, "epoch": 0}, bad)
    cfg = compose_config([*tiny_run_overrides(data_dir, tmp_path / "run"), "model=mlp", f"ckpt_path={bad}"])
    expect_clean_failure(cfg, caplog, message, checkpoint)
    assert not (tmp_path / "run" / "config.yaml").exists()  # refused before the run folder is filled


@pytest.mark.parametrize("setting", ["seed=abc", "seed=-5", "++trainer.limit_test_batches=abc", "trainer.deterministic=yes"])
def test_evaluation_refuses_a_bad_setting_in_one_line_before_any_work(tmp_path, caplog, good_checkpoint, setting):
    cfg = compose_config([f"ckpt_path={good_checkpoint}", f"paths.output_dir={tmp_path / 'eval'}", setting], "eval")
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exited:
        run_reporting_failures(evaluate, cfg)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert exited.value.code == 1 and len(errors) == 1 and errors[0].startswith(f"{setting.lstrip('+')} is invalid"), errors
    assert not (tmp_path / "eval").exists()


def test_a_test_limit_of_zero_is_allowed_when_testing_is_off(tmp_path):
    """limit_test_batches=0 is refused only because it would test on nothing ("no test batches" above)."""
    from src.utils.trainer_setup import build_trainer

    trainer, _ = build_trainer(compose_config(["test=false", "++trainer.limit_test_batches=0", "trainer=cpu",
                                               f"paths.output_dir={tmp_path}"]))
    assert trainer.limit_test_batches == 0


def test_a_refused_training_setting_fails_before_importing_torch(tmp_path):
    """A mistyped value is refused in well under a second: before torch (seconds to import) and Lightning (more)."""
    script = f"""
import sys
from hydra import compose, initialize_config_dir
from src import CONFIG_DIR
from src.errors import UserInputError
from src.train import train

# The data's settings, and callbacks without the checkpoints, were refused only once Lightning was imported (14 s);
# the warning of epochs left unvalidated imported it before the settings after it were checked.
for words in (["seed=-1"], ["trainer.max_epochs=0"], ["model.batch_norm=maybe"], ["data.batch_size=1"],
              ["trainer.log_every_n_steps=-1"], ["ckpt_path=nope.ckpt"], ["data.batch_size=0"],
              ["data.augment.degrees=-1"], ["data.shuffle_seed=-1"], ["callbacks=early_stopping"],
              ["trainer.max_epochs=3", "trainer.check_val_every_n_epoch=2", "callbacks=early_stopping"]):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", [r"paths.output_dir={tmp_path}", *words])
    try:
        train(cfg)
    except UserInputError as refused:
        print("refused:", str(refused)[:40], "| torch imported:", "torch" in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("refused:") == 11 and "torch imported: True" not in result.stdout, result.stdout
    # A setting the model has, out of range: no need to import the model to tell it from a typo. (The command line
    # itself: composed without Hydra's record of the overrides, as above, a +setting could not be told apart.)
    for setting in ("model.dropout=1.5", "model.label_smoothing=2"):
        refused = run_module("src.train", setting, extra_env={"PYTHONPROFILEIMPORTTIME": "1"})  # lists every import
        assert refused.returncode == 1 and " is invalid: it must be a number in [0, 1)" in refused.stdout + refused.stderr
        assert not re.search(r"\|\s+torch$", refused.stderr, re.MULTILINE), refused.stdout[-2000:]
    typo = run_module("src.train", "model=mlp", "+model.conv_dropout=1.5")  # added with +: a typo is told as one
    assert typo.returncode == 1 and "model.conv_dropout is not a setting of model (src.models.mlp.MLP), a typo?" in (
        typo.stdout + typo.stderr)


def test_the_callbacks_told_apart_from_checkpoints_without_importing_them_are_not_checkpoints():
    from hydra.utils import get_class
    from pytorch_lightning.callbacks import ModelCheckpoint

    from src.utils.validate import NOT_CHECKPOINTS

    assert not [target for target in NOT_CHECKPOINTS if issubclass(get_class(target), ModelCheckpoint)]
    configured = {line.split("_target_:")[1].split()[0] for path in (PROJECT_ROOT / "conf" / "callbacks").glob("*.yaml")
                  for line in path.read_text().splitlines() if "_target_:" in line}
    assert configured - NOT_CHECKPOINTS == {"src.callbacks.checkpoint.RunFolderCheckpoint",
                                            "src.callbacks.safety.ResumableCheckpoint"}


def test_a_test_limit_that_leaves_no_batch_is_refused_before_training(tmp_path, synthetic_data_dir, caplog):
    """Lightning finds out only when testing starts, after the training (0.5 of the one test batch of 100 images)."""
    settings = [*tiny_run_overrides(synthetic_data_dir, tmp_path), "model=mlp", "data.eval_batch_size=100",
                "++trainer.limit_test_batches=0.5"]
    for extra, message in (([], "trainer.limit_test_batches=0.5 leaves no batch to test: the test set is 1 batch of up "
                                "to 100 images. Use at least 1, or a number of batches such as ++trainer.limit_test_batches=1."),
                           (["train=false"], "Testing could not start: You requested to check 0.5 of the `test_dataloader`")):
        caplog.clear()
        with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exited:
            run_reporting_failures(train, compose_config([*settings, *extra]))
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert exited.value.code == 1 and len(errors) == 1 and errors[0].startswith(message), errors
        assert not (tmp_path / "checkpoints").exists()  # nothing trained
    assert train(compose_config([*settings, "test=false"]))["status"] == "ok"  # nothing to test: nothing to refuse
    # The least fraction it names is enough: 0.333 of 3 batches is still none.
    three_batches = [*tiny_run_overrides(synthetic_data_dir, tmp_path / "three"), "model=mlp", "data.eval_batch_size=34"]
    with pytest.raises(UserInputError, match=r"the test set is 3 batches of up to 34 images\. Use at least 0\.334, "):
        train(compose_config([*three_batches, "++trainer.limit_test_batches=0.333"]))
    assert train(compose_config([*three_batches, "++trainer.limit_test_batches=0.334"]))["status"] == "ok"


def test_a_recipe_for_another_model_is_named_as_such(tmp_path, synthetic_data_dir):
    result = run_module("src.train", "experiment=fast", "model=mlp", f"data.data_dir={synthetic_data_dir}",
                        "data.download=false", f"hydra.run.dir={tmp_path}", timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in output
    assert ("model.channels is not a setting of model (src.models.mlp.MLP): experiment=fast sets it, a recipe for "
            "model=cnn. Leave out the model override, or the experiment.") in output


@pytest.mark.parametrize("spelling", ["hydra.job.chdir=true", "++hydra.job.chdir=on", "hydra.job.chdir=1"])
def test_changing_the_working_directory_is_refused(tmp_path, spelling):
    result = run_module("src.train", spelling, f"hydra.run.dir={tmp_path / 'run'}", timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == ("hydra.job.chdir=true is not supported: every run already writes all its files "
                                     "into its own folder (hydra.run.dir), whatever the working directory. Leave it out.")
    assert not (tmp_path / "run").exists()


def test_changing_the_working_directory_in_a_config_of_ones_own_is_refused(tmp_path):
    """A config that extends this project's (-cd/-cn) gets past the command line's check: the run refuses it."""
    (tmp_path / "mine.yaml").write_text("defaults:\n  - train\n  - _self_\nhydra:\n  job:\n    chdir: true\n")
    result = run_module("src.train", "-cd", str(tmp_path), "-cn", "mine", f"hydra.run.dir={tmp_path / 'run'}", timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in output, output[-2000:]
    assert "hydra.job.chdir=true is not supported" in output and not (tmp_path / "run" / "checkpoints").exists()


def test_the_commands_a_run_prints_repeat_the_config_of_ones_own_it_used(tmp_path, synthetic_data_dir):
    """A resume without -cd/-cn would rebuild the project's default model, and be refused with the same advice."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "mine.yaml").write_text("defaults:\n  - train\n  - override model: mlp\n  - _self_\n")
    data = [f"data.data_dir={synthetic_data_dir}", "data.download=false", "data.val_size=80", "trainer.max_epochs=1"]
    trained = run_module("src.train", "-cd", str(tmp_path / "conf"), "-cn", "mine", *data, f"hydra.run.dir={tmp_path / 'run'}")
    assert trained.returncode == 0, trained.stderr[-2000:]
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    flags = [f"--config-dir={tmp_path / 'conf'}", "--config-name=mine"]
    assert torch.load(last, weights_only=True)["command_overrides"][:2] == flags
    refused = run_module("src.train", *data, f"ckpt_path={last}")
    assert refused.returncode == 1 and f"repeat the overrides of the run that saved it: python -m src.train {' '.join(flags)} " \
        f"{' '.join(data)} ckpt_path={last}" in refused.stdout + refused.stderr
    assert run_module("src.train", *flags, *data, f"ckpt_path={last}").returncode == 0  # that command resumes
    # A ddp_spawn process saves the checkpoint without Hydra's state: the overrides come from the launching process.
    spawned = run_module("src.train", "-cd", str(tmp_path / "conf"), "-cn", "mine", *data, "trainer=ddp_cpu",
                         "++trainer.strategy=ddp_spawn", "callbacks.progress_bar=null", f"hydra.run.dir={tmp_path / 'spawn'}")
    assert spawned.returncode == 0, spawned.stderr[-2000:]
    recorded = torch.load(tmp_path / "spawn" / "checkpoints" / "last.ckpt", weights_only=True)["command_overrides"]
    assert recorded[:2] == flags and "++trainer.strategy=ddp_spawn" in recorded


def test_a_config_of_ones_own_that_hydra_would_pass_over_is_refused(tmp_path):
    """Hydra searches the project's conf/ before --config-dir: a model/mlp.yaml there trained the project's MLP, and a
    train.yaml the project's CNN, without a word."""
    from src.utils.command_line import overrides_problem

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "mlp.yaml").write_text("hidden_sizes: [64]\n")
    (tmp_path / "mine.yaml").write_text("defaults:\n  - train\n  - override model: mlp\n  - _self_\n")
    assert overrides_problem(["-cd", str(tmp_path), "-cn", "mine"], "train") == (
        f"{tmp_path}/model/mlp.yaml: the project's conf/model/mlp.yaml has the same name, and Hydra reads the project's "
        "configs first, so this file would be passed over without a word. Give it a name of its own: model/<name>.yaml, "
        "chosen with model=<name>.")
    (tmp_path / "model" / "mlp.yaml").rename(tmp_path / "model" / "narrow.yaml")
    assert overrides_problem([f"--config-dir={tmp_path}", "--config-name=mine"], "train") is None
    (tmp_path / "train.yaml").write_text("defaults:\n  - override model: mlp\n")
    assert overrides_problem(["-cd", str(tmp_path), "-cn", "train"], "train").endswith(
        "Give it a name of its own: --config-name <name>.")
    # A top-level file is read only as the run's config: one that is not (another project's) is no matter.
    assert overrides_problem(["-cd", str(tmp_path), "-cn", "mine"], "train") is None
    # The project's own folder holds the same files as itself.
    assert overrides_problem(["-cd", os.path.relpath(CONFIG_DIR), "experiment=fast"], "train") is None


def test_a_search_path_folder_is_a_config_folder_of_ones_own(tmp_path):
    """hydra.searchpath=[file://<folder>] (lightning-hydra-template's way) adds a folder as --config-dir does: its
    groups of its own were refused as unknown settings, and a file named as one of the project's was passed over."""
    from src.utils.command_line import overrides_problem

    (tmp_path / "extra").mkdir()
    (tmp_path / "extra" / "two.yaml").write_text("# @package _global_\ntrainer:\n  max_epochs: 2\n")
    search = f"hydra.searchpath=[pkg://elsewhere,file://{tmp_path}]"
    assert overrides_problem([search, "+extra=two"], "train") is None
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "mlp.yaml").write_text("hidden_sizes: [64]\n")
    assert overrides_problem([search, "model=mlp"], "train").startswith(
        f"{tmp_path}/model/mlp.yaml: the project's conf/model/mlp.yaml has the same name")


@pytest.mark.parametrize("flags, entry_point, based_on", [
    (["--config-name", "eval"], "train", "eval"),  # a traceback: Key 'model' is not in struct
    (["-cn", "predict"], "eval", "predict"),
    (["-cd", "{conf}", "-cn", "mine"], "eval", "train"),  # resumed into the training run's folder, then refused
    (["--config-dir={conf}", "--config-name=mine_eval"], "train", "eval"),
])
def test_a_config_made_for_another_command_is_refused_in_one_line(tmp_path, flags, entry_point, based_on):
    (tmp_path / "mine.yaml").write_text("defaults:\n  - train\n  - _self_\n")
    (tmp_path / "mine_eval.yaml").write_text("defaults:\n  - eval\n  - _self_\n")
    flags = [flag.format(conf=tmp_path) for flag in flags]
    result = run_module(f"src.{entry_point}", *flags, "ckpt_path=x.ckpt", f"hydra.run.dir={tmp_path / 'run'}", timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert f"is a config for src.{based_on}" in result.stderr and f"src.{entry_point} needs its own, {entry_point}, " \
        f"or a config that extends it (defaults: [{entry_point}, _self_])." in result.stderr
    assert not (tmp_path / "run").exists()


def test_an_empty_run_folder_is_refused_before_hydra_writes_into_the_current_folder(tmp_path):
    result = subprocess.run([sys.executable, "-m", "src.train", "hydra.run.dir=", "trainer.max_epochs=1"], cwd=tmp_path,
                            env={key: value for key, value in os.environ.items() if key != "HYDRA_FULL_ERROR"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and result.stderr.startswith("hydra.run.dir= is empty: it must be a folder")
    assert list(tmp_path.iterdir()) == []


def test_a_setting_that_cannot_be_resolved_is_one_line_naming_it(tmp_path):
    """`${oc.env:NAME}` with NAME unset: a run folder's ended in a hundred lines (a failed callback's warning, Hydra's
    failed exception formatting, a traceback), any other setting's in Hydra's traceback, with a dated folder left."""
    unset = ("cannot be resolved: the environment variable MNIST_UNSET_VARIABLE is not set: set it, or give a default: "
             "${oc.env:MNIST_UNSET_VARIABLE,<default>}.")
    for words, expected in (([f"paths.log_dir={tmp_path}/" "${oc.env:MNIST_UNSET_VARIABLE}"], f"hydra.run.dir {unset}"),
                            (["-m", "seed=1,2", "hydra.sweep.dir=${oc.env:MNIST_UNSET_VARIABLE}"], f"hydra.sweep.dir {unset}"),
                            ([f"paths.log_dir={tmp_path}", "data.data_dir=${oc.env:MNIST_UNSET_VARIABLE}"],
                             f"data.data_dir {unset}"),
                            ([f"paths.log_dir={tmp_path}", "data.data_dir=${paths.data_dri}"],
                             "data.data_dir cannot be resolved: Interpolation key 'paths.data_dri' not found.")):
        result = run_module("src.train", *words, timeout=120)
        output = result.stdout + result.stderr
        assert result.returncode == 1 and output.strip().splitlines()[-1].endswith(expected), output[-2000:]
        assert "Traceback" not in output and "UserWarning" not in output
    assert list(tmp_path.iterdir()) == []  # the refused runs' dated folders are gone


def test_a_stop_without_a_checkpoint_callback_says_nothing_was_saved():
    from src.utils.interruptions import _stopped

    assert _stopped("SIGTERM", "at epoch 2, step 40", None, saving=False) == (
        "Training stopped by SIGTERM at epoch 2, step 40. Nothing was saved: the run has no checkpoint callback that "
        "saves at a stop (callbacks.last_checkpoint).")


def test_a_run_folder_that_cannot_be_made_is_one_line_before_any_work(tmp_path):
    """Hydra made it first, and a file in the way or a read-only place ended in a traceback of three exceptions."""
    in_the_way = tmp_path / "a_file"
    in_the_way.write_text("")
    for words, setting in ((["model=mlp"], "hydra.run.dir"), (["-m", "seed=1,2"], "hydra.sweep.dir")):
        result = run_module("src.train", *words, f"paths.log_dir={in_the_way}/runs")
        assert result.returncode == 1 and result.stderr.startswith(
            f"Cannot make the folder {in_the_way}/runs/"), result.stderr[-2000:]
        assert f": {in_the_way} is a file, not a folder. Give a folder you can write to: paths.log_dir=<folder> " \
               f"(where dated run folders are made) or {setting}=<folder>.\n" in result.stderr
        assert "Traceback" not in result.stderr
    from src import api

    with pytest.raises(UserInputError, match=rf"^Cannot make the folder {in_the_way}/run: {in_the_way} is a file"):
        api.evaluate("ckpt_path=x.ckpt", f"hydra.run.dir={in_the_way}/run")
    with pytest.raises(UserInputError, match=rf"^Cannot make the folder {in_the_way}: {in_the_way} is a file"):
        api.evaluate("ckpt_path=x.ckpt", f"hydra.run.dir={in_the_way}")  # the folder itself a file
    swept = run_module("src.train", "-m", "seed=1,2", f"hydra.sweep.dir={in_the_way}/sweep")  # paths.log_dir as it is
    assert swept.returncode == 1 and swept.stderr.startswith(f"Cannot make the folder {in_the_way}/sweep: ")
    assert in_the_way.read_text() == ""


@pytest.mark.parametrize("module, words, expected", [
    ("src.eval", ["runs/a/last.ckpt"], "'runs/a/last.ckpt' has no key: settings are key=value, such as ckpt_path=runs/a/last.ckpt."),
    ("src.train", ["runs/a/last.ckpt"], "'runs/a/last.ckpt' has no key: settings are key=value, such as ckpt_path=runs/a/last.ckpt."),
    ("src.eval", ["runs/a/best"], "'runs/a/best' has no key: settings are key=value, such as ckpt_path=runs/a/best."),
    ("src.predict", ["ckpt_path=a.ckpt", "scans:2/seven.png"], "'scans:2/seven.png' has no key: settings are key=value, "
                                                                 "such as inputs=scans:2/seven.png."),
    ("src.train", ["-c", "job", "-m", "seed=1,2"], "--cfg shows the config of one run and cannot be combined with -m: "
                                                   "leave out -m and give one value per setting to see that job's config."),
    ("src.predict", ["ckpt_path=a.ckpt", "zero.jpg"], "'zero.jpg' has no key: settings are key=value, such as inputs=zero.jpg."),
    ("src.train", ["model=cnn", "mlp"], "'mlp' has no key: settings are key=value, such as model=mlp or trainer.max_epochs=3."),
])
def test_a_word_without_a_key_says_how_to_write_it(tmp_path, module, words, expected):
    """Hydra's grammar error ("extraneous input '/' expecting {EQUAL, ...}") names no fix."""
    result = run_module(module, *words, f"hydra.run.dir={tmp_path / 'run'}", timeout=60)
    assert result.returncode == 1 and result.stderr.strip() == expected
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("module, words, expected", [
    ("src.train", ["+modle=mlp"], "+modle=mlp: `modle` is not a setting of src.train (a typo?), so nothing would read "
     "it. Its settings: ckpt_path, seed, task_name, test, train; its config groups: callbacks, data, experiment, "
     "logger, model, paths, sweep, trainer (python -m src.train --help)."),
    ("src.train", ["modle=mlp"], "modle=mlp: `modle` is not a setting of src.train (a typo?)"),
    ("src.train", ["++sed=3"], "++sed=3: `sed` is not a setting of src.train (a typo?)"),
    ("src.eval", ["ckpt_path=a.ckpt", "+model=cnn"], "+model=cnn: `model` is not a setting of src.eval, so nothing would "
     "read it. The network and its settings come from the checkpoint. Its settings: ckpt_path, seed, task_name;"),
    ("src.predict", ["ckpt_path=a.ckpt", "inputs=x.png", "+outptu=x.json"], "+outptu=x.json: `outptu` is not a "
     "setting of src.predict (a typo?), so nothing would read it. Its settings: ckpt_path, inputs, output, "
     "save_preview, task_name, top_k; its config groups: paths"),
])
def test_a_setting_the_entry_point_does_not_have_is_refused_not_ignored(tmp_path, module, words, expected):
    """Hydra suggests `+modle=mlp` for a mistyped `modle=mlp`, and then adds it to the config, where nothing reads it:
    the run trained the default model and exited 0."""
    result = run_module(module, *words, f"hydra.run.dir={tmp_path / 'run'}", timeout=60)
    assert result.returncode == 1 and result.stderr.strip().startswith(expected), result.stderr[-2000:]
    assert not (tmp_path / "run").exists()


def test_settings_and_groups_of_a_config_of_ones_own_are_not_checked_against_the_projects():
    from src.utils.command_line import overrides_problem

    assert overrides_problem(["-cd", "mine", "-cn", "mine", "+notes=first try", "+mygroup=a"], "train") is None
    assert overrides_problem(["--config-dir=mine", "--config-name=mine", "notes=first try"], "train") is None
    assert overrides_problem(["hydra/launcher=joblib", "+hydra.job.env_set.X=1", "experiment=fast", "sweep=seeds",
                              "+callbacks.x._target_=y", "paths.log_dir=/tmp"], "train") is None


def test_hydra_flags_and_deletions_are_not_taken_for_words_without_a_key():
    from src.utils.command_line import words_without_a_key

    assert words_without_a_key(["--cfg", "job", "-cn", "eval", "~logger", "-m", "model=mlp,cnn", "--info", "config"]) == []


@pytest.mark.parametrize("words, entry_point, message", [
    (["~seed"], "train", "~seed would delete `seed`, which every train run reads: set it instead (seed=null for an unseeded run)."),
    (["~seed=42"], "eval", "~seed=42 would delete `seed`, which every eval run reads"),
    (["~top_k"], "predict", "~top_k would delete `top_k`, which every predict run reads: set it instead (top_k=<value>)."),
    (["++task_name=my/run"], "train", "task_name=my/run is invalid: the task name names the run's log file"),
    (["task_name=''"], "train", "task_name='' is invalid: the task name names the run's log file (<task_name>.log), so "
                                "it cannot be empty or null or hold '/'."),
    (["task_name=null"], "eval", "task_name=null is invalid: the task name names the run's log file"),  # None.log
    (["task_name=NULL"], "train", "task_name=NULL is invalid: the task name names the run's log file"),  # as Hydra reads
    (["trainer.max_epochs", "=", "3"], "train", "'trainer.max_epochs = 3': a setting is one word, without spaces "
                                                "around '=': trainer.max_epochs=3."),
    (["top_k=", "3"], "predict", "'top_k= 3': a setting is one word, without spaces around '=': top_k=3."),
    (["model.optimizer.lr", "=0.01"], "train", "'model.optimizer.lr =0.01': a setting is one word, without spaces "
                                               "around '=': model.optimizer.lr=0.01."),
    (["model.optimizer.lr:0.01"], "train", "'model.optimizer.lr:0.01' has no key: settings are key=value, such as "
                                           "model.optimizer.lr=0.01."),
    # An empty path (an unset shell variable) before another word: told as such, not joined to it.
    (["hydra.run.dir=", "~callbacks.figures"], "train", "hydra.run.dir= is empty: it must be a folder"),
    (["ckpt_path=", "photo.png"], "predict", "'photo.png' has no key: settings are key=value, such as inputs=photo.png."),
    (["best:epoch3.ckpt"], "eval", "'best:epoch3.ckpt' has no key: settings are key=value, such as ckpt_path=best:epoch3.ckpt."),
    (["-m", "ckpt_path=a.ckpt,b.ckpt", "inputs=x.png"], "predict", "src.predict does not sweep: it classifies with one checkpoint"),
    (["hydra.mode=MULTIRUN", "inputs=x.png"], "predict", "src.predict does not sweep"),
    (["hydra.mode='MULTIRUN'", "inputs=x.png"], "predict", "src.predict does not sweep"),
    (["-m", "model.dropout=interval(0.1,0.5)"], "train", "model.dropout=interval(0.1,0.5) is a continuous range, which "
     "only an optimizing sweeper (such as Optuna's) can sample; Hydra's basic sweeper, used here, runs the values "
     "listed: model.dropout=<value>,<value>,..."),
    (["-m", "+x=tag(log, interval(1, 2))"], "train", "+x=tag(log, interval(1, 2)) is a continuous range"),
    (["sweep=seeds", "model.dropout=interval(0.1,0.5)"], "train", "model.dropout=interval(0.1,0.5) is a continuous range"),
    # An unset shell variable: the run would write into the current folder (hydra.run.dir), or into / (paths.log_dir).
    (["hydra.run.dir="], "train", "hydra.run.dir= is empty: it must be a folder (an unset shell variable?). Give one, "
     "or leave the setting out for its default."),
    (["paths.log_dir=''"], "eval", "paths.log_dir='' is empty: it must be a folder"),
    (["-m", "hydra.sweep.dir="], "train", "hydra.sweep.dir= is empty"),
    # Read as no checkpoint, it trained from scratch, and Lightning then failed on it after the set-up (or train=false
    # tested an untrained model and exited 0).
    (["ckpt_path="], "train", "ckpt_path= is empty (an unset shell variable?): give a checkpoint to resume from (or "
     "last), or leave it out to train from scratch."),
    (["ckpt_path=''", "~logger"], "eval", "ckpt_path='' is empty (an unset shell variable?): give a checkpoint file"),
    (["+logger.tensorboard.save_dir="], "train", "+logger.tensorboard.save_dir= is empty"),
    # Hydra's traceback ("Config group override must be a string or a list. Got NoneType"), or the run's.
    (["model=null"], "train", "model=null would leave out the model config, which every train run needs: choose one of "
     "cnn, mlp."),
    (["~trainer"], "eval", "~trainer would leave out the trainer config, which every eval run needs: choose one of cpu,"),
    (["experiment=null"], "train", "experiment=null: Hydra cannot set a config group to null on the command line. No "
     "experiment is the default, so leave it out (~experiment drops one that a config of one's own chooses)."),
    (["+experiment=fast"], "train", "+experiment=fast: experiment is a config group the run has already, so an option "
     "of it is chosen without `+`: experiment=fast."),
    (["++model=mlp"], "train", "++model=mlp: model is a config group the run has already"),
    (["model=NULL"], "train", "model=NULL would leave out the model config"),  # Hydra reads null in any case
    (["--cfg", "job", "-m", "model=mlp,cnn"], "train", "--cfg shows the config of one run and cannot be combined with -m"),
])
def test_words_that_would_crash_a_run_are_refused_in_one_line(words, entry_point, message):
    """Each of these ended in a traceback (a deleted setting the run reads, a log file in a missing folder) or, for a
    predict sweep, in a summary saying that every job had failed."""
    from src.utils.command_line import overrides_problem

    assert overrides_problem(words, entry_point).startswith(message)
    assert overrides_problem(["~logger", "~callbacks.lr_monitor", "task_name=mine", "-m", "seed=1,2"], "train") is None
    assert overrides_problem(["~experiment", "~sweep", "logger=null", "callbacks=null", "seed=", "model=mlp",
                              "+model.dropout=0.1", "--cfg", "job"], "train") is None
    # An empty value (a script's seed=$SEED, unset) before a flag or a deletion is one word of its own.
    assert overrides_problem(["seed=", "-m", "model=mlp,cnn"], "train") is None
    assert overrides_problem(["seed=", "~logger", "~callbacks.lr_monitor"], "train") is None
    assert overrides_problem(["hydra.mode=MULTIRUN", "--cfg", "job"], "train") is None  # shows the sweep's config
    # An optimizing sweeper chosen on the command line samples it; a single run is refused by Hydra in one line.
    assert overrides_problem(["-m", "hydra/sweeper=optuna", "model.dropout=interval(0.1,0.5)"], "train") is None


def test_a_new_run_in_a_folder_that_holds_one_is_refused_and_changes_nothing(tmp_path, synthetic_data_dir):
    """A fixed hydra.run.dir run again: the first run's results, last.ckpt and Hydra's record must survive."""
    run_dir = tmp_path / "run"
    common = [*tiny_run_overrides(synthetic_data_dir, run_dir), "model=mlp", f"hydra.run.dir={run_dir}"]
    assert run_module("src.train", *common).returncode == 0
    last = run_dir / "checkpoints" / "last.ckpt"
    kept = [run_dir / "metrics.json", last, run_dir / ".hydra" / "overrides.yaml", run_dir / "config.yaml"]
    before = [path.read_bytes() for path in kept]
    for entry_point, extra, advice in (("src.train", ["model.dropout=0.5"], f"; to continue that run instead, add ckpt_path={last}."),
                                       ("src.eval", [f"ckpt_path={last}"], ": each run then gets a new dated folder.")):
        again = run_module(entry_point, *tiny_run_overrides(synthetic_data_dir, run_dir), f"hydra.run.dir={run_dir}", *extra)
        output = again.stdout + again.stderr
        assert again.returncode == 1 and "Traceback" not in output, output[-2000:]
        assert (f"{run_dir} holds a run already (metrics.json, checkpoints/last.ckpt), which this one would overwrite. "
                "Choose another hydra.run.dir, or leave it out") in output and advice in output
    assert [path.read_bytes() for path in kept] == before


def _claim(folder: Path) -> Path:
    from src.utils.run_folders import new_folder

    return new_folder(folder)


def test_runs_starting_in_the_same_second_each_get_a_folder_of_their_own(tmp_path, synthetic_data_dir):
    """Runs started together in the background (a loop over seeds) all name their folder after the same second."""
    from concurrent.futures import ProcessPoolExecutor

    dated = tmp_path / "outputs" / "2026-12-02" / "16-29-43"
    with ProcessPoolExecutor(max_workers=6) as pool:
        claimed = list(pool.map(_claim, [dated] * 12))
    assert sorted(claimed) == sorted([dated, *(dated.with_name(f"16-29-43-{n}") for n in range(2, 13))])

    # On the command line: a dated folder already made (even empty, as a run starting an instant earlier leaves it)
    # for this second and the next ones is not taken over. Made for every second the command may name its folder in,
    # up to its timeout: a loaded machine can take longer than a few seconds to start Python and Hydra.
    log_dir, timeout = tmp_path / "runs", 300
    now = datetime.now()
    taken = [log_dir / f"{now + timedelta(seconds=s):%Y-%m-%d/%H-%M-%S}" for s in range(timeout + 60)]
    for folder in taken:
        folder.mkdir(parents=True)
    overrides = [o for o in tiny_run_overrides(synthetic_data_dir, tmp_path) if not o.startswith("paths.output_dir")]
    result = run_module("src.train", *overrides, "model=mlp", f"paths.log_dir={log_dir}", timeout=timeout)
    assert result.returncode == 0, result.stderr[-2000:]
    [run_dir] = [folder for folder in log_dir.glob("*/*") if folder not in taken]
    assert run_dir.name.endswith("-2") and (run_dir / "metrics.json").is_file()
    assert not any(any(folder.iterdir()) for folder in taken)


def test_a_refused_command_leaves_no_run_folder_behind(tmp_path, synthetic_data_dir):
    """A mistyped value would otherwise leave a dated folder holding only Hydra's record and the refusal's log."""
    log_dir = tmp_path / "outputs"  # new, so it goes too
    tiny = [o for o in tiny_run_overrides(synthetic_data_dir, tmp_path) if not o.startswith("paths.output_dir")]
    for entry_point, words, message in (
        ("src.train", ["model.optimizer.lr=-1"], "model.optimizer.lr=-1 is invalid"),
        # Once the data is read, when the TensorBoard logger has opened its file (with nothing in it).
        ("src.train", [*tiny, "data.val_size=100000"], "data.val_size=100000"),
        ("src.eval", ["ckpt_path=missing.ckpt"], "ckpt_path=missing.ckpt: no such file"),
        ("src.predict", ["ckpt_path=missing.ckpt", f"inputs={tmp_path}"], "this folder holds no image files"),
    ):
        result = run_module(entry_point, *words, f"paths.log_dir={log_dir}", timeout=120)
        assert result.returncode == 1 and message in result.stdout + result.stderr, result.stderr[-2000:]
        assert not log_dir.exists(), sorted(log_dir.rglob("*"))
    # Its TensorBoard subfolder in a folder shared by many runs goes too; another run's there stays.
    shared, kept = tmp_path / "shared", tmp_path / "shared" / "tensorboard" / "2026-01-01" / "00-00-00" / "events.out"
    kept.parent.mkdir(parents=True)
    kept.write_text("another run's")
    result = run_module("src.train", *tiny, "data.val_size=100000", f"paths.log_dir={log_dir}",
                        f"logger.tensorboard.save_dir={shared}", timeout=120)
    assert result.returncode == 1 and not log_dir.exists(), result.stderr[-2000:]
    assert sorted(shared.rglob("*")) == [*kept.parents[:3][::-1], kept]
    from src import api  # the same from Python

    with pytest.raises(UserInputError, match="data.val_size=100000"):
        api.train(*tiny, "data.val_size=100000", f"paths.log_dir={log_dir}", f"logger.tensorboard.save_dir={shared}")
    assert sorted(shared.rglob("*")) == [*kept.parents[:3][::-1], kept] and not log_dir.exists()
    new_shared = tmp_path / "new_shared"  # the first run there: the logger's folder in it goes too
    with pytest.raises(UserInputError, match="data.val_size=100000"):
        api.train(*tiny, "data.val_size=100000", f"paths.log_dir={log_dir}", f"logger.tensorboard.save_dir={new_shared}")
    assert new_shared.is_dir() and not any(new_shared.iterdir())  # save_dir itself stays: one's own folder

    # Hydra's record kept under another name, or not at all.
    for record in ("meta/records", "null"):
        result = run_module("src.train", "model.optimizer.lr=-1", f"hydra.output_subdir={record}", f"paths.log_dir={log_dir}",
                            timeout=120)
        assert result.returncode == 1 and not log_dir.exists(), sorted(log_dir.rglob("*"))
    # A folder named with hydra.run.dir stays, with the refusal in its log.
    named = tmp_path / "named"
    result = run_module("src.train", "model.optimizer.lr=-1", f"hydra.run.dir={named}", timeout=120)
    assert result.returncode == 1 and "model.optimizer.lr=-1 is invalid" in (named / "train.log").read_text()


def test_only_a_new_folder_holding_nothing_but_records_is_discarded(tmp_path):
    from src.utils.run_folders import discard_unused_folder, new_folder

    made = [new_folder(tmp_path / "log" / "day" / f"run{n}") for n in range(3)]
    (made[0] / ".hydra").mkdir()
    (made[0] / ".hydra" / "overrides.yaml").write_text("[]")
    (made[0] / "train.log").write_text("refused")
    (made[0] / "config.yaml").write_text("seed: 1")
    (made[1] / "checkpoints").mkdir()
    (made[1] / "checkpoints" / "last.ckpt").write_bytes(b"state")
    (made[2] / "empty").mkdir()
    events = made[2] / "tensorboard" / "events.out.tfevents.1.host.1.0"
    events.parent.mkdir()
    record = b"\x18" + bytes(7) + b"crc." + b"file_version: brain.Event:2".ljust(24, b" ")[:24] + b"crc."
    events.write_bytes(record + record)  # the version record and one more: something was logged
    elsewhere = tmp_path / "log" / "mine"
    elsewhere.mkdir()
    assert discard_unused_folder(made[0], ".hydra") and not made[0].exists()
    assert not discard_unused_folder(made[1], ".hydra") and (made[1] / "checkpoints" / "last.ckpt").is_file()
    assert not discard_unused_folder(made[2], ".hydra") and events.is_file()
    events.write_bytes(record)  # the version record alone
    shutil.rmtree(made[1])
    assert not discard_unused_folder(elsewhere, ".hydra") and elsewhere.is_dir()  # not made by this process
    assert discard_unused_folder(made[2], ".hydra")  # empty folders are nothing
    # The day folder, made for these runs, went with the last of them; log/ holds a folder of someone else's.
    assert not (tmp_path / "log" / "day").exists() and elsewhere.is_dir()


@pytest.mark.parametrize("entry_point", ["src.train", "src.predict"])
def test_an_output_folder_apart_from_the_run_folder_is_refused(tmp_path, entry_point):
    """It would split a run: Hydra's records and the log in hydra.run.dir, checkpoints and results elsewhere."""
    result = run_module(entry_point, f"paths.output_dir={tmp_path / 'elsewhere'}", f"hydra.run.dir={tmp_path / 'run'}",
                        timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in output
    assert (f"paths.output_dir={tmp_path / 'elsewhere'} is not this run's folder ({tmp_path / 'run'}), the one Hydra "
            "makes for it: set hydra.run.dir=<folder> instead (hydra.sweep.dir=<folder> for a -m sweep).") in output
    assert not (tmp_path / "elsewhere").exists()


def test_a_config_copied_from_a_run_cannot_write_into_that_run(tmp_path):
    """A run's config.yaml used as a config of one's own records that run's folders as written-out paths: the new
    run would replace its last.ckpt and figures and mix its TensorBoard run with its own."""
    earlier = tmp_path / "earlier"
    (earlier / ".hydra").mkdir(parents=True)
    (earlier / "checkpoints").mkdir()
    result = run_module("src.train", f"hydra.run.dir={tmp_path / 'run'}",
                        f"callbacks.model_checkpoint.dirpath={earlier / 'checkpoints'}", timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in output
    assert (f"callbacks.model_checkpoint.dirpath={earlier / 'checkpoints'} lies in another run's folder ({earlier}), "
            "which this run would overwrite. A config.yaml copied from a run records that run's folders: re-run it with "
            "--config-dir=<run>/.hydra --config-name=config +hydra=default instead") in output
    assert sorted(earlier.rglob("*")) == [earlier / ".hydra", earlier / "checkpoints"]
    # The copied config's own folder, as paths.output_dir: named as another run's, not as a folder to set instead.
    result = run_module("src.train", f"hydra.run.dir={tmp_path / 'run'}", f"paths.output_dir={earlier}", timeout=120)
    assert result.returncode == 1
    assert f"paths.output_dir={earlier} lies in another run's folder ({earlier})" in result.stdout + result.stderr


def test_output_folders_apart_from_any_run_are_taken(tmp_path):
    """A TensorBoard folder shared by many runs, say."""
    from src.utils.output_folders import writes_into_another_run

    shared = tmp_path / "all_tensorboard"
    cfg = compose_config([f"paths.output_dir={tmp_path / 'run'}", f"logger.tensorboard.save_dir={shared}"])
    assert writes_into_another_run(cfg, tmp_path / "run") is None
    # Checkpoints on a scratch disk, resumed from there (a SLURM requeue): that folder is not another run's.
    scratch = tmp_path / "scratch" / "run" / "checkpoints"
    scratch.mkdir(parents=True)
    (scratch / "last.ckpt").touch()
    on_scratch = [f"paths.output_dir={tmp_path / 'run'}", f"callbacks.last_checkpoint.dirpath={scratch}",
                  f"callbacks.model_checkpoint.dirpath={scratch}"]
    assert writes_into_another_run(compose_config([*on_scratch, f"ckpt_path={scratch / 'last.ckpt'}"]), tmp_path / "run") is None
    # A new run there would replace that run's last.ckpt.
    assert writes_into_another_run(compose_config(on_scratch), tmp_path / "run").startswith(
        f"callbacks.model_checkpoint.dirpath={scratch} lies in another run's folder ({scratch})")
    (tmp_path / "earlier" / ".hydra").mkdir(parents=True)
    cfg = compose_config([f"paths.output_dir={tmp_path / 'run'}", f"logger.tensorboard.save_dir={tmp_path / 'earlier'}"])
    assert writes_into_another_run(cfg, tmp_path / "run").startswith(f"logger.tensorboard.save_dir={tmp_path / 'earlier'} lies")


@pytest.mark.parametrize("module", ["src.train", "src.eval", "src.predict", "src.bench"])
def test_an_installed_copy_without_the_configs_says_how_to_install(tmp_path, module):
    """What `pip install .` (not -e) leaves: src/ in site-packages with no conf/ beside it."""
    site_packages = tmp_path / "site-packages"
    shutil.copytree(PROJECT_ROOT / "src", site_packages / "src", ignore=shutil.ignore_patterns("__pycache__"))
    result = subprocess.run([sys.executable, "-m", module], cwd=site_packages, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        f"No configs found: {site_packages / 'conf'} does not exist. This project runs from its own folder, where conf/, "
        "data/ and outputs/ lie beside src/: install it there with `pip install -e .` and run the commands from that folder.")
    assert sorted(path.name for path in site_packages.iterdir()) == ["src"]  # no outputs/ written beside it


def test_unknown_config_option_lists_the_choices(tmp_path):
    result = run_module("src.train", "model=resnet", f"hydra.run.dir={tmp_path}", timeout=120)
    assert result.returncode == 1
    assert "Could not find 'model/resnet'" in result.stderr and "cnn" in result.stderr and "mlp" in result.stderr
    assert "Traceback" not in result.stderr


def test_same_seed_gives_bit_identical_runs(tmp_path, synthetic_data_dir):
    runs = []
    for name in ("a", "b"):
        overrides = [*tiny_run_overrides(synthetic_data_dir, tmp_path / name), "model=cnn", "trainer.deterministic=true"]
        metrics = train(compose_config(overrides))
        weights = torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
        runs.append((metrics, weights))
    for key in ("val/acc_best", "test/acc", "test/loss"):
        assert runs[0][0][key] == runs[1][0][key]
    assert all(torch.equal(runs[0][1][name], runs[1][1][name]) for name in runs[0][1])


@pytest.mark.parametrize("errors_too, read_until, progress_bar", [
    (False, b"", False), (False, b"config", False), (False, b"Epoch 0", True), (True, b"Epoch 0", True)],
    ids=["before the config is shown", "after the config", "during training", "during training, with stderr"])
def test_a_run_whose_console_reader_goes_away_goes_on_quietly(tmp_path, synthetic_data_dir, errors_too, read_until,
                                                              progress_bar):
    """`python -m src.train ... | head -1` or quitting `less` (with 2>&1: `errors_too`): nobody reads from then on.
    The first write that failed was rich's (the config, the model summary), a log line's, or the progress bar's; each
    ended the run or printed a traceback per line."""
    errors = tmp_path / "stderr.txt"
    overrides = [word for word in tiny_run_overrides(synthetic_data_dir, tmp_path) if not word.startswith("paths.")
                 and not (progress_bar and "progress_bar" in word)]
    with errors.open("w") as error_file:
        process = subprocess.Popen([sys.executable, "-m", "src.train", *overrides, f"hydra.run.dir={tmp_path / 'run'}",
                                    "model=mlp", "trainer.max_epochs=3", "callbacks.figures=null"], cwd=PROJECT_ROOT,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT if errors_too else error_file)
        seen = b""
        while read_until not in seen:
            chunk = os.read(process.stdout.fileno(), 4096)
            assert chunk, seen[-3000:]  # the run ended before showing it
            seen += chunk
        process.stdout.close()
        assert process.wait(timeout=300) == 0, (seen + errors.read_bytes())[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "ok" and metrics["epochs"] == 3
    assert "test accuracy" in (tmp_path / "run" / "train.log").read_text()
    # With stderr in the pipe too, nothing is left to show what went to it.
    assert "Logging error" not in errors.read_text() and "BrokenPipe" not in errors.read_text()


@pytest.mark.parametrize("signum, exit_code, by", [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "Ctrl-C")])
def test_interrupt_saves_a_resumable_checkpoint(tmp_path, synthetic_data_dir, signum, exit_code, by):
    run_dir = tmp_path / "run"
    common = [f"data.data_dir={synthetic_data_dir}", "data.download=false", "data.val_size=80", "data.batch_size=4",
              "model=mlp", "model.scheduler.name=none", "callbacks.progress_bar=null", "++trainer.enable_progress_bar=false"]
    command = [sys.executable, "-m", "src.train", f"hydra.run.dir={run_dir}", *common]
    env = {key: value for key, value in os.environ.items() if key != "HYDRA_FULL_ERROR"}
    process = subprocess.Popen([*command, "trainer.max_epochs=1000"], cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, preexec_fn=ctrl_c_as_in_a_terminal)
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 120
    while not last.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)  # wait until training is under way (the first epoch's checkpoint exists)
    time.sleep(0.5)
    process.send_signal(signum)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == exit_code, output[-3000:]
    assert f"Training stopped by {by}" in output and "resume with: python -m src.train" in output
    assert "Traceback" not in output
    stopped_at = torch.load(last, weights_only=True)
    # Saved at the step the message names, not merely the end-of-epoch checkpoint the loop above waited for.
    assert f"step {stopped_at['global_step']}." in output

    resumed = run_module("src.train", *command[3:], f"trainer.max_epochs={stopped_at['epoch'] + 2}", f"ckpt_path={last}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "ok" and metrics["resumed_from"] == str(last)
    assert torch.load(last, weights_only=True)["global_step"] > stopped_at["global_step"]


def test_checkpoint_writes_are_atomic(tmp_path, synthetic_data_dir, good_checkpoint, monkeypatch):
    """A crash while a run writes a checkpoint leaves the previous file intact. The temporary file is written beside
    the checkpoint, never in $TMPDIR: moved from another filesystem, it would be copied into the target in place."""
    import tempfile

    from src.data.mnist_datamodule import MNISTDataModule
    from src.models.mlp import MLP
    from src.utils.trainer_setup import build_trainer

    cfg = compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path / "run"), "model=mlp", "++trainer.max_steps=1",
                          "++trainer.limit_val_batches=0", "logger=[]"])
    trainer, _ = build_trainer(cfg)  # the trainer every run uses
    trainer.fit(MLP(optimizer={"name": "adam", "lr": 1e-3}, hidden_sizes=[16]),
                datamodule=MNISTDataModule(str(synthetic_data_dir), download=False, val_size=80))
    target = tmp_path / "checkpoints" / "last.ckpt"

    def no_temp_dir(*args, **kwargs):
        raise AssertionError("a checkpoint was written through $TMPDIR")

    monkeypatch.setattr(tempfile, "mkstemp", no_temp_dir)
    trainer.save_checkpoint(target)  # the path every checkpoint of a run takes
    assert torch.load(target, weights_only=True)["global_step"] == 1

    shutil.copy(good_checkpoint, target)
    before = target.read_bytes()
    from src.utils import checkpoint_io

    monkeypatch.setattr(checkpoint_io, "open", FillingDisk, raising=False)
    with pytest.raises(OSError, match="No space left") as info:
        trainer.save_checkpoint(target)
    assert info.value.filename == str(target)  # the file the user knows, not the temporary one
    assert target.read_bytes() == before
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]


def test_metrics_files_are_strict_json_even_after_a_nan(tmp_path):
    from src.utils.atomic_files import write_json_atomically

    path = tmp_path / "metrics.json"
    write_json_atomically(path, {"test/loss": float("nan"), "curve": [1.0, float("inf")], "test/acc": 0.5})

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    assert json.loads(path.read_text(), parse_constant=refuse) == {"test/loss": None, "curve": [1.0, None], "test/acc": 0.5}


def test_a_written_file_reaches_the_disk_before_it_is_renamed_into_place(tmp_path, monkeypatch):
    """Without the fsync before the rename, a power cut can leave an empty last.ckpt (XFS, NFS, ext4 noauto_da_alloc);
    the folder's fsync after it keeps the rename. A folder that cannot be fsynced (some filesystems) is no error."""
    import stat

    from src.utils import atomic_files

    steps = []
    real_fsync, real_replace = os.fsync, os.replace

    def recorded_fsync(descriptor):
        status = os.fstat(descriptor)
        steps.append("folder" if stat.S_ISDIR(status.st_mode) else f"file of {status.st_size} bytes")
        real_fsync(descriptor)

    def recorded_replace(source, target):
        steps.append("rename")
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", recorded_fsync)
    monkeypatch.setattr(os, "replace", recorded_replace)
    atomic_files.write_text_atomically(tmp_path / "metrics.json", "{}\n")
    assert steps == ["file of 3 bytes", "rename", "folder"]

    def no_folder_fsync(descriptor):
        if stat.S_ISDIR(os.fstat(descriptor).st_mode):
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", no_folder_fsync)
    atomic_files.write_text_atomically(tmp_path / "metrics.json", "{}\n")
    assert (tmp_path / "metrics.json").read_text() == "{}\n"


def test_a_killed_writers_temporary_file_is_removed_by_the_next_write(tmp_path):
    """SIGKILL while a checkpoint is written leaves its temporary file; the next write of that file removes it once it
    is old and its process is gone, and leaves alone a live process's, a recent one, and another file's."""
    from src.utils.atomic_files import STALE_AFTER_SECONDS, write_text_atomically

    def ended_process() -> int:
        return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True).stdout)

    dead, dead_too, alive = ended_process(), ended_process(), os.getppid()
    old, now = time.time() - STALE_AFTER_SECONDS - 60, time.time()
    left = {f".last.ckpt.{alive}.partial": old, f".last.ckpt.{dead_too}.partial": now, f".best.ckpt.{dead}.partial": old}
    for name, modified in {**left, f".last.ckpt.{dead}.partial": old}.items():
        (tmp_path / name).write_text("half a checkpoint")
        os.utime(tmp_path / name, (modified, modified))
    write_text_atomically(tmp_path / "last.ckpt", "a checkpoint")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*left, "last.ckpt"])


def test_a_read_only_folder_is_reported_under_the_files_own_name(tmp_path, monkeypatch):
    """On a read-only filesystem, removing the temporary file fails as well; that must not hide the first error."""
    from src.utils.atomic_files import write_text_atomically

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(args[0]) if args else None)

    monkeypatch.setattr(Path, "write_text", read_only)
    monkeypatch.setattr(Path, "unlink", read_only)
    with pytest.raises(OSError) as info:
        write_text_atomically(tmp_path / "metrics.json", "{}")
    assert info.value.errno == errno.EROFS and info.value.filename == str(tmp_path / "metrics.json")


def test_a_disk_error_under_a_later_one_is_still_reported_as_one_line():
    """After a checkpoint fails on a full disk, Lightning's clean-up (the logger's flush) can fail on top of it."""
    from src.utils.disk_errors import disk_problem

    try:
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/runs/a/checkpoints/last.ckpt")
        except OSError:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # the logger's, without a file name
    except OSError as failure:
        problem = disk_problem(failure)
    assert str(problem).startswith("/runs/a/checkpoints/last.ckpt: no space left on the disk. Free some space")
    assert disk_problem(RuntimeError("unrelated")) is None
    tensorboards = OSError(errno.EPERM, os.strerror(errno.EPERM), b"/runs/a/tensorboard/events.out.tfevents.1")
    assert str(disk_problem(tensorboards)).startswith("/runs/a/tensorboard/events.out.tfevents.1: not permitted.")
    not_owned = OSError(errno.EACCES, os.strerror(errno.EACCES), "/runs/b/metrics.json")  # another user's folder
    assert str(disk_problem(not_owned)).startswith("/runs/b/metrics.json: permission denied.")
    ours = UserInputError("data.data_dir=/data: cannot be read")  # our own message, raised from the disk's error
    ours.__cause__ = not_owned
    assert disk_problem(ours) is None


def test_a_disk_error_after_a_saved_training_state_advises_going_on_from_it(tmp_path, monkeypatch):
    """It advised putting the run elsewhere (starting over) although last.ckpt held the training so far, and named a
    sweep's setting in a single run; EIO (a failing disk, a network filesystem gone) was a traceback."""
    from src.utils.disk_errors import disk_problem

    monkeypatch.setattr("src.utils.command_words.command_overrides", lambda: ["model=mlp"])
    cfg = compose_config([f"paths.output_dir={tmp_path}", "model=mlp"])
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "checkpoints" / "last.ckpt"))
    assert str(disk_problem(full, cfg)) == (
        f"{tmp_path / 'checkpoints' / 'last.ckpt'}: no space left on the disk. Free some space or fix the folder's "
        "permissions, or put the run elsewhere (hydra.run.dir=<folder>). Files written before are intact.")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"the state of epoch 0")
    figure = OSError(errno.EIO, os.strerror(errno.EIO), str(tmp_path / "confusion_matrix.png"))
    assert str(disk_problem(figure, cfg)) == (
        f"{tmp_path / 'confusion_matrix.png'}: input/output error (a failing disk, or a network filesystem that went "
        f"away). Free some space or fix the folder's permissions, then go on from {tmp_path / 'checkpoints' / 'last.ckpt'}"
        ", the last state saved (intact, as is everything written before); resume with: python -m src.train model=mlp "
        f"ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}")
    tested_alone = compose_config([f"paths.output_dir={tmp_path}", "train=false"])  # nothing of its own to go on from
    assert "put the run elsewhere" in str(disk_problem(full, tested_alone))


def test_a_folder_that_cannot_be_written_to_is_refused_in_one_line(tmp_path, monkeypatch):
    """The tests run as root, for whom every folder is writable: the check asks os.access."""
    from src.utils import output_folders

    assert output_folders.folder_problem(tmp_path / "new" / "run", "hydra.run.dir") is None
    monkeypatch.setattr(output_folders.os, "access", lambda path, mode: not mode & os.W_OK)
    assert (f"Cannot make the folder {tmp_path / 'new' / 'run'}: {tmp_path} cannot be written to (no permission, or a "
            "read-only file system)") in output_folders.folder_problem(tmp_path / "new" / "run", "hydra.run.dir")



def test_a_folder_on_a_full_disk_is_refused_in_one_line_before_hydra_writes_into_it(tmp_path, monkeypatch):
    """Hydra's first write (the command's record) failed with its traceback, leaving a half-made run folder."""
    import tempfile

    from src.utils import output_folders

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(tempfile, "TemporaryFile", full)
    assert output_folders.folder_problem(tmp_path / "run", "hydra.run.dir") == (
        f"Cannot make the folder {tmp_path / 'run'}: {tmp_path} cannot be written to (No space left on device). Give a "
        "folder you can write to: paths.log_dir=<folder> (where dated run folders are made) or hydra.run.dir=<folder>.")
    assert not (tmp_path / "run").exists()


def test_a_used_folder_without_a_checkpoint_is_refused_without_resume_advice(tmp_path):
    from src.errors import RunFolderTaken
    from src.utils.output_folders import refuse_a_used_folder

    (tmp_path / "metrics.json").write_text("{}")  # tested a checkpoint there, or its last.ckpt was deleted
    with pytest.raises(RunFolderTaken, match=r"holds a run already \(metrics\.json\)") as refused:
        refuse_a_used_folder(tmp_path, resumable=True)
    assert "ckpt_path" not in str(refused.value)  # no checkpoint there to continue from


def test_a_full_disk_in_tensorboards_thread_is_one_line_not_a_traceback(monkeypatch, caplog, capsys):
    import threading

    from src.utils.disk_errors import one_line_for_disk_errors_in_threads

    monkeypatch.setattr(threading, "excepthook", threading.__excepthook__)
    one_line_for_disk_errors_in_threads()
    one_line_for_disk_errors_in_threads()  # a second job of an in-process sweep: installed once

    def event_writer():
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    for target in (event_writer, lambda: 1 / 0):
        thread = threading.Thread(target=target, name="event-writer")
        thread.start()
        thread.join()
    assert [r.getMessage() for r in caplog.records] == ["event-writer could not write: [Errno 28] No space left on device"]
    stderr = capsys.readouterr().err
    assert stderr.count("Traceback") == 1 and "ZeroDivisionError" in stderr  # other errors keep Python's report


class FillingDisk:
    """A file opened on a disk that fills up halfway through the first write: half is written, then ENOSPC."""

    def __init__(self, path, mode: str) -> None:
        self.file = open(path, mode)

    def write(self, data) -> None:
        self.file.write(bytes(data)[: len(data) // 2])
        self.file.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.file.close()


class DiskFullAfterEpoch(pl.Callback):
    """From the end of epoch `epoch` on, every checkpoint write finds the disk full halfway through."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch >= self.epoch:
            from src.utils import checkpoint_io

            checkpoint_io.open = FillingDisk


class KilledBeforeLastCheckpoint(pl.Callback):
    """SIGKILL (the OOM killer, a power cut) in epoch `epoch` after its new best checkpoint was saved, while last.ckpt
    is being made (every checkpoint made calls this hook)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        best = Path(trainer.checkpoint_callback.dirpath) / f"epoch{self.epoch:03d}.ckpt"
        if trainer.current_epoch == self.epoch and best.is_file():
            os.kill(os.getpid(), signal.SIGKILL)


def test_a_run_killed_between_its_best_and_last_checkpoints_resumes_without_a_second_best(tmp_path, synthetic_data_dir):
    """The resume trains that epoch again and saves its best checkpoint under the same name: Lightning's version counter
    would add epoch001-v1.ckpt beside the killed attempt's epoch001.ckpt, which no record names any more."""
    run_dir = tmp_path / "run"
    run = [f"hydra.run.dir={run_dir}", f"data.data_dir={synthetic_data_dir}", "data.download=false", "data.val_size=80",
           "data.batch_size=32", "data.eval_batch_size=50", "trainer=cpu", "model=mlp", "trainer.max_epochs=2",
           "callbacks.progress_bar=null", "++trainer.enable_progress_bar=false", "ckpt_path=last"]
    killed = run_module("src.train", *run, f"+callbacks.kill._target_={__name__}.KilledBeforeLastCheckpoint",
                        "+callbacks.kill.epoch=1")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    checkpoints = run_dir / "checkpoints"
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["epoch"] == 0
    assert (checkpoints / "epoch001.ckpt").is_file()  # validation accuracy rises on the synthetic digits
    resumed = run_module("src.train", *run)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert sorted(path.name for path in checkpoints.iterdir()) == ["epoch001.ckpt", "last.ckpt"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["best_model_path"] == str(checkpoints / "epoch001.ckpt")
    best, last = (torch.load(checkpoints / name, weights_only=True) for name in ("epoch001.ckpt", "last.ckpt"))
    assert best["epoch"] == last["epoch"] == 1 and best["global_step"] == last["global_step"]


def test_only_the_first_best_checkpoint_after_a_resume_replaces_one_of_its_name(tmp_path):
    """Later saves in the same epoch (validation within epochs, save_top_k > 1) are versioned as Lightning does:
    replacing one in place could remove the file another top-k entry names."""
    from types import SimpleNamespace

    from src.callbacks.checkpoint import RunFolderCheckpoint

    callback = RunFolderCheckpoint(dirpath=str(tmp_path), filename="epoch{epoch:03d}", save_top_k=2, monitor="val/acc")
    callback.load_state_dict({"dirpath": str(tmp_path), "best_model_path": "", "best_model_score": None})
    trainer = SimpleNamespace(save_checkpoint=lambda path, weights_only: Path(path).write_bytes(b"weights"),
                              global_step=13, is_global_zero=True, loggers=[])
    assert callback._enable_version_counter is False  # the killed attempt's file of this name: replaced
    callback._save_checkpoint(trainer, str(tmp_path / "epoch001.ckpt"))
    assert callback._enable_version_counter is True
    another = RunFolderCheckpoint(dirpath=str(tmp_path / "new"), filename="epoch{epoch:03d}")
    another.load_state_dict({"dirpath": str(tmp_path / "elsewhere"), "best_model_path": ""})  # not its run's folder
    assert another._enable_version_counter is True


def test_a_run_folders_other_file_given_as_the_checkpoint_names_the_runs_checkpoints(tmp_path):
    from src.models.checkpoint_file import CheckpointError, read_checkpoint

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"a checkpoint")
    (tmp_path / "config.yaml").write_text("seed: 42\n")
    with pytest.raises(CheckpointError, match=rf"Use another checkpoint beside it \(newest first\): "
                                              rf"{re.escape(str(tmp_path / 'checkpoints' / 'last.ckpt'))}"):
        read_checkpoint(tmp_path / "config.yaml")
    (tmp_path / "checkpoints" / "last.ckpt").unlink()
    with pytest.raises(CheckpointError, match=r"Give a checkpoint: <run dir>/checkpoints/last\.ckpt or epochNNN\.ckpt\.$"):
        read_checkpoint(tmp_path / "config.yaml")  # not "copy this one again": it is no checkpoint


def test_a_full_disk_is_one_message_and_keeps_the_last_good_checkpoint(tmp_path, synthetic_data_dir):
    run_dir = tmp_path / "run"
    result = run_module("src.train", f"hydra.run.dir={run_dir}", f"data.data_dir={synthetic_data_dir}", "data.download=false",
                        "data.val_size=80", "data.batch_size=32", "model=mlp", "trainer.max_epochs=3",
                        "callbacks.progress_bar=null", "++trainer.enable_progress_bar=false",
                        f"+callbacks.disk_full._target_={__name__}.DiskFullAfterEpoch", "+callbacks.disk_full.epoch=1")
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in output, output[-3000:]
    last = run_dir / "checkpoints" / "last.ckpt"
    assert re.search(rf"{run_dir}/checkpoints/(last|epoch001)\.ckpt: no space left on the disk\. Free some space", output)
    assert torch.load(last, weights_only=True)["epoch"] == 0  # the last good one, whole
    assert not list(run_dir.rglob("*.partial"))


class DiskFullForFigures(pl.Callback):
    """Every figure's PNG finds the disk full after its first bytes (Pillow's error names no file)."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        from matplotlib.figure import Figure

        def half_a_png(figure, target, **options) -> None:
            with open(target, "wb") as file:
                file.write(b"\x89PNG\r\n\x1a\n")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        Figure.savefig = half_a_png


def test_a_full_disk_while_writing_a_figure_names_it_and_keeps_the_one_before(tmp_path, synthetic_data_dir):
    """A finished run tested again (resumed from its last.ckpt) writes its figures again: they were written in place,
    so a full disk left a broken PNG where a good one had been, and the message named no file."""
    run_dir = tmp_path / "run"
    common = [f"hydra.run.dir={run_dir}", f"data.data_dir={synthetic_data_dir}", "data.download=false", "data.val_size=80",
              "data.batch_size=32", "model=mlp", "trainer.max_epochs=1", "callbacks.progress_bar=null",
              "++trainer.enable_progress_bar=false"]
    assert run_module("src.train", *common).returncode == 0
    figures = {path: path.read_bytes() for path in run_dir.glob("*.png")}
    assert "confusion_matrix.png" in {path.name for path in figures}
    result = run_module("src.train", *common, "ckpt_path=last", f"+callbacks.disk_full._target_={__name__}.DiskFullForFigures")
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in output, output[-3000:]
    assert re.search(rf"{run_dir}/\w+\.png: no space left on the disk\. Free some space", output), output[-3000:]
    assert {path: path.read_bytes() for path in run_dir.glob("*.png")} == figures
    assert not list(run_dir.rglob("*.partial"))


def test_a_full_disk_in_a_notebook_run_is_the_same_one_line_error(tmp_path, synthetic_data_dir, monkeypatch):
    from src import api
    from src.utils import checkpoint_io

    # DiskFullAfterEpoch fills the disk for the rest of the process: this one runs the tests too.
    monkeypatch.setattr(checkpoint_io, "open", open, raising=False)

    with pytest.raises(UserInputError, match=r"checkpoints/(last|epoch001)\.ckpt: no space left on the disk\. Free some"):
        api.train(f"hydra.run.dir={tmp_path}", f"data.data_dir={synthetic_data_dir}", "data.download=false",
                  "data.val_size=80", "data.batch_size=32", "model=mlp", "trainer.max_epochs=3", "callbacks.progress_bar=null",
                  f"+callbacks.disk_full._target_={__name__}.DiskFullAfterEpoch", "+callbacks.disk_full.epoch=1")


class FullDisk:
    def write(self, text: str) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def flush(self) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def close(self) -> None:
        self.flush()


def test_a_full_disk_stops_the_log_file_with_one_line_not_a_traceback_a_message(tmp_path, capsys):
    """logging.FileHandler prints an 80-line "--- Logging error ---" for every message once the disk is full, burying
    the run's one-line error. The log file of the command line (Hydra builds it with logging.config.dictConfig from
    conf/hydra/job_logging/run_log.yaml) and of src.api's runs says so once, and stops."""
    import logging.config

    from omegaconf import OmegaConf

    from src.utils.in_process import _run_handlers

    run_log = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "hydra" / "job_logging" / "run_log.yaml"))
    run_log["handlers"]["file"]["filename"] = str(tmp_path / "train.log")
    command_line_log = logging.config.DictConfigurator({}).resolve(run_log["handlers"]["file"]["class"])
    (notebook_log,) = _run_handlers(run_log, ["file"])
    for handler in (command_line_log(tmp_path / "train.log"), notebook_log):
        handler.handle(logging.makeLogRecord({"msg": "epoch 0 done"}))
        handler.stream = FullDisk()
        for message in ("no space left to save last.ckpt", "the run stopped", "test accuracy"):
            handler.handle(logging.makeLogRecord({"msg": message}))
        handler.close()
        assert capsys.readouterr().err.splitlines() == [
            f"Warning: cannot write the log file {tmp_path / 'train.log'} (No space left on device): it gets no more "
            "messages; the console still shows them."]
    assert [line.endswith("epoch 0 done") for line in (tmp_path / "train.log").read_text().splitlines()] == [True] * 2


@pytest.mark.parametrize("strategy, extra", [("ddp", []), ("ddp_spawn", ["callbacks=[default,ema]", "callbacks.ema.decay=0.9"])],
                         ids=["ddp", "ddp_spawn with weight averaging"])
def test_ddp_on_two_cpu_processes(tmp_path, synthetic_data_dir, strategy, extra):
    run_dir = tmp_path / "ddp"
    result = run_module(
        "src.train", "trainer=ddp_cpu", f"trainer.strategy={strategy}", *extra, f"hydra.run.dir={run_dir}", f"data.data_dir={synthetic_data_dir}",
        "data.download=false", "data.val_size=80", "data.batch_size=32", "model=mlp", "trainer.max_epochs=2",
        "callbacks.progress_bar=null", "++trainer.enable_progress_bar=false",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test/images"] == 100  # each test image counted exactly once across the 2 ranks
    assert metrics["test/acc"] > 0.5 and metrics["epochs"] == 2  # with ddp_spawn, counted by the processes it started
    assert (run_dir / "misclassified.png").exists() == (metrics["test/acc"] < 1)  # drawn from both ranks' mistakes
    assert [p.name for p in tmp_path.iterdir()] == ["ddp"]  # the relaunched rank made no run dir of its own
    assert len(list((run_dir / "checkpoints").glob("*.ckpt"))) == 2  # best + last, written once


class RecordShuffleSeed(pl.Callback):
    """Writes each process's shuffle seed into `folder`/rank<N>."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def on_train_start(self, trainer, pl_module) -> None:
        (self.folder / f"rank{trainer.global_rank}").write_text(str(trainer.datamodule.hparams.shuffle_seed))


def test_an_unseeded_shuffle_is_drawn_once_for_every_ddp_process_and_kept_by_a_resume(tmp_path, synthetic_data_dir):
    """data.shuffle_seed=null: each process drew its own, so the ranks' shards overlapped, and the resume command the
    run printed was refused for its new draw."""
    from omegaconf import OmegaConf

    run_dir = tmp_path / "run"
    command = ["src.train", "trainer=ddp_cpu", "data.shuffle_seed=null", f"hydra.run.dir={run_dir}",
               f"data.data_dir={synthetic_data_dir}", "data.download=false", "data.val_size=80", "data.batch_size=32",
               "model=mlp", "model.scheduler.name=none", "callbacks.progress_bar=null", "++trainer.enable_progress_bar=false",
               "test=false",
               f"+callbacks.seeds._target_={__name__}.RecordShuffleSeed", f"+callbacks.seeds.folder={tmp_path}"]
    result = run_module(*command, "trainer.max_epochs=1")
    assert result.returncode == 0, result.stderr[-3000:]
    drawn = {path.name: int(path.read_text()) for path in tmp_path.glob("rank*")}
    assert set(drawn) == {"rank0", "rank1"} and drawn["rank0"] == drawn["rank1"], drawn
    assert OmegaConf.load(run_dir / "config.yaml").data.shuffle_seed == drawn["rank0"]
    resumed = run_module(*command, "trainer.max_epochs=2", "ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert {int(path.read_text()) for path in tmp_path.glob("rank*")} == {drawn["rank0"]}


class SignalAtStep(pl.Callback):
    """Sends `signal_name` to its own process at `step`: in every process (`ranks`=all, as a terminal's Ctrl-C or a
    SIGTERM to the process group reaches each), in the first or second alone (`ranks`=first, second: `kill <pid>`), or
    from the first to its whole process group (`ranks`=group: under ddp_spawn the launching process too; the run
    needs a process group of its own)."""

    def __init__(self, step: int, signal_name: str, ranks: str) -> None:
        self.step, self.signum, self.ranks = step, getattr(signal, signal_name), ranks

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step != self.step:
            return
        if self.ranks == "group":
            if trainer.global_rank == 0:
                os.killpg(os.getpgid(0), self.signum)
        elif self.ranks == "all" or ["first", "second"].index(self.ranks) == trainer.global_rank:
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize("strategy, signal_name, ranks, exit_code", [
    ("ddp", "SIGTERM", "all", 143), ("ddp", "SIGINT", "first", 130),
    ("ddp_spawn", "SIGTERM", "group", 143), ("ddp_spawn", "SIGTERM", "second", 143)],
    ids=["SIGTERM to every process", "Ctrl-C to the first alone", "ddp_spawn: SIGTERM to the process group",
         "ddp_spawn: SIGTERM to the second process alone"])
def test_a_stop_under_ddp_stops_every_process_at_the_same_batch_and_resumes_exactly(tmp_path, synthetic_data_dir,
                                                                                     strategy, signal_name, ranks,
                                                                                     exit_code):
    """Both hung until killed: Lightning's SIGTERM handler broadcast from inside the signal handler (a SIGTERM to the
    process group: twice in the second process, once in the first), and a Ctrl-C stopped the process that got it
    while the other waited for it at the next collective. The resumed epoch's training curve counted the first
    process's half-epoch twice (its sums, alone in the checkpoint, loaded in both). Under ddp_spawn nothing was saved
    at the stop: the launching process, signalled with the group, said it came "outside training", and a stop in a
    started process ended in torch's traceback, exit 1."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    common = ["src.train", "trainer=ddp_cpu", f"++trainer.strategy={strategy}", f"data.data_dir={synthetic_data_dir}",
              "data.download=false", "data.val_size=80", "data.batch_size=16", "model=mlp", "model.scheduler.name=none",
              "trainer.max_epochs=2", "callbacks.progress_bar=null", "++trainer.enable_progress_bar=false", "test=false"]
    straight = run_module(*common, f"hydra.run.dir={tmp_path / 'straight'}", timeout=300)
    assert straight.returncode == 0, straight.stderr[-3000:]
    stop = [f"+callbacks.stop._target_={__name__}.SignalAtStep", "+callbacks.stop.step=14",
            f"+callbacks.stop.signal_name={signal_name}", f"+callbacks.stop.ranks={ranks}"]
    stopped = run_module(*common, *stop, f"hydra.run.dir={tmp_path / 'stopped'}", timeout=120,
                         own_process_group=ranks == "group")
    output = stopped.stdout + stopped.stderr
    assert stopped.returncode == exit_code, output[-3000:]
    last = tmp_path / "stopped" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 14  # mid-epoch 1 of 10 steps per epoch
    by = "SIGTERM" if signal_name == "SIGTERM" else "Ctrl-C"
    assert f"Training stopped by {by} at epoch 1, step 14. Saved {last}; resume with: " in output, output[-3000:]
    assert "Traceback" not in output and "outside training" not in output, output[-3000:]
    resumed = run_module(*common, f"hydra.run.dir={tmp_path / 'stopped'}", "ckpt_path=last", timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # Said once, by the first process (each process said both).
    assert output.count("Training stopped by") == 1, output[-3000:]
    assert (resumed.stdout + resumed.stderr).count("Resuming from") == 1, resumed.stderr[-3000:]

    def final(run: str) -> tuple:
        weights = torch.load(tmp_path / run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
        events = EventAccumulator(str(tmp_path / run / "tensorboard"))
        events.Reload()
        return weights, {tag: [e.value for e in events.Scalars(tag)][-1] for tag in ("train/loss", "train/acc")}

    (weights, curve), (straight_weights, straight_curve) = final("stopped"), final("straight")
    assert all(torch.equal(weights[key], straight_weights[key]) for key in straight_weights)
    assert curve == straight_curve


def test_a_refusal_in_a_process_ddp_spawn_started_is_one_line(tmp_path, synthetic_data_dir, good_checkpoint):
    """Raised inside fit, where the schedule's length is known: torch handed it back as the process's traceback."""
    result = run_module("src.train", "trainer=ddp_cpu", "trainer.strategy=ddp_spawn", f"hydra.run.dir={tmp_path}",
                        f"data.data_dir={synthetic_data_dir}", "data.download=false", "data.val_size=80", "data.batch_size=32",
                        "model=mlp", "trainer.max_epochs=3", f"ckpt_path={good_checkpoint}", "callbacks.progress_bar=null")
    output = result.stdout + result.stderr
    errors = [line for line in output.splitlines() if "[ERROR]" in line]
    assert result.returncode == 1 and "Traceback" not in output and "ProcessRaisedException" not in output, output[-3000:]
    assert len(errors) == 1 and "- The checkpoint was trained with a onecycle learning-rate schedule of" in errors[0]
    assert not (tmp_path / "checkpoints").exists()


def test_only_a_reported_error_that_ended_a_spawned_process_is_taken_for_one():
    """torch hands back the process's traceback as text; one raised while handling ours (a failed clean-up) is not
    a refusal, and in a sweep a refusal would stop the whole sweep."""
    import torch.multiprocessing  # noqa: F401  (loads torch.multiprocessing.spawn)

    from src.errors import ResumeRefused, raised_in_a_spawned_process

    handed_back = sys.modules["torch.multiprocessing.spawn"].ProcessRaisedException
    frame = '  File "x.py", line 1, in f\n    g()\n'
    ours = (f"\n\n-- Process 1 terminated with the following error:\nTraceback (most recent call last):\n{frame}"
            "src.errors.ResumeRefused: The checkpoint was trained with\nanother schedule\n")
    error = raised_in_a_spawned_process(handed_back(ours, 1, 123))
    assert type(error) is ResumeRefused and str(error) == "The checkpoint was trained with\nanother schedule"
    later = f"{ours}\nDuring handling of the above exception, another exception occurred:\n\n" \
            f"Traceback (most recent call last):\n{frame}RuntimeError: teardown failed\n"
    assert raised_in_a_spawned_process(handed_back(later, 1, 123)) is None
    caused_by = f"Traceback (most recent call last):\n{frame}KeyError: 'x'\n\nThe above exception was the direct cause " \
                f"of the following exception:\n\n{ours.split(chr(10), 3)[-1]}"
    assert type(raised_in_a_spawned_process(handed_back(caused_by, 0, 123))) is ResumeRefused
    assert raised_in_a_spawned_process(RuntimeError(ours)) is None  # not handed back by torch
    stopped = ours.replace("src.errors.ResumeRefused:", "src.errors.RunInterrupted:")  # its exit code is not in the text
    assert raised_in_a_spawned_process(handed_back(stopped, 1, 123)) is None


def test_a_refusal_in_a_spawned_process_of_a_notebook_run_is_the_same_error(tmp_path, synthetic_data_dir, monkeypatch):
    import torch.multiprocessing  # noqa: F401  (loads torch.multiprocessing.spawn)

    import src.train
    from src import api
    from src.errors import ResumeRefused

    handed_back = sys.modules["torch.multiprocessing.spawn"].ProcessRaisedException(
        "Traceback (most recent call last):\n  File \"x.py\", line 1\n    f()\nsrc.errors.ResumeRefused: another schedule\n",
        1, 123)

    def spawned_refusal(cfg):
        raise handed_back

    monkeypatch.setattr(src.train, "train", spawned_refusal)
    with pytest.raises(ResumeRefused, match="^another schedule$"):
        api.train(f"hydra.run.dir={tmp_path}", f"data.data_dir={synthetic_data_dir}", "model=mlp")


def test_the_launching_process_of_ddp_spawn_knows_what_its_processes_trained(tmp_path, synthetic_data_dir):
    """Lightning hands back only the weights, the best checkpoint's path and the metrics: the record said 0 epochs,
    missed the early stop, and the resume of the finished run trained nothing but did not know it."""
    run_dir = tmp_path / "spawn"
    common = ["trainer=ddp_cpu", "trainer.strategy=ddp_spawn", f"hydra.run.dir={run_dir}", f"data.data_dir={synthetic_data_dir}",
              "data.download=false", "data.val_size=80", "data.batch_size=32", "model=mlp", "trainer.max_epochs=4",
              "callbacks=[default,early_stopping]", "callbacks.early_stopping.patience=1",
              "callbacks.early_stopping.min_delta=1", "callbacks.progress_bar=null", "++trainer.enable_progress_bar=false"]
    first = run_module("src.train", *common)  # no improvement can reach min_delta=1: the second validation stops it
    assert first.returncode == 0, first.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["stopped_early"].startswith("after 2 of 4 epochs: val/acc did not improve")
    again = run_module("src.train", *common, f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Nothing left to train: early stopping had ended its run after 2 of 4 epochs" in again.stdout + again.stderr
    resumed = json.loads((run_dir / "metrics.json").read_text())
    assert resumed["epochs"] == 2 and resumed["fit_seconds"] == metrics["fit_seconds"]  # tested at this state before
    assert not [path for path in (run_dir / "tensorboard").iterdir() if empty_event_file(path)]  # the fit's, spawned


def test_a_process_ddp_spawn_started_leaves_its_process_group_before_it_exits(tmp_path, monkeypatch):
    """Left to the process's exit, a gloo group now and then aborted a process that ended before its peer (SIGABRT),
    and torch failed the whole run: seen in this suite's ddp_spawn tests."""
    import queue
    from types import SimpleNamespace

    import torch.distributed as dist
    from pytorch_lightning.accelerators import CPUAccelerator

    from src.utils.spawned_progress import ProgressReturningLauncher

    monkeypatch.setenv("LOCAL_RANK", "0")  # both set by the wrapping function, as in a process it started
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))

    def joins_a_group():
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
        return "what rank 0 hands back"

    launcher = ProgressReturningLauncher(SimpleNamespace(accelerator=CPUAccelerator(), num_processes=1), start_method="fork")
    handed_back = queue.Queue()
    try:
        launcher._wrapping_function(0, None, joins_a_group, (), {}, handed_back)
        assert handed_back.get_nowait() == "what rank 0 hands back"
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():  # the other tests in this process must not find a group
            dist.destroy_process_group()


def test_ddp_spawn_runs_in_parallel_sweep_jobs(tmp_path, synthetic_data_dir):
    """The README's advice for several-process runs in sweeps, with joblib's launcher: each spawned process failed with
    "cannot find context for 'loky'"."""
    result = run_module(
        "src.train", "-m", "trainer=ddp_cpu", "++trainer.strategy=ddp_spawn", f"hydra.sweep.dir={tmp_path}",
        "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"data.data_dir={synthetic_data_dir}", "data.download=false",
        "data.val_size=80", "data.batch_size=32", "model=mlp", "trainer.max_epochs=1", "seed=1",
        "callbacks.progress_bar=null", "++trainer.enable_progress_bar=false",
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    (job_dir,) = tmp_path.glob("0_*")
    assert json.loads((job_dir / "metrics.json").read_text())["test/images"] == 100


def test_ddp_inside_a_multirun_is_refused_with_advice(tmp_path, synthetic_data_dir):
    result = run_module(
        "src.train", "-m", "trainer=ddp_cpu", f"hydra.sweep.dir={tmp_path}", f"data.data_dir={synthetic_data_dir}",
        "data.download=false", "data.val_size=80", "model=mlp", "seed=1,2",
    )
    assert result.returncode == 1  # every job refused, so the sweep fails as a whole
    summary = (tmp_path / "summary.md").read_text()
    assert summary.count("cannot run inside a Hydra multirun") == 2 and "ddp_spawn" in summary


def test_ddp_in_a_sweep_is_allowed_inside_a_slurm_task(monkeypatch, tmp_path):
    """hydra/launcher=slurm runs every job as SLURM tasks, which are the DDP processes: nothing is relaunched."""
    from src.utils import jobs
    from src.utils.validate import validate_train_config

    monkeypatch.setattr(jobs, "in_multirun", lambda: True)
    cfg = compose_config(["trainer=ddp_cpu", f"paths.output_dir={tmp_path}"])
    for name in ("SLURM_NTASKS", "SLURM_JOB_NAME"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(UserInputError, match="cannot run inside a Hydra multirun"):
        validate_train_config(cfg)
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_JOB_NAME", "mnist")
    validate_train_config(cfg)


@pytest.mark.parametrize("overrides, refused", [
    (["trainer.accelerator=cpu", "trainer.devices=2"], True),  # Lightning's automatic strategy picks DDP
    (["trainer.accelerator=cpu", "++trainer.num_nodes=2"], True),
    (["trainer.accelerator=cpu", "trainer.devices=2", "++trainer.strategy=ddp_spawn"], False),
    ([], False),
])
def test_several_devices_in_a_sweep_are_refused_unless_spawned(monkeypatch, tmp_path, overrides, refused):
    from src.utils import jobs
    from src.utils.validate import validate_train_config

    monkeypatch.setattr(jobs, "in_multirun", lambda: True)
    for name in ("SLURM_NTASKS", "SLURM_JOB_NAME"):
        monkeypatch.delenv(name, raising=False)
    cfg = compose_config([*overrides, f"paths.output_dir={tmp_path}"])
    if refused:
        with pytest.raises(UserInputError, match="cannot run inside a Hydra multirun: Lightning would relaunch"):
            validate_train_config(cfg)
    else:
        validate_train_config(cfg)


@pytest.mark.parametrize("overrides", [
    ["callbacks.model_checkpoint.monitor=val/loss", "callbacks.model_checkpoint.mode=min"],
    ["callbacks.model_checkpoint=null"],  # tests the final weights, with a warning
    ["callbacks=[]"],
    ["callbacks=[default,early_stopping,ema]"],
])
def test_callbacks_without_the_usual_checkpoint_are_allowed_when_chosen_deliberately(tmp_path, overrides):
    from src.utils.validate import validate_train_config

    validate_train_config(compose_config([*overrides, f"paths.output_dir={tmp_path}"]))


@pytest.mark.parametrize("overrides", [
    ["trainer.log_every_n_steps=0"],  # turns step logging off
    ["trainer.deterministic=warn"],  # Lightning's own third choice
    ["train=false", "model=cnn", "data.batch_size=1"],  # batch norm needs 2 images per batch to train, not to test
    ["++trainer.limit_val_batches=1.0"],  # all of them, as the message for a wrong one says
    ["callbacks=[default,early_stopping]", "callbacks.early_stopping.patience=0"],  # stop at the first non-improvement
    ["train=false", "callbacks=[early_stopping]"],  # testing only: no checkpoint callback needed
    ["trainer.precision=16-true", "model.optimizer.name=sgd"],  # float16 weights train with SGD
    ["trainer.precision=16-true", "train=false"],  # and test with any optimizer's checkpoint
    # The accepted ends of each documented range.
    ["++trainer.gradient_clip_val=0"], ["seed=0"], ["seed=4294967295"], ["++trainer.num_sanity_val_steps=-1"],
    ["callbacks.model_summary.max_depth=-1"], ["+trainer.val_check_interval=1"], ["data.augment.degrees=180"],
    ["data.augment.translate=1"], ["trainer.deterministic=true"],
], ids=["no step logging", "deterministic warn", "testing batch norm on batches of 1", "all validation batches",
        "patience 0", "early stopping when only testing", "float16 with sgd", "float16 testing", "no clipping", "seed 0",
        "largest seed", "every sanity batch", "whole summary", "validation every batch", "any rotation",
        "any translation", "deterministic"])
def test_edge_values_that_are_valid_are_accepted(tmp_path, overrides):
    from src.utils.validate import validate_train_config

    validate_train_config(compose_config([*overrides, f"paths.output_dir={tmp_path}"]))


@pytest.mark.parametrize("strategy, refused", [("ddp_fork", False), ("ddp_notebook", False), ("ddp_spawn", False),
                                               ("ddp", True)])
def test_from_python_only_strategies_that_start_this_script_again_are_refused(tmp_path, monkeypatch, strategy, refused):
    from src.utils.validate import validate_train_config

    monkeypatch.setattr("src.utils.command_words.called_from_python", lambda: True)
    cfg = compose_config([f"paths.output_dir={tmp_path}", "trainer=ddp_cpu", f"trainer.strategy={strategy}"])
    if not refused:
        validate_train_config(cfg)
        return
    with pytest.raises(UserInputError, match=r"^trainer\.strategy=ddp with trainer\.devices=2 would start this script "
                                             r"again for each further device"):
        validate_train_config(cfg)


def test_a_ctrl_c_that_ends_a_run_gives_ctrl_c_back_to_python():
    """Lightning leaves Ctrl-C ignored after its sys.exit(1); a program that goes on after the run (a sweep's next job,
    a notebook) must be interruptible again."""
    from src.callbacks.safety import aborted_by_ctrl_c

    previous_handler = signal.getsignal(signal.SIGINT)
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        assert aborted_by_ctrl_c(KeyboardInterrupt())
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous_handler)


@pytest.mark.parametrize("chosen, fixed", [("early_stopping", "early_stopping"), ("[early_stopping,ema]", "early_stopping,ema")])
def test_callback_options_without_the_defaults_are_refused_with_the_fix(tmp_path, chosen, fixed):
    result = run_module("src.train", f"callbacks={chosen}", f"hydra.run.dir={tmp_path}", timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in output, output[-3000:]
    assert f"callbacks={chosen} leaves out the checkpoint callbacks, which come with `default`" in output
    assert f"callbacks=[default,{fixed}]" in output


def test_divergence_guard_reads_each_loss_one_step_later_and_before_any_save():
    """Reading the loss at once would make the host wait for the GPU every step; the guard reads it at the next
    step instead, and at once before a checkpoint is written, so no checkpoint ever holds weights after a NaN."""
    from types import SimpleNamespace

    from src.callbacks.safety import DivergenceGuard

    optimizer = SimpleNamespace(param_groups=[{"lr": 0.5}])
    trainer = SimpleNamespace(optimizers=[optimizer], current_epoch=3, global_step=0)
    module = SimpleNamespace(hparams={"optimizer": {"lr": 0.6}})
    guard = DivergenceGuard()

    def step(loss: float) -> None:
        trainer.global_step += 1
        guard.on_train_batch_end(trainer, module, {"loss": torch.tensor(loss)}, None, 0)

    step(2.3)
    step(float("nan"))  # not read yet
    with pytest.raises(TrainingDiverged, match=r"epoch 3, step 2: the loss is nan \(learning rate 0\.5 .*model\.optimizer\.lr=0\.2 \(now 0\.6\)"):
        step(2.1)

    step(float("inf"))
    with pytest.raises(TrainingDiverged, match="step 4: the loss is inf"):
        guard.on_save_checkpoint(trainer, module, {})
    guard.on_save_checkpoint(trainer, module, {})  # reported once; nothing pending now
    step(1.0)
    guard.on_train_end(trainer, module)  # a finite pending loss passes
    for hook in (guard.on_validation_start, guard.on_train_end):  # the last step's loss, before validation or the end
        step(float("nan"))
        with pytest.raises(TrainingDiverged, match=rf"step {trainer.global_step}: the loss is nan"):
            hook(trainer, module)

    trainer.callback_metrics, trainer.sanity_checking = {"val/loss": torch.tensor(0.3)}, False
    guard.on_validation_end(trainer, module)
    trainer.callback_metrics["val/loss"] = torch.tensor(float("nan"))
    with pytest.raises(TrainingDiverged, match=r"epoch 3: the validation loss is nan \(learning rate 0\.5 at the last"):
        guard.on_validation_end(trainer, module)
    trainer.sanity_checking = True  # the untrained model, before the first step: not a divergence
    guard.on_validation_end(trainer, module)


def test_a_validation_loss_that_overflows_stops_the_run_before_its_checkpoints(tmp_path, synthetic_data_dir):
    """With lr 1e6 the weights grow so large that the validation images overflow while each training loss is still
    finite: a best checkpoint then would keep a broken model under its (chance-level) accuracy."""
    overrides = [*tiny_run_overrides(synthetic_data_dir, tmp_path), "model=mlp", "model.optimizer.name=sgd",
                 "model.optimizer.lr=1e6", "trainer.max_epochs=2", "+trainer.limit_train_batches=3"]
    with pytest.raises(TrainingDiverged, match=r"^Training diverged at epoch 0: the validation loss is nan .*"
                                               r"Nothing was saved from this epoch"):
        train(compose_config(overrides))
    assert not (tmp_path / "checkpoints").exists()


def test_ctrl_c_stops_on_a_nan_loss_when_the_divergence_guard_is_off(tmp_path, synthetic_data_dir):
    """Without the guard nothing else would ever stop the run: Ctrl-C must (it saves what there is)."""
    overrides = [*tiny_run_overrides(synthetic_data_dir, tmp_path), "model=mlp", "model.scheduler.name=none",
                 "trainer.max_epochs=2", "callbacks.divergence_guard=null",
                 f"+callbacks.nan._target_={__name__}.CtrlCOnADivergingStep", "+callbacks.nan.step=13"]
    previous_handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(RunInterrupted, match="Training stopped by Ctrl-C at epoch 1, step 14"):
            train(compose_config(overrides))
    finally:
        signal.signal(signal.SIGINT, previous_handler)


def test_training_gives_ctrl_c_back_to_the_program_afterwards(tmp_path, synthetic_data_dir):
    """The graceful-stop handler is for the fit only: afterwards (testing, a notebook) Ctrl-C works as before."""
    before = signal.getsignal(signal.SIGINT)
    train(compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path), "model=mlp", "test=false"]))
    assert signal.getsignal(signal.SIGINT) is before
    # Also after a fit that failed (Lightning then skips the callbacks' teardown): in a sweep, Ctrl-C during a later
    # job's test pass was taken for a request to stop training, and ignored.
    diverging = ["model.batch_norm=false", "model.optimizer.name=sgd", "model.optimizer.lr=1e30", "model.scheduler.name=none"]
    with pytest.raises(TrainingDiverged):
        train(compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path / "diverged"), "model=mlp", *diverging]))
    assert signal.getsignal(signal.SIGINT) is before


class HandlerDuringTraining(pl.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        HandlerDuringTraining.seen = signal.getsignal(signal.SIGINT)


def test_an_ignored_ctrl_c_stays_ignored_during_training(tmp_path, synthetic_data_dir):
    """A script's background job (`python -m src.train &`) gets Ctrl-C ignored from its shell, as the script's
    Ctrl-C reaches it too: the graceful-stop handler took it over, and Ctrl-C meant for the script stopped the run."""
    previous_handler = signal.getsignal(signal.SIGINT)
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        train(compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path), "model=mlp", "test=false",
                              f"+callbacks.seen._target_={__name__}.HandlerDuringTraining"]))
        assert HandlerDuringTraining.seen is signal.SIG_IGN and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous_handler)


class CtrlCOnADivergingStep(pl.Callback):
    """At training step `step` the weights turn NaN (so that step's loss is NaN) and Ctrl-C arrives meanwhile."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        from src.callbacks.safety import GracefulStop

        if trainer.global_step == self.step:
            with torch.no_grad():
                next(pl_module.parameters()).fill_(float("nan"))
            (stop,) = [cb for cb in trainer.callbacks if isinstance(cb, GracefulStop)]
            stop._request_stop(signal.SIGINT, None)


def test_ctrl_c_on_a_diverging_step_keeps_the_last_good_checkpoint(tmp_path, synthetic_data_dir):
    """The Ctrl-C save must not store the NaN weights over last.ckpt: the run stops as diverged instead."""
    overrides = [*tiny_run_overrides(synthetic_data_dir, tmp_path), "model=mlp", "model.scheduler.name=none",
                 "trainer.max_epochs=2", f"+callbacks.nan._target_={__name__}.CtrlCOnADivergingStep", "+callbacks.nan.step=13"]
    previous_handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(TrainingDiverged, match="Training diverged at epoch 1, step 14"):
            train(compose_config(overrides))
    finally:
        signal.signal(signal.SIGINT, previous_handler)  # the callback stood in for a real Ctrl-C
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 10  # saved after epoch 0, not at the broken step
    assert all(torch.isfinite(t).all() for t in last["state_dict"].values() if t.is_floating_point())


class DoubleCtrlCAtStep(pl.Callback):
    """Ctrl-C twice before training step `step`: the first asks for a graceful stop, the second aborts at once."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)  # the graceful-stop handler runs (at the latest) when the signal interrupts this sleep
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # the second one raises KeyboardInterrupt here


class CtrlCWhileStopping(pl.Callback):
    """Ctrl-C at training step 3, and again while Lightning handles the stop it causes (saving, tearing down)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == 3:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)  # the graceful-stop handler runs (at the latest) when the signal interrupts this sleep

    def on_exception(self, trainer, pl_module, exception) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)  # the KeyboardInterrupt is raised here, outside Lightning's own Ctrl-C handling


def test_a_ctrl_c_while_lightning_handles_a_stop_is_reported_too(tmp_path, synthetic_data_dir):
    overrides = [*tiny_run_overrides(synthetic_data_dir, tmp_path), "model=mlp", "model.scheduler.name=none",
                 f"+callbacks.again._target_={__name__}.CtrlCWhileStopping"]
    previous_handler = signal.getsignal(signal.SIGINT)
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even when the tests run in the background
        with pytest.raises(RunInterrupted, match=r"Training aborted by Ctrl-C at epoch 0, step \d+, without saving") as stop:
            train(compose_config(overrides))
        assert stop.value.exit_code == 130
    finally:
        signal.signal(signal.SIGINT, previous_handler)


def test_a_second_ctrl_c_aborts_at_once_with_advice_and_keeps_the_last_checkpoint(tmp_path, synthetic_data_dir, caplog):
    """Lightning answers that KeyboardInterrupt with exit code 1 and leaves Ctrl-C ignored from then on."""
    overrides = [*tiny_run_overrides(synthetic_data_dir, tmp_path), "model=mlp", "model.scheduler.name=none",
                 "trainer.max_epochs=2", f"+callbacks.ctrl_c._target_={__name__}.DoubleCtrlCAtStep", "+callbacks.ctrl_c.step=13"]
    previous_handler = signal.getsignal(signal.SIGINT)
    last = tmp_path / "checkpoints" / "last.ckpt"
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even when the tests run in the background
        with pytest.raises(RunInterrupted, match=f"aborted by Ctrl-C at epoch 1, step 13, without saving. {last} holds") as stop:
            train(compose_config(overrides))
        assert stop.value.exit_code == 130
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # not left ignored
        # The first Ctrl-C told what a second one does.
        assert "Ctrl-C: stopping after this batch and saving a checkpoint (Ctrl-C again to abort at once)." in caplog.text
    finally:
        signal.signal(signal.SIGINT, previous_handler)
    assert torch.load(last, weights_only=True)["global_step"] == 10  # epoch 0's save, untouched


def test_ctrl_c_outside_training_and_testing_is_reported(tmp_path, synthetic_data_dir, caplog):
    """While imports run or data loads, Ctrl-C is a plain KeyboardInterrupt: a traceback, and in a parallel sweep it
    crashed the launcher with no record of the job."""
    def interrupted_early(cfg):
        raise KeyboardInterrupt

    cfg = compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path), "model=mlp"])
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exited:
        run_reporting_failures(interrupted_early, cfg)
    assert exited.value.code == 130 and "Stopped by Ctrl-C outside training and testing" in caplog.text
