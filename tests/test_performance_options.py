"""The speed switches users expect each train correctly (correctness only: speed is measured by src.bench)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities.model_summary import ModelSummary

from src.models.cnn import CNN
from src.models.loading import load_classifier
from src.models.mlp import MLP
from src.train import train
from tests.conftest import PROJECT_ROOT, compose_config, run_module, tiny_run_overrides


def switch_in_effect(model: CNN) -> dict[str, bool]:
    """Which speed switches a training step of `model` actually runs with."""
    return {
        "bf16-mixed": torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16,
        "channels_last": model.net[1][0].weight.is_contiguous(memory_format=torch.channels_last),
        "compile": "_compiled_net" in model.__dict__,
    }


@pytest.mark.parametrize(
    "switch, override",
    [
        ("bf16-mixed", "trainer.precision=bf16-mixed"),  # autocast to bfloat16; on a GPU this is the fast path
        ("channels_last", "model.channels_last=true"),
        ("compile", "model.compile=true"),
    ],
)
def test_speed_switches_train_and_checkpoint_normally(tmp_path, synthetic_data_dir, monkeypatch, switch, override):
    seen = []
    forward = CNN.forward

    def recording_forward(self, images):
        if self.training:
            seen.append(switch_in_effect(self))
        return forward(self, images)

    monkeypatch.setattr(CNN, "forward", recording_forward)
    metrics = train(compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path), "model=cnn", override]))
    assert metrics["status"] == "ok" and metrics["test/acc"] > 0.5
    assert seen and all(step[switch] for step in seen)  # the switch was on in every training step...
    assert not any(other for step in seen for name, other in step.items() if name != switch)  # ...and only it
    # Checkpoints look the same with or without the switches: an uncompiled model loads them.
    model, _ = load_classifier(metrics["best_model_path"])
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    # Tested (src.eval, train=false) without compiling, which a machine without a C++ compiler could not do.
    model.setup("test")
    assert "_compiled_net" not in model.__dict__


def test_lightnings_hook_name_is_set_on_the_model_without_nn_modules_setattr(tmp_path, synthetic_data_dir, monkeypatch):
    """Lightning sets `_current_fx_name` before and after each hook call, 44 times a training step, and nn.Module's
    __setattr__ made each of those 1.8 µs (0.3 now). The name is still there in each hook, and the metrics Lightning
    lets each hook log (by that name) are logged."""
    from src.models.classifier import DigitClassifier

    through_module, named_in_the_hook = [], []
    module_setattr = torch.nn.Module.__setattr__

    def counting_setattr(self, name, value):
        if name == "_current_fx_name":
            through_module.append(value)
        module_setattr(self, name, value)

    monkeypatch.setattr(torch.nn.Module, "__setattr__", counting_setattr)
    monkeypatch.setattr(DigitClassifier, "on_train_batch_start",
                        lambda self, batch, batch_idx: named_in_the_hook.append(self._current_fx_name), raising=False)
    metrics = train(compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path), "model=mlp"]))
    assert metrics["status"] == "ok" and {"val/acc_best", "test/acc", "test/acc_class/9"} <= metrics.keys()
    assert set(named_in_the_hook) == {"on_train_batch_start"} and through_module == []


def test_channels_last_changes_the_layout_not_the_function():
    settings = {"optimizer": {"name": "adam", "lr": 1e-3}, "kernel_size": [5, 3, 3]}
    plain, nhwc = CNN(**settings), CNN(**settings, channels_last=True)
    nhwc.load_state_dict(plain.state_dict())
    nhwc.setup("fit")
    conv_weight = nhwc.net[1][0].weight  # 32 input channels: the first conv has 1, where both layouts coincide
    assert conv_weight.is_contiguous(memory_format=torch.channels_last) and not conv_weight.is_contiguous()
    images = torch.randn(8, 1, 28, 28)
    plain.eval()
    nhwc.eval()
    torch.testing.assert_close(nhwc(images), plain(images), rtol=1e-4, atol=1e-4)


def test_model_summary_counts_layer_sizes_and_flops_of_one_image():
    adam = {"name": "adam", "lr": 1e-3}
    mlp = ModelSummary(MLP(optimizer=adam, hidden_sizes=[1024, 1024]), max_depth=2)
    assert mlp.total_flops == 2 * (784 * 1024 + 1024 * 1024 + 1024 * 10)  # a multiply and an add per weight
    assert mlp.in_sizes[mlp.layer_names.index("net")] == [1, 1, 28, 28]
    assert ModelSummary(CNN(optimizer=adam)).total_flops > 0
    assert CNN(optimizer=adam, compile=True).example_input_array is None  # no summary-only compilation


def test_the_model_summary_shows_the_network_without_the_metric_objects(capsys):
    from types import SimpleNamespace

    from src.callbacks.network_summary import NetworkSummary

    assert compose_config([]).callbacks.model_summary._target_ == "src.callbacks.network_summary.NetworkSummary"
    mlp = MLP(optimizer={"name": "adam", "lr": 1e-3}, hidden_sizes=[64])
    assert any(name.startswith("val_metrics") for name, _ in mlp.named_modules())  # what Lightning's summary listed too
    mlp.net[4].eval()  # a layer in eval mode is counted as such
    NetworkSummary(max_depth=3).on_fit_start(SimpleNamespace(is_global_zero=True, strategy=None), mlp)
    table = capsys.readouterr().out
    rows = re.findall(r"^│ *\d+ *│ *([\w.]+) *│", table, flags=re.MULTILINE)
    assert rows == ["net", "net.0", "net.1", "net.2", "net.3", "net.4", "net.5"], table
    assert "Modules in train mode: 6" in table and "Modules in eval mode: 1" in table
    assert "Total FLOPs: 101 K" in table  # 2 × (784 × 64 + 64 × 10)
    # Compiled, through its network uncompiled (it showed 0 FLOPs and no sizes): the compiled one is kept for training.
    compiled = MLP(optimizer={"name": "adam", "lr": 1e-3}, hidden_sizes=[64], compile=True)
    compiled.setup("fit")
    kept = compiled.__dict__["_compiled_net"]
    NetworkSummary(max_depth=3).on_fit_start(SimpleNamespace(is_global_zero=True, strategy=None), compiled)
    table = capsys.readouterr().out
    assert "Total FLOPs: 101 K" in table and "In sizes" in table and "[1, 784]" in table
    assert compiled.__dict__["_compiled_net"] is kept and compiled.example_input_array is None


def test_weights_converted_to_bfloat16_train_with_the_model_summary_on(tmp_path, synthetic_data_dir):
    """trainer.precision=bf16-true converts the weights: the summary's example image must follow them (its FLOP count
    multiplied a float32 image by bfloat16 weights and ended the run)."""
    overrides = [*tiny_run_overrides(synthetic_data_dir, tmp_path), "model=cnn", "trainer.precision=bf16-true"]
    metrics = train(compose_config(overrides))
    assert metrics["status"] == "ok" and metrics["test/acc"] > 0.5
    assert ModelSummary(CNN(optimizer={"name": "adam", "lr": 1e-3}).to(torch.bfloat16)).total_flops > 0


def test_recipes_compose_with_the_promised_settings(tmp_path):
    fast = compose_config(["experiment=fast", f"paths.output_dir={tmp_path}"])
    assert fast.trainer.max_epochs == 1 and not fast.data.augment.enabled
    from pytorch_lightning.callbacks import ModelSummary

    from src.utils.trainer_setup import build_trainer

    trainer, _ = build_trainer(fast)  # no model summary printed first (a configured summary callback ran anyway)
    assert not fast.trainer.enable_model_summary and not any(isinstance(cb, ModelSummary) for cb in trainer.callbacks)
    assert fast.model.channels == [32, 48] and fast.model.kernel_size == [5, 3]
    best = compose_config(["experiment=best", f"paths.output_dir={tmp_path}"])
    assert best.data.augment.enabled and best.callbacks.model_checkpoint.monitor == "val/acc"  # chosen by validation
    assert fast.model.channels_last and best.model.channels_last  # the faster layout on CPUs as well as GPUs



@pytest.mark.parametrize("choice, figures", [(None, False), ("callbacks=[default]", True),
                                             ("callbacks=[default,early_stopping]", True), ("callbacks=[]", False)])
def test_fast_recipe_leaves_out_the_figures_and_takes_other_callbacks(tmp_path, choice, figures):
    """Its callbacks are `default`'s but the figures; a choice of the callbacks group replaces them (callbacks=null,
    which the command line reads as [], was refused as leaving out the checkpoints, and nothing brought the figures
    back)."""
    from src.callbacks.figures import DiagnosticFigures
    from src.utils.trainer_setup import build_trainer
    from src.utils.validate import validate_train_config

    cfg = compose_config(["experiment=fast", f"paths.output_dir={tmp_path}"] + ([choice] if choice else []))
    validate_train_config(cfg)
    trainer, _ = build_trainer(cfg)
    assert any(isinstance(cb, DiagnosticFigures) for cb in trainer.callbacks) == figures
    checkpoints = [cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint)]
    assert len(checkpoints) == (1 if choice == "callbacks=[]" else 2)  # with none: Lightning's own, of the last epoch

def test_bench_quick_runs_prints_the_table_and_leaves_no_files(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # where the benchmark's runs go
    result = run_module("src.bench", "--quick", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for row in ("1. data path, samples/s", "2. fast recipe fit", "2b. tiny CNN, batch 32", "3. whole process", "peak memory"):
        assert row in result.stdout
    # What it is measuring, as it goes; not Lightning's notes on each of its fits ("GPU available: False", ...).
    progress = [line.split(":")[0] for line in result.stderr.splitlines() if re.match(r"\d", line)]
    assert progress == ["3. whole processes (measured first, while this process is small)",
                        "3. whole processes, pair 1 of 1", "1. data path", "2. fast recipe fit",
                        "2b. tiny CNN, batch 32"], result.stderr[-3000:]
    assert "GPU available" not in result.stderr and "Trainer.fit` stopped" not in result.stderr
    assert not list(tmp_path.glob("mnist-bench-*"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the benchmark would run")
def test_the_benchmark_on_cuda_without_a_gpu_is_one_clear_message():
    result = run_module("src.bench", "--device", "cuda", "--quick", timeout=120)
    assert result.returncode == 2 and "--device cuda: this machine has no CUDA device" in result.stderr
    assert "Traceback" not in result.stderr


def run_dir_of(command: list[str]) -> Path:
    return Path(next(arg for arg in command if arg.startswith("hydra.run.dir=")).split("=", 1)[1])


def test_the_benchmark_table_reports_medians_of_paired_ratios(tmp_path, synthetic_data_dir, monkeypatch):
    """The rows from given timings (measured ones vary): each ratio is this framework's over the baseline, the
    median of each interleaved pair's, not the ratio of the medians; whole processes report the lowest accuracy
    and the highest memory of their runs."""
    import argparse
    import json

    import src.bench

    processes = {"train": iter([(20.0, 1000.0, 0.991), (60.0, 1100.0, 0.989), (21.0, 900.0, 0.992)]),
                 "plain": iter([(16.0, 800.0, 0.9905), (16.0, 700.0, 0.9907), (20.0, 820.0, 0.9903)])}

    def whole_process(command, log):
        if "src.train" in command:
            wall, rss, acc = next(processes["train"])
            run_dir_of(command).mkdir()  # a folder per run: src.train refuses one holding another run
            (run_dir_of(command) / "metrics.json").write_text(json.dumps({"test/acc": acc}))
            return wall, rss
        wall, rss, acc = next(processes["plain"])
        log.write_text(json.dumps({"test_acc": acc}) + "\n")
        return wall, rss

    fits = iter([([{"fit_seconds": 12.0}, {"fit_seconds": 30.0}, {"fit_seconds": 13.0}],
                  [{"fit_seconds": 10.0}, {"fit_seconds": 10.0}, {"fit_seconds": 12.0}]),
                 ([{"step_seconds": 1.0}, {"step_seconds": 1.2}, {"step_seconds": 1.1}],
                  [{"step_seconds": 0.9, "steps": 1000}, {"step_seconds": 0.95, "steps": 1000}, {"step_seconds": 1.0, "steps": 1000}])])
    monkeypatch.setattr(src.bench, "whole_process", whole_process)
    monkeypatch.setattr(src.bench, "data_path", lambda cfg, device, max_batches: (40_000.0, 2_000.0))
    monkeypatch.setattr(src.bench, "interleaved_fits", lambda *args: next(fits))
    args = argparse.Namespace(quick=False, data_dir=synthetic_data_dir, device="cpu", repeats=3, cuda_graph=False)
    assert src.bench.measure(args, tmp_path) == [
        ("1. data path, samples/s", "40,000", "2,000 (torchvision per-sample)", "20×"),
        ("2. fast recipe fit (1 epoch + val), s", "13.00", "10.00 (plain loop)", "1.20×"),  # pairs: 1.2, 3.0, 1.08
        ("2b. tiny CNN, batch 32: time per step, ms", "1.100", "0.950 (plain loop)", "+0.150 ms"),
        ("3. whole process, start to exit, s", "21.0", "16.0 (plain script)", "1.25×"),  # pairs: 1.25, 3.75, 1.05
        ("   test accuracy (>= 99%?)", "98.90% (NO)", "99.03% (plain script)", ""),
        ("   peak memory (RSS), MiB", "1100", "820 (plain script)", ""),
    ]
    assert next(processes["train"], None) is None  # three of each, as --repeats says


def test_the_benchmark_with_cuda_graph_runs_every_loop_with_it(tmp_path, synthetic_data_dir, monkeypatch):
    import argparse
    import json

    import src.bench

    commands, configs = [], []

    def whole_process(command, log):
        commands.append(command)
        if "src.train" in command:
            run_dir_of(command).mkdir()
            (run_dir_of(command) / "metrics.json").write_text(json.dumps({"test/acc": 0.99}))
        log.write_text(json.dumps({"test_acc": 0.99}) + "\n")
        return 1.0, 1.0

    def interleaved_fits(cfg, *args):
        configs.append(cfg)
        return [{"fit_seconds": 1.0, "step_seconds": 1.0}], [{"fit_seconds": 1.0, "step_seconds": 1.0, "steps": 1}]

    monkeypatch.setattr(src.bench, "whole_process", whole_process)
    monkeypatch.setattr(src.bench, "data_path", lambda cfg, device, max_batches: (1.0, 1.0))
    monkeypatch.setattr(src.bench, "interleaved_fits", interleaved_fits)
    monkeypatch.setenv("BENCH_PLAIN_CONFIG", "")  # so that what measure() sets is taken away after the test
    args = argparse.Namespace(quick=False, data_dir=synthetic_data_dir, device="cuda", repeats=1, cuda_graph=True)
    src.bench.measure(args, tmp_path)
    train_command, plain_command = commands
    assert "model.cuda_graph=true" in train_command and "--plain-process" in plain_command
    assert json.loads(os.environ["BENCH_PLAIN_CONFIG"])["model"]["cuda_graph"] is True  # the plain script's settings
    assert len(configs) == 2 and all(cfg.model.cuda_graph is True for cfg in configs)  # rows 2 and 2b


def test_the_plain_loops_accuracy_is_measured_without_dropout():
    from src.bench_loops import accuracy

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Dropout(0.9), torch.nn.Linear(4, 2))  # in training mode, as after a fit
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]))
        net[1].bias.zero_()
    images = torch.tensor([[2.0, 1.0, 0, 0], [1.0, 2.0, 0, 0]]).repeat(500, 1)
    labels = torch.tensor([0, 1]).repeat(500)
    assert accuracy(net, images, labels) == 1.0 and net.training  # every one right, and the mode given back


def test_the_benchmark_refuses_a_bad_device_or_missing_data_at_once_and_names_a_failed_runs_error(tmp_path, monkeypatch):
    """Each ended in a traceback and 2,000 characters of a child process's log, the cause somewhere inside."""
    from src.bench import BenchFailed, whole_process

    for arguments, message in ((["--device", "gpu"], "--device gpu: it must be cpu, cuda or cuda:N."),
                               (["--device", "cuda:1x"], "--device cuda:1x: it must be cpu, cuda or cuda:N."),
                               (["--data-dir", str(tmp_path)], f"--data-dir {tmp_path}: train-images-idx3-ubyte, "
                                                               "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
                                                               "t10k-labels-idx1-ubyte missing in "),
                               (["--repeats", "0"], "--repeats 0: it must be 1 or more"),
                               (["--cuda-graph", "--quick"], "--cuda-graph needs --device cuda")):
        result = run_module("src.bench", *arguments, timeout=120)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    failing = [sys.executable, "-c", "print('[a][ERROR] - first'); print('[b][ERROR] - data.val_size=0 is invalid'); exit(1)"]
    with pytest.raises(BenchFailed, match=r" failed: data.val_size=0 is invalid$"):  # the last error: the run's own
        whole_process(failing, tmp_path / "run.log")
    # The peak memory row's unit: MiB (the OS counts KiB). 3 GiB written: more than this test process holds, whose
    # high-water mark at the child's start counts too (see whole_process).
    wall, peak_mib = whole_process([sys.executable, "-c", "data = b'1' * (3 * 2**30)"], tmp_path / "run.log")
    assert 3072 < peak_mib < 4500
    import src.bench

    def measure(args, work):
        raise BenchFailed("python -m src.train experiment=fast failed: it broke")

    monkeypatch.setattr(src.bench, "measure", measure)
    monkeypatch.setattr(sys, "argv", ["src.bench", "--quick"])
    with pytest.raises(SystemExit) as exited:
        src.bench.main()
    assert exited.value.code == "python -m src.bench: python -m src.train experiment=fast failed: it broke"


def test_the_benchmark_reads_its_data_folder_from_where_it_runs_whatever_its_name(tmp_path, synthetic_data_dir, monkeypatch,
                                                                                    capsys):
    """A relative --data-dir was read from the project's folder by the runs (files "missing" that were there), one with
    `,` or `=` failed in Hydra's grammar with a traceback, and the MNIST/raw/ folder itself was told to be empty."""
    import src.bench

    folder = tmp_path / "mnist, v2=clean"
    shutil.copytree(synthetic_data_dir, folder)
    monkeypatch.chdir(tmp_path)
    data_dirs = []

    def measure(args, work):
        data_dirs.append(src.bench.fast_config(args.data_dir, args.device, work / "run").data.data_dir)
        return [("measure", "1", "1", "1×")]

    monkeypatch.setattr(src.bench, "measure", measure)
    monkeypatch.setattr(sys, "argv", ["src.bench", "--data-dir", folder.name])
    src.bench.main()
    assert data_dirs == [str(folder)]
    monkeypatch.setattr(sys, "argv", ["src.bench", "--data-dir", f"{folder.name}/MNIST/raw"])
    with pytest.raises(SystemExit) as exited:
        src.bench.main()
    assert exited.value.code == 2
    assert (f"is the MNIST files' own folder: name the folder above MNIST/raw/, --data-dir {folder}.\n"
            in capsys.readouterr().err)
    monkeypatch.setattr(sys, "argv", ["src.bench", "--data-dir", folder.name])
    monkeypatch.setattr(Path, "is_file", lambda path: (_ for _ in ()).throw(PermissionError(13, "Permission denied")))
    with pytest.raises(SystemExit) as exited:  # a traceback
        src.bench.main()
    assert exited.value.code == 2 and "cannot look for this file (permission denied)" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the script would run its 5 minutes")
def test_gpu_figures_script_stops_with_one_clear_message_without_a_gpu(tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # this venv's python
    out = tmp_path / "figures"
    result = subprocess.run(["bash", str(PROJECT_ROOT / ".ci" / "gpu-figures"), str(out)], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "gpu-figures: no CUDA device here" in result.stderr
    assert not out.exists()  # nothing run, nothing written


def test_the_plain_loop_trains_the_recipes_network_with_its_label_smoothing_and_layout(synthetic_data_dir, monkeypatch):
    """The benchmark's baseline must do the recipe's training: a loss without smoothing or the default layout would
    make the comparison unfair either way."""
    import torch.nn.functional as F
    from omegaconf import OmegaConf

    from src import bench_loops
    from src.models import networks

    cfg = compose_config(["experiment=fast", "data.val_size=80"])
    model_cfg, data_cfg = (OmegaConf.to_container(part, resolve=True) for part in (cfg.model, cfg.data))
    smoothing, made = [], []
    cross_entropy, cnn_network = F.cross_entropy, networks.cnn_network
    monkeypatch.setattr(F, "cross_entropy", lambda *a, **kw: smoothing.append(kw.get("label_smoothing")) or cross_entropy(*a, **kw))
    monkeypatch.setattr(networks, "cnn_network", lambda **kw: made.append(cnn_network(**kw)) or made[-1])
    result = bench_loops.plain_training(synthetic_data_dir, model_cfg, data_cfg, "cpu", seed=1)
    assert result["steps"] == len(smoothing) > 0 and set(smoothing) == {cfg.model.label_smoothing} == {0.1}
    convs = [module for module in made[0].modules() if isinstance(module, torch.nn.Conv2d)]
    assert [conv.out_channels for conv in convs] == list(cfg.model.channels)
    assert convs[1].weight.is_contiguous(memory_format=torch.channels_last) and not convs[1].weight.is_contiguous()
