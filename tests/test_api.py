"""src.api: the command line's runs from Python (a notebook), in this process."""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import random
import shutil
import sys
import types
import warnings
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf.errors import InterpolationKeyError

from src import CONFIG_DIR, api
from src.data.mnist_files import load_split
from src.errors import ReportedError, ResumeRefused, RunInterrupted, TrainingDiverged, UserInputError
from src.models.checkpoint_file import normalization
from src.models.loading import load_network
from src.utils.in_process import _setting_words
from tests.conftest import run_module, tiny_run_overrides
from tests.digit_drawing import draw_six, save


LIGHTNING_NOTES = "pytorch_lightning.utilities.rank_zero"  # the logger whose lines a run filters


def _draws() -> tuple:
    return random.random(), float(np.random.rand()), torch.rand(1).item()


def _seeded_draws(seed: int) -> tuple:
    """The first draws after seeding Python's, NumPy's and torch's generators; then seeds them again, so the next
    draws are these."""
    random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
    draws = _draws()
    random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
    return draws


def test_train_evaluate_and_predict_make_the_command_lines_run_folders(tmp_path, synthetic_data_dir, monkeypatch, capsys,
                                                                      request):
    overrides = [o for o in tiny_run_overrides(synthetic_data_dir, tmp_path) if not o.startswith("paths.output_dir")]
    overrides.append("trainer.max_epochs=2")
    root, lightning = logging.getLogger(), logging.getLogger("pytorch_lightning")
    # As in a notebook, where Lightning was imported before logging was set up: it prints through its own handler.
    lightnings_own = logging.StreamHandler()
    monkeypatch.setattr(lightning, "handlers", [lightnings_own])
    monkeypatch.setattr(lightning, "propagate", False)
    callers_log = logging.FileHandler(tmp_path / "notebook.log")
    monkeypatch.setattr(root, "handlers", [*root.handlers, callers_log])
    root_handlers = root.handlers[:]
    request.addfinalizer(functools.partial(root.setLevel, root.level))
    root.setLevel(logging.WARNING)  # the notebook's own level: the run logs at INFO, then leaves it as it was
    for name in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS", "MNIST_SHUFFLE_SEED"):  # the caller's seed variables: none
        monkeypatch.delenv(name, raising=False)
    callers_draws = _seeded_draws(123)  # the caller's own random streams, seeded before the run
    cuda_seeds = []  # CUDA is seeded lazily, when first used: after the run, it must get the caller's seed, not the run's
    monkeypatch.setattr(torch.cuda, "manual_seed_all", cuda_seeds.append)
    warning_filters, lightning_filters = warnings.filters[:], logging.getLogger(LIGHTNING_NOTES).filters[:]

    run = api.train(*overrides, "model=mlp", f"paths.log_dir={tmp_path / 'outputs'}")

    # A dated folder under paths.log_dir, as `python -m src.train` makes, holding what such a run holds.
    assert run.dir.parent.parent == tmp_path / "outputs", run.dir
    assert json.loads((run.dir / "metrics.json").read_text()) == run.metrics
    assert run.metrics["status"] == "ok" and 0 <= run.metrics["test/acc"] <= 1
    assert "model=mlp" in (run.dir / ".hydra" / "overrides.yaml").read_text()
    assert "src.models.mlp.MLP" in (run.dir / "config.yaml").read_text()
    log_text = (run.dir / "train.log").read_text()
    assert capsys.readouterr().out.count("test accuracy :") == 1  # the caller's log is a file: the console gets it too
    assert "test accuracy" in log_text and "GPU available" in log_text  # Lightning's lines too, as on the command line
    assert run.dir / "learning_curves.png" in run.figures
    # The curves, epoch by epoch, for plots of one's own.
    history = run.history()
    assert [row["epoch"] for row in history] == [0, 1]
    assert all({"train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best"} <= set(row) for row in history)
    assert history[1]["train/loss"] < history[0]["train/loss"]
    assert history[-1]["val/acc_best"] == pytest.approx(run.metrics["val/acc_best"])
    assert not any("lr" in row for row in history)  # logged every step here: not a per-epoch value
    moved = tmp_path / "moved"  # config.yaml names the old folder: the events are read from the run's own
    shutil.copytree(run.dir, moved)
    (run.dir / "tensorboard").rename(tmp_path / "aside")  # as if the folder had been moved
    assert api.Run(moved).history() == history
    (tmp_path / "aside").rename(run.dir / "tensorboard")
    # The caller's logging and Hydra state are as they were.
    assert root.handlers == root_handlers and lightning.handlers == [lightnings_own] and not lightning.propagate
    assert root.level == logging.WARNING
    logging.getLogger("notebook").warning("after the run")
    assert "after the run" in (tmp_path / "notebook.log").read_text()  # the caller's own log still writes
    assert not HydraConfig.initialized()
    assert not {"PL_GLOBAL_SEED", "PL_SEED_WORKERS", "MNIST_SHUFFLE_SEED"} & set(os.environ)  # the run's seeds left with it
    assert _draws() == callers_draws  # the caller's streams go on where they were, not from the run's seed
    assert cuda_seeds[-1] == 123 and 42 in cuda_seeds  # the run seeded it with its own (seed=42) first
    assert warnings.filters == warning_filters and logging.getLogger(LIGHTNING_NOTES).filters == lightning_filters
    reopened = api.Run(str(run.dir))  # after a restart of the kernel
    with pytest.raises(UserInputError, match=r"^Run\('.*/no-such-run'\): no such folder\. A run's folder is"):
        api.Run(str(tmp_path / "no-such-run"))  # a mistyped folder, not a run without results
    with pytest.raises(UserInputError, match=r"metrics\.json'\): no such folder"):
        api.Run(run.dir / "metrics.json")
    sweep = tmp_path / "sweep"  # as Hydra leaves one: multirun.yaml beside the jobs' folders
    for job in ("0_seed=1", "1_seed=2"):
        (sweep / job / ".hydra").mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("{}\n")
    with pytest.raises(UserInputError, match=rf"^Run\('{sweep}'\) is a sweep's folder: open one of its jobs, "
                                             rf"Run\('{sweep}/0_seed=1'\), or read all of them as a table from "
                                             rf"{sweep}/summary\.csv \(csv\.DictReader, or pandas\.read_csv"):
        api.Run(sweep)  # it read as a run with no results
    assert reopened.metrics == run.metrics and reopened.figures == run.figures and reopened.history() == history

    # Advice names the call to make, not a command line.
    with pytest.raises(ResumeRefused) as refused:
        api.train(*overrides, "model=mlp", "trainer.max_epochs=3", f"ckpt_path={run.dir / 'checkpoints' / 'last.ckpt'}")
    assert f"resume with the overrides of the run that saved it: train({repr(overrides[0])}, " in str(refused.value)
    assert f"'ckpt_path={run.dir / 'checkpoints' / 'last.ckpt'}'), or start a new run" in str(refused.value)

    # The same run from the command line gives the same numbers, after whatever ran in this process before.
    command_line = run_module("src.train", *overrides, "model=mlp", f"hydra.run.dir={tmp_path / 'cli'}")
    assert command_line.returncode == 0, command_line.stderr[-3000:]
    cli_metrics = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert (cli_metrics["test/loss"], cli_metrics["val/acc_best"]) == (run.metrics["test/loss"], run.metrics["val/acc_best"])

    # A resume continues in the run's own folder (this one had finished: it tests again).
    again = api.train(*overrides, "model=mlp", f"ckpt_path={run.dir / 'checkpoints' / 'last.ckpt'}")
    assert again.dir == run.dir and again.metrics["test/acc"] == run.metrics["test/acc"]

    # The README's recipe for the network on tensors of one's own gives the run's test accuracy.
    images, labels = load_split(synthetic_data_dir, "test")
    network, checkpoint = load_network(run.metrics["best_model_path"])
    mean, std = normalization(checkpoint)
    with torch.no_grad():
        logits = network((images[:, None] / 255 - mean) / std)
    assert (logits.argmax(1) == labels).float().mean().item() == pytest.approx(run.metrics["test/acc"])
    assert torch.nn.functional.cross_entropy(logits, labels).item() == pytest.approx(run.metrics["test/loss"], rel=1e-4)

    capsys.readouterr()
    tested = api.evaluate(*overrides, f"ckpt_path={run.metrics['best_model_path']}", f"paths.log_dir={tmp_path / 'evals'}",
                          "data.mean=0.3")
    assert tested.dir.parent.parent == tmp_path / "evals"
    assert tested.metrics["test/acc"] == pytest.approx(run.metrics["test/acc"])  # normalized as in training
    assert tested.history() == []  # nothing trained (its events hold the checkpoint's val/acc_best, for HParams)
    assert "Not used: data.mean=0.3 (the checkpoint's: 0.1307). The checkpoint's network is tested" in capsys.readouterr().out

    # Runs starting within a second of each other: the dated folder of this second (and the next few) holds one.
    image = save(draw_six(), tmp_path / "six.png")
    now = datetime.now()
    taken = [tmp_path / "predictions" / f"{now + timedelta(seconds=s):%Y-%m-%d/%H-%M-%S}" for s in range(6)]
    for folder in taken:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "metrics.json").write_text("{}")
    classified = api.predict(f"ckpt_path={run.metrics['best_model_path']}", f"inputs={image}", "save_preview=true",
                             f"paths.log_dir={tmp_path / 'predictions'}")
    assert classified.dir.name.endswith("-2") and classified.dir.with_name(classified.dir.name[:-2]) in taken
    assert [p["path"] for p in classified.predictions] == [str(image)]
    assert classified.figures == [classified.dir / "predictions.png"]


def test_a_run_is_reopened_by_its_folder_under_the_project_from_a_notebook_elsewhere(tmp_path, monkeypatch):
    import src

    project, notebooks = tmp_path / "project", tmp_path / "notebooks"
    (project / "outputs" / "2026-12-04" / "10-00-00").mkdir(parents=True)
    (project / "outputs" / "2026-12-04" / "10-00-00" / "metrics.json").write_text('{"status": "ok"}')
    notebooks.mkdir()
    monkeypatch.setattr(src, "PROJECT_ROOT", project)
    monkeypatch.chdir(notebooks)
    run = api.Run("outputs/2026-12-04/10-00-00")
    assert run.dir == project / "outputs" / "2026-12-04" / "10-00-00" and run.metrics == {"status": "ok"}
    (notebooks / "outputs" / "2026-12-04" / "10-00-00").mkdir(parents=True)  # one beside the notebook comes first
    assert api.Run("outputs/2026-12-04/10-00-00").dir == Path("outputs/2026-12-04/10-00-00")
    with pytest.raises(UserInputError, match=r"^Run\('outputs/2026-12-04/no-such-run'\): no such folder"):
        api.Run("outputs/2026-12-04/no-such-run")  # named as given, not as a path under the project


def test_a_runs_history_is_found_in_a_relative_tensorboard_folder_from_anywhere(tmp_path, synthetic_data_dir,
                                                                              monkeypatch):
    """logger.tensorboard.save_dir=tb (a folder shared by runs, given relative to where they start) was looked up
    relative to the notebook's folder of the moment: history() was empty from anywhere else."""
    overrides = [o for o in tiny_run_overrides(synthetic_data_dir, tmp_path) if not o.startswith("paths.output_dir")]
    (tmp_path / "here").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    run = api.train(*overrides, "model=mlp", "logger.tensorboard.save_dir=tb", f"paths.log_dir={tmp_path / 'outputs'}")
    history = run.history()
    assert history and (tmp_path / "here" / "tb").is_dir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert api.Run(run.dir).history() == history


def test_the_history_of_a_run_logged_as_csv_comes_from_its_csv_files(tmp_path, synthetic_data_dir, monkeypatch):
    """logger=csv: history() was empty, though csv/metrics.csv held every epoch."""
    overrides = [o for o in tiny_run_overrides(synthetic_data_dir, tmp_path) if not o.startswith("paths.output_dir")]
    words = [*overrides, "model=mlp", "logger=csv", "model.scheduler.name=none", f"hydra.run.dir={tmp_path / 'run'}",
             "data.shuffle_seed=null"]
    monkeypatch.delenv("MNIST_SHUFFLE_SEED", raising=False)
    run = api.train(*words)
    assert "MNIST_SHUFFLE_SEED" not in os.environ  # the run's draw left with it: it is DDP's, not the caller's
    last = run.dir / "checkpoints" / "last.ckpt"
    resumed = api.train(*words, "trainer.max_epochs=3", f"ckpt_path={last}")  # its epoch in csv/resumed-<time>/
    assert list((run.dir / "csv").glob("resumed-*/metrics.csv"))
    history = resumed.history()
    assert [row["epoch"] for row in history] == [0, 1, 2]
    assert all(set(row) == {"epoch", "train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best"} for row in history)
    assert history[-1]["val/acc_best"] == pytest.approx(resumed.metrics["val/acc_best"])
    assert history[0]["val/acc"] == pytest.approx(run.metrics["val/acc_best"])  # the first run's one epoch
    # In a folder shared by many runs, each in a subfolder of its own (logger.csv.save_dir).
    shared = api.train(*overrides, "model=mlp", "logger=csv", f"logger.csv.save_dir={tmp_path / 'shared'}",
                       f"hydra.run.dir={tmp_path / 'shared_run'}")
    assert [row["epoch"] for row in shared.history()] == [0] and not (shared.dir / "csv").exists()


def test_refused_settings_raise_one_clear_error_and_leave_the_callers_hydra_as_it_was(tmp_path):
    refusals = [
        ([["model.dropout=2"]], r"model.dropout=2 is invalid"),  # the settings as one list, too
        (["-m", "model=mlp,cnn"], r"sweeps \(-m, sweep=<name>\) run from the command line, as do Hydra's flags: "
                                  r"python -m src.train -m model=mlp,cnn paths.log_dir="),  # the command to copy
        (["sweep=seeds"], r"run from the command line: python -m src.train sweep=seeds"),  # not one run of the three
        (["run/checkpoints/last.ckpt"], "has no key"),
        (["model=resnet"], "Available options in 'model'"),  # Hydra's own refusals too
        (["+modle=mlp"], r"`modle` is not a setting of src.train \(a typo\?\)"),  # Hydra would add it, unread
        (["model=mlp trainer.max_epochs=1"], r"^'model=mlp trainer.max_epochs=1' holds several settings: pass each as a "
                                             r"string of its own: train\('model=mlp', 'trainer.max_epochs=1'\)\.$"),
        (["model=mlp max_epochs=1"], r"^'model=mlp max_epochs=1' holds several settings"),  # a mistyped key among them
        (["model.optimizer.lr=1e-3,3e-3"], r"from the command line: python -m src.train -m"),
        ([f"paths.output_dir={tmp_path / 'elsewhere'}"], r"is not this run's folder .* set hydra.run.dir=<folder> instead\.$"),
    ]
    # One setting whose path holds a space and a sweep job's `=` is one setting, not several.
    job_checkpoint = "ckpt_path=/data/My Drive/1_model=mlp,seed=2/checkpoints/last.ckpt"
    assert _setting_words((job_checkpoint, "data.data_dir=/data/My Drive"), "eval") == [job_checkpoint,
                                                                                        "data.data_dir=/data/My Drive"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):  # a Hydra app of the caller's own
        for words, message in refusals:
            with pytest.raises(UserInputError, match=message):
                api.train(*words, f"paths.log_dir={tmp_path / 'runs'}")
        with pytest.raises(InterpolationKeyError):
            api.train("hydra.run.dir=${paths.nowhere}")
        assert compose(config_name="eval").task_name == "eval"  # still usable
    assert not HydraConfig.initialized()
    assert not (tmp_path / "elsewhere").exists()
    with pytest.raises(UserInputError, match=r"^settings are strings, as on the command line: "
                                             r"evaluate\('ckpt_path=a.ckpt', 'model=mlp', 'seed=3'\)\.$"):
        api.evaluate("ckpt_path=a.ckpt", model="mlp", seed=3)  # Python's own TypeError named no way out
    # A refused run leaves no dated folder behind (the date folder was new too, so it goes as well); in a folder named
    # with hydra.run.dir, which stays, its log says why it ended, as on the command line.
    assert not (tmp_path / "runs").exists()
    with pytest.raises(UserInputError, match="model.dropout=2 is invalid"):
        api.train("model.dropout=2", f"hydra.run.dir={tmp_path / 'named'}")
    assert "[ERROR] - model.dropout=2 is invalid" in (tmp_path / "named" / "train.log").read_text()


def test_a_loop_over_learning_rates_goes_on_past_a_diverging_one(tmp_path, synthetic_data_dir):
    """What the README tells a notebook to catch."""
    overrides = [o for o in tiny_run_overrides(synthetic_data_dir, tmp_path) if not o.startswith("paths.output_dir")]
    diverging = ["model.batch_norm=false", "model.optimizer.name=sgd", "model.scheduler.name=none"]
    results = {}
    for lr in ("1e30", "0.01"):
        try:
            run = api.train(*overrides, "model=mlp", *diverging, f"model.optimizer.lr={lr}", f"paths.log_dir={tmp_path}")
            results[lr] = run.metrics["status"]
        except TrainingDiverged as err:
            assert isinstance(err, ReportedError)
            results[lr] = str(err)
    assert results["1e30"].startswith("Training diverged at epoch 0") and results["0.01"] == "ok"


def test_a_resume_from_python_leaves_the_callers_torch_settings_as_they_were(tmp_path, synthetic_data_dir, monkeypatch,
                                                                          request, caplog):
    """A resume takes its checkpoint's CPU threads, and Lightning's Trainer sets torch's deterministic mode: the
    notebook's own work after the run, and its later runs, went on with those."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # set, it would keep the resume from changing the threads
    request.addfinalizer(functools.partial(torch.set_num_threads, torch.get_num_threads()))
    request.addfinalizer(functools.partial(torch.use_deterministic_algorithms, torch.are_deterministic_algorithms_enabled(),
                                           warn_only=torch.is_deterministic_algorithms_warn_only_enabled()))
    overrides = [o for o in tiny_run_overrides(synthetic_data_dir, tmp_path) if not o.startswith("paths.output_dir")]
    overrides += ["model=mlp", "model.scheduler.name=none", f"paths.log_dir={tmp_path}"]
    torch.set_num_threads(1)
    first = api.train(*overrides, "trainer.max_epochs=1")
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True, warn_only=True)
    with caplog.at_level(logging.INFO):
        api.train(*overrides, "trainer.max_epochs=2", f"ckpt_path={first.dir / 'checkpoints' / 'last.ckpt'}")
    assert "Using 1 CPU thread, as the run that saved the checkpoint did" in caplog.text
    assert torch.get_num_threads() == 2
    assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()


def test_ddp_that_relaunches_the_script_is_refused_from_python(tmp_path):
    """Lightning's ddp starts the script again for each further device: from a notebook, that is not this run."""
    with pytest.raises(UserInputError, match=r"would start this script again .* use \+\+trainer.strategy=ddp_spawn"):
        api.train("trainer=ddp_cpu", f"paths.log_dir={tmp_path}")


@pytest.mark.parametrize("save_dir, name, version, expected", [
    ("{was}", "tensorboard", "", "{run}/tensorboard"),  # the run folder moved since: its own events
    ("{was}/tb", "tensorboard", "", "{run}/tb/tensorboard"),
    ("{was}", "tbname", "", "{run}/tbname"),
    ("/shared", "tensorboard", "old/place", "/shared/tensorboard/old/place"),  # a folder shared by many runs
])
def test_history_reads_the_events_where_the_runs_config_put_them(tmp_path, save_dir, name, version, expected):
    was, run = "/old/place", tmp_path / "moved"
    run.mkdir()
    (run / "config.yaml").write_text(f"paths:\n  output_dir: {was}\nlogger:\n  tensorboard:\n    save_dir: "
                                     f"{save_dir.format(was=was)}\n    name: {name}\n    version: '{version}'\n")
    assert api.Run(run)._tensorboard_folder() == Path(expected.format(run=run))


def test_a_runs_damaged_files_are_named_not_a_parsers_traceback_or_an_empty_history(tmp_path):
    """A run folder copied half-way, edited, or written on a full disk: metrics.json is refused naming it and what to
    do; a config.yaml that cannot be read keeps history() from nothing it does not need (the logs in the run's
    folder), and an event file TensorBoard cannot read is named, not skipped without a word."""
    from torch.utils.tensorboard import SummaryWriter

    run = tmp_path / "run"
    writer = SummaryWriter(run / "tensorboard")
    for tag, value in (("train/loss", 0.5), ("epoch", 0)):
        writer.add_scalar(tag, value, 4)
    writer.close()
    for damaged, problem in (('{\n  "status": "ok",\n  "test/a', "JSONDecodeError: "), ("[1, 2]", "not a JSON object")):
        (run / "metrics.json").write_text(damaged)
        with pytest.raises(UserInputError, match=rf"^{run / 'metrics.json'} cannot be read \({problem}.*\): cut short "
                                                 r"or edited\. Restore it from a copy, or remove it to open the run"):
            api.Run(run)
    (run / "metrics.json").unlink()

    (run / "config.yaml").write_text("logger:\n  tensorboard: [\n")
    with pytest.warns(UserWarning, match=rf"{run / 'config.yaml'} cannot be read \(ParserError: .*, line 3\): the "
                                         "history was read from the logs in the run's folder"):
        assert api.Run(run).history() == [{"epoch": 0, "train/loss": 0.5}]
    shutil.move(run / "tensorboard", tmp_path / "elsewhere")
    with pytest.raises(UserInputError, match=r"config.yaml cannot be read .* it says where the run's TensorBoard "
                                             r"and CSV logs are, and there are none in .*Restore config.yaml from a "
                                             r"copy\."):
        api.Run(run).history()
    (run / "config.yaml").unlink()

    shutil.move(tmp_path / "elsewhere", run / "tensorboard")
    garbage = run / "tensorboard" / "events.out.tfevents.1796450026.host.1.0"
    garbage.write_bytes(bytes(range(256)) * 4)
    with pytest.warns(UserWarning, match=rf"{garbage}: 1024 of its 1024 bytes cannot be read \(damaged, cut short"):
        assert api.Run(run).history() == [{"epoch": 0, "train/loss": 0.5}]


def test_history_has_the_per_epoch_metrics_and_never_the_learning_rate(tmp_path):
    """The learning rate logged every 5 steps falls on the last step of every other 5-step epoch, as it would with
    trainer.log_every_n_steps=10 and 5 batches per epoch: it must not fill half the rows."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(tmp_path / "tensorboard")
    for epoch in range(4):
        last_step = epoch * 5 + 4
        for tag, value in (("train/loss", 1.0 / (epoch + 1)), ("val/acc", 0.9), ("epoch", epoch)):
            writer.add_scalar(tag, value, last_step)
        if epoch % 2:
            writer.add_scalar("lr", 0.01, last_step)
    writer.add_scalar("test/acc", 0.95, 19)
    # An epoch stopped after its validation (a NaN loss, Ctrl-C after a mid-epoch validation): validated, never ended.
    writer.add_scalar("val/loss", float("nan"), 22)
    writer.add_scalar("epoch", 4, 22)
    writer.close()
    history = api.Run(tmp_path).history()
    assert history[:4] == [{"epoch": e, "train/loss": pytest.approx(1.0 / (e + 1)), "val/acc": pytest.approx(0.9)}
                           for e in range(4)]
    assert len(history) == 5 and history[4]["epoch"] == 4 and math.isnan(history[4]["val/loss"])

    tested = tmp_path / "tested"  # a checkpoint tested alone logs its best validation accuracy: no epoch of its own
    writer = SummaryWriter(tested / "tensorboard")
    for tag, value in (("val/acc_best", 0.98), ("test/acc", 0.97), ("epoch", 0)):
        writer.add_scalar(tag, value, 0)
    writer.close()
    assert api.Run(tested).history() == []


def test_show_displays_the_figures_in_a_notebook_and_lists_them_elsewhere(tmp_path, monkeypatch, capsys):
    for name in ("learning_curves.png", "confusion_matrix.png"):
        (tmp_path / name).write_bytes(b"png")
    run = api.Run(tmp_path)

    shown = []
    ipython = types.ModuleType("IPython")
    display = types.ModuleType("IPython.display")
    display.Image = lambda filename: filename
    display.display = shown.append
    for kernel, expected in ((None, []), (object(), [str(p) for p in run.figures])):
        ipython.get_ipython = lambda kernel=kernel: kernel  # None: IPython installed, but not running a notebook
        monkeypatch.setitem(sys.modules, "IPython", ipython)
        monkeypatch.setitem(sys.modules, "IPython.display", display)
        run.show()
        assert shown == expected
    assert capsys.readouterr().out.split() == [str(tmp_path / "confusion_matrix.png"), str(tmp_path / "learning_curves.png")]
    # No figures: a prediction run is told how to get its preview; a run that trains draws its figures itself.
    empty = tmp_path / "empty"
    empty.mkdir()
    api.Run(empty, predictions=[{"path": "six.png"}]).show()
    api.Run(empty, metrics={"status": "ok"}).show()
    assert capsys.readouterr().out.splitlines() == [f"No figures in {empty} (save_preview=true draws the predictions)",
                                                    f"No figures in {empty}"]


def test_a_run_prints_through_the_callers_console_handler_alone_when_there_is_one(tmp_path, monkeypatch):
    """A second console handler printed every line twice."""
    from src.utils.in_process import _run_handlers

    log_config = {"handlers": {"console": {"stream": "ext://sys.stdout", "formatter": "simple"},
                               "file": {"filename": str(tmp_path / "train.log"), "formatter": "simple"}},
                  "formatters": {"simple": {"format": "%(message)s"}}}
    console, log_file = _run_handlers(log_config, ["console", "file"])
    assert type(console) is logging.StreamHandler and console.stream is sys.stdout
    log_file.close()
    for callers_console in (sys.stdout, sys.stderr):  # stderr: logging.basicConfig()'s
        monkeypatch.setattr(logging.getLogger(), "handlers", [logging.StreamHandler(callers_console)])
        (log_file,) = _run_handlers(log_config, ["console", "file"])
        assert isinstance(log_file, logging.FileHandler)
        log_file.close()


def test_a_notebook_shows_a_reported_error_as_its_message_alone(monkeypatch):
    try:
        raise UserInputError("model.dropout=2 is invalid")
    except UserInputError as error:
        assert error._render_traceback_() == ["UserInputError: model.dropout=2 is invalid"]
        monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
        assert error._render_traceback_()[0] == "Traceback (most recent call last):"


def test_a_ctrl_c_outside_training_is_reported_and_logged_as_on_the_command_line(tmp_path, monkeypatch):
    import threading

    import src.train

    hooks_during_the_run = []

    def interrupted_while_loading(cfg):
        hooks_during_the_run.append(threading.excepthook)
        raise KeyboardInterrupt

    monkeypatch.setattr(src.train, "train", interrupted_while_loading)
    callers_hook = threading.excepthook
    with pytest.raises(RunInterrupted, match=r"^Stopped by Ctrl-C outside training and testing: nothing was saved at "
                                             r"that moment\. Run the same call again\.$"):  # a call, not a command
        api.train(f"paths.log_dir={tmp_path}", "hydra.output_subdir=null")
    # A full disk in TensorBoard's thread is one line during the run, as on the command line; the hook is put back.
    assert getattr(hooks_during_the_run[0], "reports_disk_errors", False) and threading.excepthook is callers_hook
    [folder] = tmp_path.glob("*/*")
    assert "[ERROR] - Stopped by Ctrl-C" in (folder / "train.log").read_text()
    # hydra.output_subdir=null: no record kept (the lock file, empty, is no record: src/utils/run_lock.py)
    assert sorted(path.name for path in folder.iterdir()) == [".run.lock", "train.log"]
    assert api.Run(folder).history() == []  # nothing trained, no TensorBoard events

    def interrupted_after_training(cfg):  # last.ckpt saved, the results not written yet
        last = Path(cfg.callbacks.last_checkpoint.dirpath) / "last.ckpt"
        last.parent.mkdir(parents=True)
        last.write_bytes(b"saved")
        raise KeyboardInterrupt

    monkeypatch.setattr(src.train, "train", interrupted_after_training)
    with pytest.raises(RunInterrupted, match=r"last\.ckpt holds the latest training state; resume with: train\("):
        api.train(f"paths.log_dir={tmp_path / 'after'}")


def test_hydras_other_job_logging_options_work_here_and_on_the_command_line(tmp_path, synthetic_data_dir, capsys):
    overrides = [o for o in tiny_run_overrides(synthetic_data_dir, tmp_path) if not o.startswith("paths.output_dir")]
    root_handlers = logging.getLogger().handlers[:]
    run = api.train(*overrides, "model=mlp", "hydra/job_logging=stdout", f"hydra.run.dir={tmp_path / 'stdout'}")
    assert run.metrics["status"] == "ok" and not list(run.dir.glob("*.log"))  # the console alone
    assert "test accuracy :" in capsys.readouterr().out
    assert logging.getLogger().handlers == root_handlers

    command_line = run_module("src.train", *overrides, "model=mlp", "hydra/job_logging=disabled",
                              f"hydra.run.dir={tmp_path / 'disabled'}")
    assert command_line.returncode == 0, command_line.stderr[-3000:]
    assert "test accuracy :" not in command_line.stdout and not list((tmp_path / "disabled").glob("*.log"))
    assert json.loads((tmp_path / "disabled" / "metrics.json").read_text())["status"] == "ok"
