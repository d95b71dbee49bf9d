"""A model of one's own, as README's "Add a model of your own" describes it, and the mistakes made on the way."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
import types

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from src import PROJECT_ROOT
from src.errors import UserInputError
from src.eval import evaluate
from src.models.classifier import DigitClassifier
from src.models.loading import load_network
from src.train import train
from tests.conftest import compose_config, tiny_run_overrides


class TinyNet(DigitClassifier):
    """One hidden layer of `width` units; `outputs` other than 10 is the mistake of a wrong head."""

    def __init__(self, optimizer: dict, scheduler: dict | None = None, width: int = 16, outputs: int = 10,
                 label_smoothing: float = 0.0, compile: bool = False, channels_last: bool = False,
                 cuda_graph: bool | str = False) -> None:
        super().__init__(optimizer, scheduler, label_smoothing=label_smoothing, compile=compile,
                         channels_last=channels_last, cuda_graph=cuda_graph)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, width), nn.ReLU(), nn.Linear(width, outputs))


class PlainModule(pl.LightningModule):
    def __init__(self, optimizer: dict, scheduler: dict | None = None, **settings) -> None:
        super().__init__()
        self.net = nn.Linear(28 * 28, 10)


@pytest.fixture
def modules(monkeypatch):
    """The classes above as if in src/models/tinynet.py (and a copy of TinyNet in a package of one's own)."""
    for name, classes in (("src.models.tinynet", [TinyNet, PlainModule]), ("mymodels.tinynet", [TinyNet])):
        module = types.ModuleType(name)
        for cls in classes:
            copy = type(cls.__name__, (cls,), {"__module__": name})
            setattr(module, cls.__name__, copy)
        monkeypatch.setitem(sys.modules, name, module)
    def make_tiny_net(**settings) -> TinyNet:  # a class made inside a function: no module has it
        local = type("Local", (TinyNet,), {"__module__": "src.models.tinynet",
                                           "__qualname__": "make_tiny_net.<locals>.Local"})
        return local(**settings)

    sys.modules["src.models.tinynet"].make_tiny_net = make_tiny_net
    package = types.ModuleType("mymodels")
    package.tinynet = sys.modules["mymodels.tinynet"]
    monkeypatch.setitem(sys.modules, "mymodels", package)


def _own_model(target: str) -> list[str]:
    # The MLP's option, its settings swapped for the class's own (a conf/model/tinynet.yaml does the same).
    return ["model=mlp", f"model._target_={target}", "~model.hidden_sizes", "~model.dropout", "~model.batch_norm"]


def test_a_model_of_ones_own_trains_evaluates_and_classifies(tmp_path, synthetic_data_dir, modules):
    run_dir = tmp_path / "run"
    metrics = train(compose_config([*tiny_run_overrides(synthetic_data_dir, run_dir), *_own_model("src.models.tinynet.TinyNet"),
                                    "+model.width=8"]))
    assert metrics["status"] == "ok" and 0 <= metrics["test/acc"] <= 1
    checkpoint = torch.load(metrics["best_model_path"], weights_only=True)
    assert checkpoint["model_class"] == "src.models.tinynet.TinyNet" and checkpoint["hyper_parameters"]["width"] == 8
    # src.eval and src.predict rebuild it from the checkpoint (predict: the whole classifier, as its network is not
    # among the built-in ones).
    tested = evaluate(compose_config([f"ckpt_path={metrics['best_model_path']}", f"data.data_dir={synthetic_data_dir}",
                                      "data.download=false", "data.val_size=80", "trainer=cpu",
                                      f"paths.output_dir={tmp_path / 'eval'}"], "eval"))
    assert tested["test/acc"] == metrics["test/acc"]
    network, _ = load_network(metrics["best_model_path"])
    assert isinstance(network, DigitClassifier) and network(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("target, message", [
    ("mymodels.tinynet.TinyNet", r"model._target_=mymodels.tinynet.TinyNet makes a mymodels.tinynet.TinyNet, which its "
                                 r"checkpoints could not be loaded as: src.eval, src.predict and a resume load a model "
                                 r"class only from the top level of a module under src/models/"),
    ("src.models.tinynet.make_tiny_net", r"makes a src.models.tinynet.make_tiny_net.<locals>.Local, which its "
                                         r"checkpoints could not be loaded as"),  # a class made inside a function
    ("src.models.tinynet.PlainModule", r"model._target_=src.models.tinynet.PlainModule is not a DigitClassifier "
                                       r"\(src/models/classifier.py\)"),
    ("torch.nn.Linear", r"^model._target_=torch.nn.Linear is not a DigitClassifier"),  # not: "hidden_sizes is not a setting"
    ("src.models.no_such_module.Net", r"^model._target_=src.models.no_such_module.Net cannot be imported: .*No module named"),
])
def test_a_model_whose_checkpoints_could_not_be_used_is_refused_before_training(tmp_path, synthetic_data_dir, modules,
                                                                                target, message):
    """Before, the first trained to the end and only src.eval refused its checkpoints; the second failed with a
    traceback once trained."""
    with pytest.raises(UserInputError, match=message):
        train(compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path / "run"), *_own_model(target)]))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_model_config_without_a_class_or_with_a_wrong_head_is_one_line(tmp_path, synthetic_data_dir, modules):
    tiny = tiny_run_overrides(synthetic_data_dir, tmp_path / "run")
    with pytest.raises(UserInputError, match=r"^model has no _target_: its config must name the class to build, e\.g\. "
                                             r"`_target_: src\.models\.cnn\.CNN`\.$"):
        train(compose_config([*tiny, "~model._target_"]))
    with pytest.raises(UserInputError, match=r"^TinyNet returned \(50, 5\) for 50 images: a model must return 10 logits "
                                             r"per image, N×10\.$"):
        train(compose_config([*tiny, *_own_model("src.models.tinynet.TinyNet"), "+model.outputs=5"]))


def test_early_stoppings_reason_names_the_value_it_measured_improvements_against():
    """"(best 0.6160)" beside a best validation accuracy of 75.90%: gains below min_delta leave its reference behind."""
    from pytorch_lightning.callbacks import EarlyStopping
    from pytorch_lightning.callbacks.early_stopping import EarlyStoppingReason

    from src.callbacks.early_stop import stop_reason

    callback = EarlyStopping(monitor="val/acc", mode="max", min_delta=0.5, patience=1)
    callback.best_score, callback.stopping_reason = torch.tensor(0.616), EarlyStoppingReason.PATIENCE_EXHAUSTED
    assert stop_reason(callback) == "val/acc did not improve on 0.6160 by more than 0.5 in 1 validation"


def test_a_run_ended_by_early_stopping_stays_ended_when_resumed(tmp_path, synthetic_data_dir, caplog):
    """A resubmitted job: Lightning restores the stop's record, not the stop, and trained on towards max_epochs."""
    run_dir = tmp_path / "run"
    # No improvement can reach min_delta=1: the second epoch's validation stops the run.
    settings = [*tiny_run_overrides(synthetic_data_dir, run_dir), "model=mlp", "trainer.max_epochs=4",
                "callbacks=[default,early_stopping]", "callbacks.early_stopping.patience=1",
                "callbacks.early_stopping.min_delta=1"]
    first = train(compose_config(settings))
    assert first["epochs"] == 2
    assert re.fullmatch(r"after 2 of 4 epochs: val/acc did not improve on [01]\.\d{4} by more than 1 in 1 validation",
                        first["stopped_early"])
    last = run_dir / "checkpoints" / "last.ckpt"
    step = torch.load(last, weights_only=True)["global_step"]
    caplog.set_level(logging.INFO)
    again = train(compose_config([*settings, f"ckpt_path={last}"]))
    assert torch.load(last, weights_only=True)["global_step"] == step
    assert again["epochs"] == 2 and again["stopped_early"] == first["stopped_early"]
    assert again["test/acc"] == first["test/acc"]
    assert ("Nothing left to train: early stopping had ended its run after 2 of 4 epochs, so its run's best checkpoint "
            "is tested again.") in caplog.text
    assert json.loads((run_dir / "metrics.json").read_text())["stopped_early"] == first["stopped_early"]


def test_stopped_early_says_so_only_when_the_run_ended_before_max_epochs(tmp_path, synthetic_data_dir, caplog):
    """Lightning keeps the record of a stop that min_epochs overruled, or that came in the last epoch."""
    def run(folder: str, *stopping: str) -> dict:
        return train(compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path / folder), "model=mlp",
                                     "trainer.max_epochs=3", "callbacks=[default,early_stopping]", *stopping]))

    never_better = ["callbacks.early_stopping.patience=1", "callbacks.early_stopping.min_delta=1"]
    assert "stopped_early" not in run("a", *never_better, "++trainer.min_epochs=3")  # stopped at epoch 2, overruled
    caplog.clear()
    with caplog.at_level("INFO", logger="src.utils.run"):
        stopped = run("b", *never_better, "++trainer.min_epochs=1")
    assert stopped["stopped_early"].startswith("after 2 of 3 epochs: ")
    # The run's closing summary says so too, beside its best validation accuracy and best checkpoint.
    assert f"best val acc  : {stopped['val/acc_best']:.2%}" in caplog.text
    assert f"stopped early : {stopped['stopped_early']}" in caplog.text
    assert f"checkpoint    : {stopped['best_model_path']}" in caplog.text
    # Lightning's own message has the comparison the wrong way round here: 'val/acc = 0.4 > 1.01'.
    assert run("c", "+callbacks.early_stopping.divergence_threshold=1.01")["stopped_early"] == (
        "after 1 of 3 epochs: val/acc fell below the divergence threshold 1.01")


@pytest.mark.parametrize("setting, message", [
    ("callbacks.early_stopping.monitor=val/los", "Early stopping conditioned on metric `val/los` which is not available."),
    ("callbacks.model_checkpoint.monitor=val/los", "`ModelCheckpoint(monitor='val/los')` could not find the monitored key"),
])
def test_a_callback_watching_a_metric_nobody_logs_is_one_line(tmp_path, synthetic_data_dir, setting, message):
    with pytest.raises(UserInputError) as refused:
        train(compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path / "run"), "model=mlp",
                              "callbacks=[default,early_stopping]", setting]))
    assert str(refused.value).startswith("A callback watches a metric this run does not log: ")
    assert message in str(refused.value) and "val/loss" in str(refused.value) and "\n" not in str(refused.value)


def test_the_readmes_model_of_ones_own_works_as_written(tmp_path, synthetic_data_dir):
    """The files README.md shows, written where it says into a copy of the project, train and evaluate."""
    project = tmp_path / "project"
    for folder in ("src", "conf"):
        shutil.copytree(PROJECT_ROOT / folder, project / folder, ignore=shutil.ignore_patterns("__pycache__"))
    readme = (PROJECT_ROOT / "README.md").read_text()
    section = readme[readme.index("### Add a model of your own"):]
    code = re.search(r"```python\n(# (src/models/\S+)\n.*?)```", section, re.S)
    config = re.search(r"```yaml\n(# (conf/model/\S+):  (python -m src.train .*?)\n.*?)```", section, re.S)
    for block in (code, config):
        (project / block.group(2)).write_text(block.group(1))
    data = [f"data.data_dir={synthetic_data_dir}", "data.download=false", "data.val_size=80", "trainer=cpu",
            "callbacks.progress_bar=null", "++trainer.enable_progress_bar=false"]

    def run(*words: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", *words, *data], cwd=project, capture_output=True, text=True,
                              timeout=300)

    command = config.group(3).split()[2:]  # python -m src.train model=lenet model.width=8
    trained = run(*command, "trainer.max_epochs=1", f"hydra.run.dir={tmp_path / 'run'}")
    assert trained.returncode == 0, trained.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["best_model_path"].startswith(str(tmp_path / "run"))  # the copy's src ran, not this project's
    checkpoint = torch.load(metrics["best_model_path"], weights_only=True)
    assert checkpoint["model_class"] == "src.models.lenet.LeNet" and checkpoint["hyper_parameters"]["width"] == 8
    tested = run("src.eval", f"ckpt_path={metrics['best_model_path']}", f"hydra.run.dir={tmp_path / 'eval'}")
    assert tested.returncode == 0, tested.stderr[-3000:]
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["test/acc"] == metrics["test/acc"]


def test_a_class_that_cannot_be_imported_is_one_message_with_nothing_logged_before_it(caplog):
    from src.models.loading import check_model_class

    hydras_log = logging.getLogger("hydra.utils")
    level = hydras_log.level
    hydras_log.setLevel(logging.INFO)
    try:
        with caplog.at_level(logging.DEBUG), pytest.raises(
                UserInputError, match=r"^model\._target_=src\.models\.cnn\.CNN\. cannot be imported: \S"):
            check_model_class("src.models.cnn.CNN.")
        assert not [record for record in caplog.records if record.name == "hydra.utils"]
        assert hydras_log.level == logging.INFO  # Hydra's own logging as it was
    finally:
        hydras_log.setLevel(level)
