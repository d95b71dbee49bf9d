"""Training end to end through the Hydra config: run dir contents, checkpoints, TensorBoard, entry point."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.optim.swa_utils import AveragedModel

from src.callbacks.weight_averaging import ema_with_warmup, update_average
from src.data.mnist_datamodule import MNISTDataModule
from src.eval import evaluate
from src.models.cnn import CNN
from src.models.loading import load_network
from src.train import train
from tests.conftest import compose_config, hparams_values, needs_real_mnist, run_module, tiny_run_overrides


def tensorboard_scalars(run_dir: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir / "tensorboard"))
    accumulator.Reload()
    return {tag: [e.value for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_train_writes_a_complete_run_dir(tmp_path, synthetic_data_dir, model):
    cfg = compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path), f"model={model}", "trainer.max_epochs=2"])
    metrics = train(cfg)

    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert metrics["epochs"] == 2 and metrics["status"] == "ok"
    assert all(metrics[key] > 0 for key in ("fit_seconds", "test_seconds", "wall_seconds"))
    assert 0.0 <= metrics["test/acc"] <= 1.0 and metrics["test/loss"] > 0
    # The synthetic digits are easy: a model that trained at all beats chance (0.1) by far.
    assert metrics["val/acc_best"] > 0.5 and metrics["test/acc"] > 0.5

    best = Path(metrics["best_model_path"])
    assert best.parent == tmp_path / "checkpoints" and best.exists()
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
    assert metrics["tested_checkpoint"] == str(best)  # recorded (test_the_best_epoch_is_tested_not_the_last checks it)
    assert (tmp_path / "config.yaml").exists()

    scalars = tensorboard_scalars(tmp_path)
    for tag in ("train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best", "test/acc", "test/loss"):
        assert tag in scalars, f"{tag} missing from TensorBoard"
    assert len(scalars["val/acc"]) == 2  # once per epoch; the sanity check is not logged
    assert scalars["test/acc"][-1] == pytest.approx(metrics["test/acc"])
    assert scalars["val/acc_best"][-1] == pytest.approx(max(scalars["val/acc"]))
    assert "lr" in scalars  # one tag whatever the optimizer, so runs with adam and sgd share a chart
    # The tested checkpoint is the first epoch with the highest validation accuracy (a tie keeps the earlier one).
    assert torch.load(best, weights_only=True)["epoch"] == scalars["val/acc"].index(max(scalars["val/acc"]))
    assert metrics["val/acc_best"] == pytest.approx(max(scalars["val/acc"]))


class SpoilTheLastEpoch(pl.Callback):
    """Zeroes every weight before the last epoch's validation: that epoch is the worst, and last.ckpt holds it."""

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == trainer.max_epochs - 1:
            with torch.no_grad():
                for parameter in pl_module.parameters():
                    parameter.zero_()


def test_the_best_epoch_is_tested_not_the_last(tmp_path, synthetic_data_dir):
    from src.eval import evaluate

    metrics = train(compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path), "model=mlp", "trainer.max_epochs=3",
                                    f"+callbacks.spoil._target_={__name__}.SpoilTheLastEpoch"]))
    assert torch.load(metrics["best_model_path"], weights_only=True)["epoch"] < 2
    assert metrics["test/acc"] > 0.5  # the zeroed weights answer one class for every image: about 0.1
    last = evaluate(compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path / "last"),
                                    f"ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}"], config_name="eval"))
    assert last["test/acc"] < 0.3


class GoodOnlyInTheSanityCheck(pl.Callback):
    """The sanity check validates trained weights; training then starts from zeroed ones, which never do as well."""

    weights: dict = {}  # a trained model's network weights, set by the test

    def on_sanity_check_start(self, trainer, pl_module) -> None:
        pl_module.net.load_state_dict(self.weights)

    def on_train_start(self, trainer, pl_module) -> None:
        with torch.no_grad():
            for parameter in pl_module.parameters():
                parameter.zero_()


def test_the_sanity_checks_validation_never_counts_as_the_best(tmp_path, synthetic_data_dir, monkeypatch):
    good = train(compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path / "good"), "model=mlp"]))
    monkeypatch.setattr(GoodOnlyInTheSanityCheck, "weights",
                        {key.removeprefix("net."): value for key, value in
                         torch.load(good["best_model_path"], weights_only=True)["state_dict"].items() if key.startswith("net.")})
    metrics = train(compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path / "zeroed"), "model=mlp",
                                    f"+callbacks.sanity._target_={__name__}.GoodOnlyInTheSanityCheck"]))
    scalars = tensorboard_scalars(tmp_path / "zeroed")
    assert good["val/acc_best"] > 0.5 and scalars["val/acc"] == [pytest.approx(metrics["val/acc_best"])]
    assert metrics["val/acc_best"] < 0.3  # the zeroed network's, not the sanity check's


@pytest.mark.parametrize("no_logger", ["~logger", "logger=[]"])
def test_a_run_without_any_logger_trains_and_tests(tmp_path, synthetic_data_dir, no_logger):
    cfg = compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path), "model=mlp", no_logger])
    metrics = train(cfg)
    assert metrics["test/acc"] > 0.5 and Path(metrics["best_model_path"]).exists()
    assert not (tmp_path / "tensorboard").exists()


def test_trainer_switches_turn_their_callbacks_off(tmp_path, synthetic_data_dir):
    """Lightning refuses a progress bar or checkpoint callback that its own switch turns off: the switch wins."""
    overrides = [o for o in tiny_run_overrides(synthetic_data_dir, tmp_path) if not o.startswith("callbacks.progress_bar")]
    metrics = train(compose_config([*overrides, "model=mlp", "++trainer.enable_checkpointing=false"]))
    assert metrics["test/acc"] > 0.5 and metrics["best_model_path"] is None and metrics["tested_checkpoint"] is None
    assert not (tmp_path / "checkpoints").exists()


def test_hparams_record_the_precision_lightning_used(tmp_path, synthetic_data_dir):
    train(compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path), "model=mlp", "trainer.precision=16-mixed"]))
    assert hparams_values(tmp_path)["trainer/precision"] == "bf16-mixed"  # Lightning's fallback on a CPU


def test_runs_sharing_a_logger_folder_get_one_subfolder_each(tmp_path, synthetic_data_dir, caplog):
    """With save_dir shared by runs, they mixed their events in one TensorBoard run, each replacing the other's HParams
    row, and Lightning's CSV logger deleted the other's metrics.csv. Each run's subfolder is its folder's whole path:
    two sweeps' jobs have the same names, and so do runs under two paths.log_dir. A resume continues its own."""
    from src.api import Run

    shared = tmp_path / "shared"
    common = ["model=mlp", "model.scheduler.name=none", "logger=[tensorboard,csv]",
              f"logger.tensorboard.save_dir={shared}", f"logger.csv.save_dir={shared}"]
    runs = {"a": tmp_path / "outputs" / "2026-12-03" / "13-48-05", "b": tmp_path / "elsewhere" / "2026-12-03" / "13-48-05"}
    for seed, (name, run) in enumerate(runs.items(), start=1):
        train(compose_config([*tiny_run_overrides(synthetic_data_dir, run), *common, f"seed={seed}",
                              f"paths.log_dir={run.parent.parent}"]))
    caplog.set_level(logging.INFO)
    last = runs["a"] / "checkpoints" / "last.ckpt"
    train(compose_config([*tiny_run_overrides(synthetic_data_dir, runs["a"]), *common, "seed=1", "trainer.max_epochs=2",
                          f"ckpt_path={last}"]))
    subfolders = {name: run.relative_to(run.anchor).as_posix() for name, run in runs.items()}
    event_folders = {p.parent.relative_to(shared / "tensorboard").as_posix()
                     for p in (shared / "tensorboard").rglob("events.out.tfevents.*")}
    assert event_folders == set(subfolders.values()) and not (runs["a"] / "tensorboard").exists()
    assert hparams_values(runs["a"], shared / "tensorboard" / subfolders["a"])["trainer/max_epochs"] == 2
    assert hparams_values(runs["b"], shared / "tensorboard" / subfolders["b"])["seed"] == 2
    assert (shared / "csv" / subfolders["b"] / "metrics.csv").is_file()
    assert f"tensorboard   : tensorboard --logdir {shared}" in caplog.text  # all of them, not the run's folder
    assert [row["epoch"] for row in Run(runs["a"]).history()] == [0, 1]


def test_an_extended_run_shows_its_new_settings_in_hparams(tmp_path, synthetic_data_dir):
    """TensorBoard shows the first HParams session it reads in a run: the extension's must replace the first's."""
    common = [*tiny_run_overrides(synthetic_data_dir, tmp_path), "model=mlp", "model.scheduler.name=none"]
    train(compose_config(common))
    assert hparams_values(tmp_path)["trainer/max_epochs"] == 1
    extended = train(compose_config([*common, "trainer.max_epochs=2", f"ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}"]))
    assert extended["epochs"] == 2 and hparams_values(tmp_path)["trainer/max_epochs"] == 2
    assert len(list((tmp_path / "tensorboard").rglob("*.hparams"))) == 1
    # Without a schedule the learning rate is constant: not charted (Lightning would call it lr-Adam).
    assert not [tag for tag in tensorboard_scalars(tmp_path) if tag.startswith("lr")]


def test_checkpoints_hold_only_plain_values(tmp_path, synthetic_data_dir):
    cfg = compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path), "model=mlp"])
    metrics = train(cfg)
    for path in (Path(metrics["best_model_path"]), tmp_path / "checkpoints" / "last.ckpt"):
        checkpoint = torch.load(path, weights_only=True)  # raises on any pickled object
        assert checkpoint["model_class"] == "src.models.mlp.MLP"
        assert checkpoint["hyper_parameters"]["optimizer"]["name"] == "adam"
        assert "val_acc_best.max_value" in checkpoint["state_dict"]


def test_test_only_from_a_checkpoint_reproduces_the_metrics(tmp_path, synthetic_data_dir, recwarn):
    trained = train(compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path / "a"), "model=mlp"]))
    recwarn.clear()
    tested = train(
        compose_config(
            [*tiny_run_overrides(synthetic_data_dir, tmp_path / "b"), "model=mlp", "train=false",
             f"ckpt_path={trained['best_model_path']}"]
        )
    )
    assert tested["test/acc"] == pytest.approx(trained["test/acc"])
    assert tested["test/loss"] == pytest.approx(trained["test/loss"])
    # What src.eval records of the checkpoint too, under the same keys; the path as an absolute one.
    best = Path(trained["best_model_path"])
    assert {key: tested[key] for key in ("checkpoint", "tested_checkpoint", "model_class", "checkpoint_epoch")} == {
        "checkpoint": str(best), "tested_checkpoint": str(best), "model_class": "src.models.mlp.MLP", "checkpoint_epoch": 0}
    assert tested["val/acc_best"] == trained["val/acc_best"]
    relative = os.path.relpath(best)
    evaluated = evaluate(compose_config([f"ckpt_path={relative}", f"data.data_dir={synthetic_data_dir}",
                                         f"paths.output_dir={tmp_path / 'c'}", "trainer=cpu"], "eval"))
    assert evaluated["checkpoint"] == str(best) and evaluated["val/acc_best"] == trained["val/acc_best"]
    assert evaluated["model_class"] == tested["model_class"] and evaluated["checkpoint_epoch"] == 0
    # Lightning does not restore the training callbacks' state from the file, nor warn that their folder changed.
    assert not [str(w.message) for w in recwarn if "dirpath" in str(w.message) or "callbacks" in str(w.message)]
    assert not (tmp_path / "b" / "checkpoints").exists()


def test_test_only_rebuilds_the_checkpoints_own_network_and_names_a_bad_file(tmp_path, synthetic_data_dir):
    trained = train(compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path / "a"), "model=mlp",
                                    "data.mean=0.5", "data.std=0.6", "seed=7", "data.batch_size=16",
                                    "trainer.max_epochs=2", "callbacks=[default,ema]"]))
    # No model=mlp or data.mean/std here: the checkpoint says what it is and how its inputs were normalized.
    test_only = [*tiny_run_overrides(synthetic_data_dir, tmp_path / "b"), "train=false"]
    tested = train(compose_config([*test_only, f"ckpt_path={trained['best_model_path']}", "data.augment.enabled=false",
                                   "seed=3", "data.batch_size=64", "data.val_size=60"]))
    assert tested["test/acc"] == pytest.approx(trained["test/acc"])
    assert tested["test/loss"] == pytest.approx(trained["test/loss"], rel=1e-5)
    # config.yaml records the network and normalization tested, not the config's model=cnn and data.mean/std.
    saved = OmegaConf.load(tmp_path / "b" / "config.yaml")
    assert saved.model._target_ == "src.models.mlp.MLP" and (saved.data.mean, saved.data.std) == (0.5, 0.6)
    # The HParams row describes the model tested, with the settings it was trained with, not this run's (the
    # augmentation reads the same from the checkpoint, degrees: 8.0, as from the config, degrees: 8).
    row, trained_row = hparams_values(tmp_path / "b"), hparams_values(tmp_path / "a")
    assert row["model"] == "MLP" and row["model/arch"] == trained_row["model/arch"]
    assert row["data/augment"] == trained_row["data/augment"] != "off"
    assert (row["data/batch_size"], row["data/val_size"], row["seed"], row["callbacks/ema_decay"]) == (16, 80, 7, 0.999)
    assert row["trainer/max_epochs"] == torch.load(trained["best_model_path"], weights_only=True)["epoch"] + 1

    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(Path(trained["best_model_path"]).read_bytes()[:1000])
    for bad, message in ((tmp_path / "missing.ckpt", "no such file"), (truncated, "cannot be read as a checkpoint")):
        result = run_module("src.train", *test_only, f"ckpt_path={bad}", f"hydra.run.dir={tmp_path / 'b'}")
        output = result.stdout + result.stderr
        assert result.returncode == 1 and message in output, output[-2000:]
        assert "Traceback" not in output


def test_entry_point_respects_hydra_run_dir(tmp_path, synthetic_data_dir):
    run_dir = tmp_path / "my-run"
    result = run_module("src.train", 
        "experiment=quickcheck", f"hydra.run.dir={run_dir}", f"data.data_dir={synthetic_data_dir}",
        "data.download=false", "data.val_size=80", "data.batch_size=32",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("metrics.json", "config.yaml", "quickcheck.log", ".hydra/config.yaml", "checkpoints/last.ckpt"):
        assert (run_dir / name).exists(), name
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    log_text = (run_dir / "quickcheck.log").read_text()
    assert "test accuracy" in log_text and f"tensorboard --logdir {run_dir}" in log_text
    assert "(100 test images)" in log_text  # the synthetic test set: not called the official 10k one
    # The model summary lists each layer, not only the network as one row (the MLP's first linear layer here).
    assert any(" net.1 " in line and "Linear" in line for line in result.stdout.splitlines()), result.stdout[-3000:]
    # Lightning's messages that say nothing to this project's users are not printed in every run.
    console = result.stdout + result.stderr
    for noise in ("Tip:", "litlogger", "already configured with model summary", "LeafSpec"):
        assert noise not in console, noise



def test_lightning_warnings_no_user_can_act_on_are_silenced():
    """In every run with trainer=ddp_cpu (Lightning's all_gather) or a mixed precision (whose weights are float32, the
    size the summary assumes); a true half precision's warning stays."""
    import warnings

    from src.utils.quiet_lightning import quiet_lightning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_lightning()
        for message in ("torch.distributed.nn.functional.all_gather is deprecated, use "
                        "torch.distributed._functional_collectives.all_gather_single instead.",
                        "Precision bf16-mixed is not supported by the model summary.  Estimated model size in MB will "
                        "not be accurate. Using 32 bits instead.",
                        "Precision transformer-engine is not supported by the model summary.  Estimated model size in "
                        "MB will not be accurate. Using 32 bits instead."):
            warnings.warn(message, UserWarning)
    assert [str(warning.message)[:40] for warning in caught] == ["Precision transformer-engine is not supp"]

def test_part_of_the_test_set_is_reported_as_such(tmp_path, synthetic_data_dir, monkeypatch):
    """Three test images: the figure is not titled the official 10k test set, and digits without a test image get
    no per-class accuracy (it was 0.0)."""
    import src.callbacks.figures as figures
    from src.data.mnist_files import load_split

    titles = []
    real_figure = figures.confusion_matrix_figure
    monkeypatch.setattr(figures, "confusion_matrix_figure", lambda confusion, title: titles.append(title) or real_figure(confusion, title))
    metrics = train(compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path), "model=mlp",
                                    "data.eval_batch_size=3", "++trainer.limit_test_batches=1"]))
    assert metrics["test/images"] == 3
    digits = set(load_split(synthetic_data_dir, "test")[1][:3].tolist())
    assert {key for key in metrics if key.startswith("test/acc_class/")} == {f"test/acc_class/{d}" for d in digits}
    assert titles[-1] == "test set" and "official 10k test set" not in titles


def test_per_class_accuracy_is_the_share_of_each_digits_images_read_right():
    """Not precision: of the four images of a 0, three are read right (0.75), though every image read as 0 is one."""
    from src.models.mlp import MLP

    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2])
    predicted = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    images = torch.zeros(len(labels), 1, 28, 28)
    images[:, 0, 0, 0] = predicted.float()  # the stand-in network reads its answer from the first pixel

    class Answering(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.one_hot(x[:, 0, 0, 0].long(), 10).float()

    model = MLP(optimizer={"name": "adam", "lr": 1e-3})
    model.net = Answering()
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=4)
    results = trainer.test(model, dataloaders=loader, verbose=False)[0]
    per_class = {key: value for key, value in results.items() if key.startswith("test/acc_class/")}
    assert per_class == {"test/acc_class/0": 0.75, "test/acc_class/1": 1.0, "test/acc_class/2": 0.0}
    assert results["test/acc"] == pytest.approx(5 / 7)
    assert results["test/images"] == 7  # all of them, not those read right


def test_missing_data_offline_is_one_clear_error(tmp_path):
    result = run_module("src.train", f"hydra.run.dir={tmp_path / 'run'}", f"data.data_dir={tmp_path / 'empty'}", "data.download=false")
    output = result.stdout + result.stderr
    assert result.returncode == 1
    assert "MNIST files are missing" in output and "train-images-idx3-ubyte" in output
    assert "Traceback" not in output


@pytest.mark.real_data
@needs_real_mnist
def test_cnn_one_epoch_on_real_mnist(tmp_path):
    cfg = compose_config(
        ["model=cnn", "trainer=cpu", "trainer.max_epochs=1", "data.download=false",
         f"paths.output_dir={tmp_path}"]
    )
    metrics = train(cfg)
    assert metrics["test/acc"] >= 0.985, metrics


@pytest.mark.real_data
@needs_real_mnist
def test_the_fast_recipe_reaches_99_percent_on_real_mnist(tmp_path):
    """experiment=fast's promise: >= 99% on the official test set after one epoch (its default seed)."""
    metrics = train(compose_config(["experiment=fast", "trainer=cpu", "data.download=false", f"paths.output_dir={tmp_path}"]))
    assert metrics["test/acc"] >= 0.99, metrics


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_label_smoothing_applies_to_the_training_loss_only():
    import torch.nn.functional as F

    from src.models.mlp import MLP

    torch.manual_seed(0)
    model = MLP({"name": "adam", "lr": 1e-3}, hidden_sizes=[16], label_smoothing=0.2).eval()
    images, labels = torch.randn(8, 1, 28, 28), torch.arange(8)
    with torch.no_grad():
        logits = model(images)
        train_loss, _ = model._step((images, labels), "train")
        val_loss, _ = model._step((images, labels), "val")
    torch.testing.assert_close(train_loss, F.cross_entropy(logits, labels, label_smoothing=0.2))
    torch.testing.assert_close(val_loss, F.cross_entropy(logits, labels))
    assert abs(float(train_loss - val_loss)) > 1e-3  # the two are told apart


def test_ema_keeps_float64_weights_whole_under_64_true(tmp_path, synthetic_data_dir):
    """The average was made before Lightning converted the module to float64: it stayed float32, and the swaps around
    each validation rounded the training weights to float32."""
    ema = ["model=mlp", "callbacks=[default,ema]", "callbacks.ema.decay=0.9", "trainer.precision=64-true"]
    train(compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path), *ema]))
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    raw = {key: value for key, value in checkpoint["current_model_state"].items() if key.startswith("net.")}
    assert all(value.dtype == torch.float64 for value in raw.values() if value.is_floating_point())
    assert any(not torch.equal(value, value.float().double()) for value in raw.values() if value.is_floating_point())
    averaged = [value for key, value in checkpoint["state_dict"].items() if key.startswith("net.")]
    assert all(value.dtype == torch.float64 for value in averaged if value.is_floating_point())


def test_ema_keeps_its_float32_average_whole_under_bf16_true(tmp_path, synthetic_data_dir):
    """Lightning's swaps around each validation copied the float32 average into the bfloat16 module and back: every
    averaged weight came back rounded to bfloat16."""
    ema = ["model=mlp", "callbacks=[default,ema]", "callbacks.ema.decay=0.9", "trainer.precision=bf16-true",
           "+trainer.val_check_interval=5"]  # two validations in the epoch, each a swap there and back
    train(compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path), *ema]))
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    raw = [value for key, value in checkpoint["current_model_state"].items() if key.startswith("net.")]
    assert all(value.dtype == torch.bfloat16 for value in raw if value.is_floating_point())
    averaged = [value for key, value in checkpoint["state_dict"].items() if key.startswith("net.")]
    assert all(value.dtype == torch.float32 for value in averaged if value.is_floating_point())
    assert all(not torch.equal(value, value.bfloat16().float()) for value in averaged if value.is_floating_point())


def test_ema_weights_are_the_ones_saved_and_tested(tmp_path, synthetic_data_dir):
    ema = ["model=mlp", "callbacks=[default,ema]", "callbacks.ema.decay=0.9", "trainer.max_epochs=2"]
    trained = train(compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path / "a"), *ema]))
    checkpoint = torch.load(trained["best_model_path"], weights_only=True)
    averaged, raw = checkpoint["state_dict"], checkpoint["current_model_state"]  # raw weights: kept to resume
    assert any(not torch.equal(averaged[key], raw[key]) for key in raw if key.startswith("net."))

    # Validation used the averaged weights too (it picks the best epoch): the last epoch's logged val/loss is theirs.
    events = EventAccumulator(str(tmp_path / "a" / "tensorboard"))
    events.Reload()
    logged = events.Scalars("val/loss")[-1].value
    network, last = load_network(tmp_path / "a" / "checkpoints" / "last.ckpt")
    datamodule = MNISTDataModule(**last["datamodule_hyper_parameters"])
    datamodule.setup("fit")
    images, labels = datamodule.val_set
    with torch.no_grad():
        averaged_loss = torch.nn.functional.cross_entropy(network(images), labels).item()
        network.load_state_dict({key[len("net."):]: value for key, value in raw.items() if key.startswith("net.")})
        raw_loss = torch.nn.functional.cross_entropy(network(images), labels).item()
    assert logged == pytest.approx(averaged_loss, rel=1e-5) and logged != pytest.approx(raw_loss, rel=1e-3)

    # A test-only pass of the checkpoint, without the callback, uses its state_dict: the averaged weights.
    # The same metrics show that the test after fit used them too, not the raw weights saved beside them.
    tested = train(compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path / "b"), "model=mlp", "train=false",
                                   f"ckpt_path={trained['best_model_path']}"]))
    assert tested["test/loss"] == pytest.approx(trained["test/loss"], rel=1e-6)
    assert tested["test/acc"] == pytest.approx(trained["test/acc"])
    assert tested["val/acc_best"] == trained["val/acc_best"]  # the averaged copy's own metric never validated
    events = EventAccumulator(str(tmp_path / "b" / "tensorboard"))
    events.Reload()  # the HParams row's val/acc_best column: the checkpoint's, as src.eval logs it
    assert [event.value for event in events.Scalars("val/acc_best")] == [pytest.approx(trained["val/acc_best"])]
    assert hparams_values(tmp_path / "b")["callbacks/ema_decay"] == pytest.approx(0.9)  # the checkpoint's, recorded


def test_validating_every_other_epoch_still_saves_last_every_epoch_and_keeps_curves_honest(tmp_path, synthetic_data_dir,
                                                                                         caplog):
    overrides = [*tiny_run_overrides(synthetic_data_dir, tmp_path), "model=mlp", "trainer.max_epochs=3",
                 "trainer.check_val_every_n_epoch=2"]
    train(compose_config(overrides))
    assert "the last 1 epoch(s) are never validated, so the weights tested are not the last ones trained" in caplog.text
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 30  # the third epoch's end, though it ran no validation
    (history,) = [state["history"] for name, state in last["callbacks"].items() if "DiagnosticFigures" in name]
    assert [row["epoch"] for row in history] == [0, 1, 2]
    assert ["val/acc" in row for row in history] == [False, True, False]  # not epoch 1's value repeated


class SigtermInSecondValidation(pl.Callback):
    """Lightning's SIGTERM handling during epoch 1's validation, while the averaged weights are in the module;
    remembers both sets of weights at that moment."""

    last: SigtermInSecondValidation | None = None  # the instance the run built, for the test to read

    def __init__(self) -> None:
        SigtermInSecondValidation.last = self

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.raw = {k: v.clone() for k, v in pl_module.state_dict().items()}  # the last batch's: what validation sets aside

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        from pytorch_lightning.utilities.exceptions import SIGTERMException

        if trainer.current_epoch == 1 and not trainer.sanity_checking:
            self.averaged = {k: v.clone() for k, v in pl_module.state_dict().items()}
            raise SIGTERMException()


def test_an_interruption_during_ema_validation_saves_raw_and_averaged_weights_in_their_places(tmp_path, synthetic_data_dir):
    from src.errors import RunInterrupted

    ema = ["model=mlp", "callbacks=[default,ema]", "callbacks.ema.decay=0.9", "trainer.max_epochs=3",
           f"+callbacks.stop._target_={__name__}.SigtermInSecondValidation"]
    cfg = compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path), *ema])
    with pytest.raises(RunInterrupted, match="Training stopped by SIGTERM at epoch 1"):
        train(cfg)
    stop = SigtermInSecondValidation.last
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert any(not torch.equal(stop.averaged[k], stop.raw[k]) for k in stop.raw if k.startswith("net."))
    for key in (k for k in stop.raw if k.startswith("net.")):  # the network's weights, batch-norm statistics too
        assert torch.equal(checkpoint["state_dict"][key], stop.averaged[key]), key
        assert torch.equal(checkpoint["current_model_state"][key], stop.raw[key]), key



class SigtermInSecondEpoch(pl.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        from pytorch_lightning.utilities.exceptions import SIGTERMException

        if trainer.current_epoch == 1:
            raise SIGTERMException()


def test_a_stop_without_last_checkpoints_names_the_best_epochs(tmp_path, synthetic_data_dir):
    """With callbacks.last_checkpoint=null the message said no checkpoint callback was configured and nothing was
    saved, while the best epoch's checkpoint was there."""
    from src.errors import RunInterrupted

    stop = ["model=mlp", "trainer.max_epochs=2", "callbacks.last_checkpoint=null",
            f"+callbacks.stop._target_={__name__}.SigtermInSecondEpoch"]
    with pytest.raises(RunInterrupted) as stopped:
        train(compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path), *stop]))
    best = tmp_path / "checkpoints" / "epoch000.ckpt"
    assert best.is_file() and str(stopped.value).startswith(
        f"Training stopped by SIGTERM at epoch 1, step 11, without a checkpoint of this state (callbacks.last_checkpoint "
        f"is off). The best epoch's checkpoint so far is {best}; to train on from there, resume with: ")

class SigtermInSanityCheck(pl.Callback):
    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        from pytorch_lightning.utilities.exceptions import SIGTERMException

        if trainer.sanity_checking:
            raise SIGTERMException()


def test_an_interruption_before_the_first_step_names_no_checkpoint_that_was_not_written(tmp_path, synthetic_data_dir):
    """The sanity check saves nothing: advice to resume from a last.ckpt that does not exist would fail (a SLURM
    requeue script running it, say); a resumed run's advice names the checkpoint it started from."""
    from src.errors import RunInterrupted

    stop = ["model=mlp", f"+callbacks.stop._target_={__name__}.SigtermInSanityCheck"]
    cfg = compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path / "new"), *stop])
    with pytest.raises(RunInterrupted) as stopped:
        train(cfg)
    assert str(stopped.value) == ("Training stopped by SIGTERM before its first step: nothing was trained or saved. "
                                  "Run the same command again.")
    assert not (tmp_path / "new" / "checkpoints" / "last.ckpt").exists()

    first = tmp_path / "first"
    no_schedule = "model.scheduler.name=none"  # its length is fixed at the start: a longer run would be refused
    train(compose_config([*tiny_run_overrides(synthetic_data_dir, first), "model=mlp", no_schedule]))
    started_from = first / "checkpoints" / "last.ckpt"
    cfg = compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path / "resumed"), *stop,
                          no_schedule, f"ckpt_path={started_from}", "trainer.max_epochs=2"])
    with pytest.raises(RunInterrupted) as stopped:
        train(cfg)
    assert str(stopped.value).startswith(f"Training stopped by SIGTERM before its first step, so nothing was saved: "
                                         f"{started_from} is still the last state; resume with: ")
    assert str(stopped.value).endswith(f"ckpt_path={started_from}")
    assert not (tmp_path / "resumed" / "checkpoints" / "last.ckpt").exists()


def test_a_stop_without_the_runs_checkpoints_names_lightnings_checkpoint_of_the_last_epoch(tmp_path, synthetic_data_dir,
                                                                                          monkeypatch):
    """callbacks=null: "nothing was saved", while Lightning's own checkpoint of epoch 0 lay in the logger's folder."""
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    from src.errors import RunInterrupted
    from src.models.classifier import DigitClassifier

    trains = DigitClassifier.on_train_batch_end

    def sigterm_in_the_second_epoch(self, outputs, batch, batch_idx):  # no callback of one's own: callbacks=null
        trains(self, outputs, batch, batch_idx)
        if self.trainer.current_epoch == 1:
            raise SIGTERMException()

    monkeypatch.setattr(DigitClassifier, "on_train_batch_end", sigterm_in_the_second_epoch)
    tiny = [word for word in tiny_run_overrides(synthetic_data_dir, tmp_path) if not word.startswith("callbacks.")]
    with pytest.raises(RunInterrupted) as stopped:
        train(compose_config([*tiny, "model=mlp", "callbacks=[]", "trainer.max_epochs=3"]))
    (kept,) = tmp_path.glob("tensorboard/**/checkpoints/*.ckpt")
    assert str(stopped.value).startswith(
        "Training stopped by SIGTERM at epoch 1, step 11, without a checkpoint of this state (the run has none of its "
        f"own checkpoint callbacks). Lightning's own checkpoint of the last finished epoch is {kept}; resume with: ")
    assert torch.load(kept, weights_only=True)["epoch"] == 0

    # Ctrl-C there aborts at once (no callback stops gracefully): "No checkpoint had been saved yet" it said.
    def ctrl_c_in_the_second_epoch(self, outputs, batch, batch_idx):
        trains(self, outputs, batch, batch_idx)
        if self.trainer.current_epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(DigitClassifier, "on_train_batch_end", ctrl_c_in_the_second_epoch)
    tiny = [word for word in tiny_run_overrides(synthetic_data_dir, tmp_path / "ctrl_c") if not word.startswith("callbacks.")]
    with pytest.raises(RunInterrupted) as aborted:
        train(compose_config([*tiny, "model=mlp", "callbacks=[]", "trainer.max_epochs=3"]))
    (kept,) = (tmp_path / "ctrl_c").glob("tensorboard/**/checkpoints/*.ckpt")
    assert str(aborted.value).startswith(f"Training aborted by Ctrl-C at epoch 1, step 11, without saving. {kept} holds "
                                         "the last saved state; resume with: ")


def test_a_run_that_diverges_keeps_its_row_in_the_hparams_table(tmp_path, synthetic_data_dir):
    """The row was written only at the end of a run: a sweep's diverged jobs, the ones a learning-rate sweep is run to
    find, were missing from the HParams table."""
    from src.errors import TrainingDiverged

    diverging = ["model=mlp", "model.batch_norm=false", "model.optimizer.name=sgd", "model.optimizer.lr=1e30",
                 "model.scheduler.name=none"]
    with pytest.raises(TrainingDiverged):
        train(compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path), *diverging]))
    row = hparams_values(tmp_path)
    assert row["optimizer/lr"] == 1e30 and row["optimizer/name"] == "sgd" and row["model"] == "MLP"


class CtrlCInSanityCheck(pl.Callback):
    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        import signal

        from src.callbacks.safety import GracefulStop

        if trainer.sanity_checking and batch_idx == 0:
            (stop,) = [cb for cb in trainer.callbacks if isinstance(cb, GracefulStop)]
            stop._request_stop(signal.SIGINT, None)


def test_ctrl_c_in_the_sanity_check_stops_it_at_once(tmp_path, synthetic_data_dir, caplog):
    """It waited for the end of the first training batch: the whole sanity check ran (all of validation with
    num_sanity_val_steps=-1), then a step was trained and saved."""
    import signal

    from src.errors import RunInterrupted

    stop = ["model=mlp", "++trainer.num_sanity_val_steps=2", f"+callbacks.stop._target_={__name__}.CtrlCInSanityCheck"]
    previous_handler = signal.getsignal(signal.SIGINT)
    try:
        with caplog.at_level(logging.WARNING), pytest.raises(RunInterrupted) as stopped:
            train(compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path), *stop]))
    finally:
        signal.signal(signal.SIGINT, previous_handler)  # the callback stood in for a real Ctrl-C
    assert str(stopped.value) == ("Training stopped by Ctrl-C before its first step: nothing was trained or saved. "
                                  "Run the same command again.")
    assert stopped.value.exit_code == 130
    assert "Ctrl-C: stopping the sanity check after this batch, before any training step." in caplog.messages
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())
    assert hparams_values(tmp_path)["model"] == "MLP"  # a stopped sweep job has its row in the HParams table too


def test_an_interruption_after_training_says_to_resume_from_the_saved_state(tmp_path, synthetic_data_dir, monkeypatch,
                                                                           caplog):
    """After the fit, before the results are written, last.ckpt is there: "run the same command again" would be
    refused in a fixed hydra.run.dir and would train from scratch in a new one."""
    import signal

    import src.utils.hparams
    from src.utils.run import run_reporting_failures

    monkeypatch.setattr(src.utils.hparams, "log_run_hparams", lambda *args: os.kill(os.getpid(), signal.SIGTERM))
    cfg = compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path), "model=mlp"])
    handler = signal.getsignal(signal.SIGTERM)
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exited:
        run_reporting_failures(train, cfg)
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert exited.value.code == 143 and last.is_file()
    assert (f"Stopped by SIGTERM outside training and testing: nothing was saved at that moment. {last} holds the "
            f"latest training state; resume with: ") in caplog.text
    assert f"ckpt_path={last}" in caplog.text and signal.getsignal(signal.SIGTERM) is handler  # put back


def test_ema_decay_warms_up_so_the_average_follows_early_training():
    update = ema_with_warmup(0.999)
    for n, expected in ((1, 1 - 2 / 11), (100_000, 0.001)):
        averages, currents = [torch.zeros(3), torch.zeros(2)], [torch.ones(3), torch.ones(2)]
        update(averages, currents, torch.tensor(n))  # every tensor of a device and dtype at once, in place
        for average in averages:
            torch.testing.assert_close(average, torch.full_like(average, expected))
    counters = [torch.tensor(100)]  # batch norm's num_batches_tracked: averaged as well, rounded down
    update(counters, [torch.tensor(200)], torch.tensor(100_000))
    assert counters[0].dtype == torch.int64 and counters[0].item() == 100

    # A weight that moves 1.0 per step: after 200 steps the warmed-up average sits near the recent values,
    # where a fixed 0.999 would still be mostly the initial weight (about 20).
    network = torch.nn.Linear(1, 1, bias=False)
    averaged = AveragedModel(network, multi_avg_fn=update)
    for step in range(1, 201):
        network.weight.data.fill_(step)
        averaged.update_parameters(network)
    assert 170 < averaged.module.weight.item() < 200


def test_the_ema_update_is_torchs_without_reading_its_counter_back(monkeypatch):
    """On a GPU every read of the counter makes the host wait for the step. The update must equal torch's
    AveragedModel.update_parameters, bitwise, batch norm's statistics and integer step counter included."""
    network = CNN(optimizer={"name": "adam", "lr": 1e-3}).net
    torch_average = AveragedModel(network, multi_avg_fn=ema_with_warmup(0.99), use_buffers=True)
    our_average = AveragedModel(network, multi_avg_fn=ema_with_warmup(0.99), use_buffers=True)
    generator = torch.Generator().manual_seed(0)
    reads = []
    for update in range(12):
        with torch.no_grad():
            for tensor in [*network.parameters(), *network.buffers()]:
                tensor.add_(torch.randn(tensor.shape, generator=generator).to(tensor.dtype) if tensor.is_floating_point()
                            else torch.tensor(3))
        torch_average.update_parameters(network)
        with monkeypatch.context() as patch:
            patch.setattr(torch.Tensor, "__bool__", lambda tensor: reads.append(tensor) or True)
            patch.setattr(torch.Tensor, "item", lambda tensor: reads.append(tensor))
            update_average(our_average, network, first=update == 0)
        for (name, expected), actual in zip(torch_average.state_dict().items(), our_average.state_dict().values()):
            assert torch.equal(actual, expected), (update, name)
    assert not reads and int(our_average.n_averaged) == 12

    with monkeypatch.context() as patch:  # the check above can fail: torch's own update reads the counter back
        patch.setattr(torch.Tensor, "__bool__", lambda tensor: reads.append(tensor) or True)
        torch_average.update_parameters(network)
    assert reads


def train_metrics_seen_by_callbacks() -> tuple[list[dict[str, float]], pl.Callback]:
    """(what a callback's `on_train_epoch_end` sees of this epoch's training metrics, that callback)."""
    seen: list[dict[str, float]] = []

    class Recorder(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module) -> None:
            seen.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")})

    return seen, Recorder()


@pytest.mark.parametrize("stop", [{"max_epochs": 2}, {"max_steps": 3}], ids=["whole epochs", "max_steps mid-epoch"])
def test_training_metrics_are_logged_once_per_epoch_before_callbacks_read_them(synthetic_data_dir, stop):
    """Logged after each epoch's last batch (not per step, which costs Lightning's Python time; not in the
    module's on_train_epoch_end, which runs after the callbacks'), and for an epoch cut short by max_steps."""
    from src.data.mnist_datamodule import MNISTDataModule
    from src.models.mlp import MLP

    seen, recorder = train_metrics_seen_by_callbacks()
    model = MLP(optimizer={"name": "adam", "lr": 1e-3}, hidden_sizes=[16])
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[recorder], **stop)
    trainer.fit(model, datamodule=MNISTDataModule(str(synthetic_data_dir), download=False, val_size=80, batch_size=32))

    final = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
    assert set(final) == {"train/loss", "train/acc"} and final["train/loss"] > 0
    if "max_epochs" in stop:
        assert len(seen) == 2 and seen[-1] == final  # this epoch's values, not the previous epoch's
        assert seen[0] != seen[1]
    assert not model.train_metrics.update_called  # reset for the next epoch


def test_epoch_loss_and_accuracy_are_per_image_over_uneven_batches():
    from src.models.mlp import MLP

    model = MLP(optimizer={"name": "adam", "lr": 1e-3}, hidden_sizes=[16], dropout=0.0, batch_norm=False).eval()
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randn(n, 1, 28, 28, generator=generator), torch.randint(0, 10, (n,), generator=generator)) for n in (3, 1)]
    with torch.no_grad():
        losses = [float(model._step(batch, "train")[0]) for batch in batches]
        correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in batches)
    loss, acc = model.train_metrics.compute()
    assert float(loss) == pytest.approx((3 * losses[0] + losses[1]) / 4)  # not the mean of the 2
    assert float(acc) == correct / 4


def test_checkpoints_with_the_older_torchmetrics_training_states_still_load():
    """Checkpoints saved before LossAndAccuracy hold the epoch's training sums as MeanMetric and MulticlassAccuracy
    states (`train_loss.*`, `train_acc.*`): they load strictly, as the same sums, also inside weight averaging's copy;
    a damaged one is refused by the strict load, as any other."""
    from torchmetrics import MeanMetric
    from torchmetrics.classification import MulticlassAccuracy

    from src.models.mlp import MLP

    settings = {"optimizer": {"name": "adam", "lr": 1e-3}, "hidden_sizes": [16], "dropout": 0.0}
    torch.manual_seed(0)
    model = MLP(**settings).eval()
    older_loss = MeanMetric(nan_strategy="disable")
    older_acc = MulticlassAccuracy(num_classes=10, average="micro", validate_args=False)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n in (5, 3):
            images, labels = torch.randn(n, 1, 28, 28, generator=generator), torch.randint(0, 10, (n,), generator=generator)
            labels[:2] = model(images[:2]).argmax(dim=1)  # some right, some wrong: a count that can be told apart
            loss, logits = model._step((images, labels), "train")
            older_loss.update(loss.expand(n))  # what the classifier did before
            older_acc.update(logits, labels)
    older = {key: value for key, value in model.state_dict().items() if not key.startswith("train_metrics.")}
    for name, metric in (("train_loss", older_loss), ("train_acc", older_acc)):
        metric.persistent(True)
        older.update({f"{name}.{key}": value for key, value in metric.state_dict().items()})

    restored = MLP(**settings)
    restored.load_state_dict(older)
    restored_sums, sums = (
        {name: getattr(metric, name) for name in ("loss_sum", "correct", "images")}
        for metric in (restored.train_metrics, model.train_metrics))
    assert 0 < sums["correct"] < sums["images"]
    torch.testing.assert_close(restored_sums, sums)  # dtypes and shapes too
    averaged = AveragedModel(MLP(**settings))
    averaged.load_state_dict({"n_averaged": torch.tensor(1), **{f"module.{key}": value for key, value in older.items()}})
    assert int(averaged.module.train_metrics.correct) == int(model.train_metrics.correct)
    damaged = {key: value for key, value in older.items() if key != "train_acc.tp"}
    with pytest.raises(RuntimeError, match="train_loss.mean_value"):
        MLP(**settings).load_state_dict(damaged)


def test_metric_states_keep_float32_when_the_module_is_converted_to_16_bits():
    """trainer.precision=bf16-true converts the module with .to(dtype): an epoch's loss sum in bfloat16 would stop
    growing (430 batches of 128 at loss 0.1 gave a mean of 0.075), and the best accuracy would be rounded."""
    from src.models.mlp import MLP

    model = MLP(optimizer={"name": "adam", "lr": 1e-3}, hidden_sizes=[16]).to(torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16
    loss, logits, labels = torch.tensor(0.1, dtype=torch.bfloat16), torch.zeros(128, 10), torch.zeros(128, dtype=torch.long)
    for _ in range(430):
        model.train_metrics.update(loss, logits, labels)
    assert float(model.train_metrics.compute()[0]) == pytest.approx(float(loss), rel=1e-6)
    model.train_metrics.reset()
    model.val_acc_best(torch.tensor(0.9923))
    assert model.train_metrics.loss_sum.dtype == model.val_acc_best.max_value.dtype == torch.float32
    assert model.best_val_acc() == pytest.approx(0.9923, rel=1e-7)


def test_metric_states_loaded_before_the_module_is_converted_to_16_bits_keep_their_values():
    """A resume loads the checkpoint before Lightning converts the module to bfloat16: the states were converted too and
    then back to float32, rounded (an epoch's loss sum of 657 came back as 656, a best accuracy of 0.9923 as 0.9922)."""
    from src.models.mlp import MLP

    model = MLP(optimizer={"name": "adam", "lr": 1e-3}, hidden_sizes=[16])
    model.train_metrics.loss_sum.fill_(657.0)
    model.val_acc_best(torch.tensor(0.9923))
    model.to(torch.bfloat16)
    assert model.train_metrics.loss_sum.dtype == torch.float32 and float(model.train_metrics.loss_sum) == 657.0
    assert model.best_val_acc() == pytest.approx(0.9923, rel=1e-7)
