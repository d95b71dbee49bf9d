"""Runs whose processes torchrun starts: each runs the whole command, as a SLURM job's tasks do (tests/test_slurm.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from src.errors import UserInputError
from tests.conftest import PROJECT_ROOT, compose_config

# What torchrun's second of two workers on one machine finds in its environment.
TORCHRUN_WORKER = {"TORCHELASTIC_RUN_ID": "none", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "RANK": "1",
                   "LOCAL_RANK": "1", "GROUP_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


@pytest.fixture
def in_torchrun(monkeypatch):
    for key, value in TORCHRUN_WORKER.items():
        monkeypatch.setenv(key, value)
    for key in ("SLURM_NTASKS", "SLURM_JOB_NAME"):
        monkeypatch.delenv(key, raising=False)


def test_torchrun_must_start_a_process_for_each_training_process(tmp_path, in_torchrun):
    """With one device each, torchrun's two workers trained a model each, into the same run folder."""
    from src.utils.validate import validate_train_config

    with pytest.raises(UserInputError, match=re.escape(
            "This torchrun launch has 2 process(es) per node (LOCAL_WORLD_SIZE), but trainer.devices=1 and "
            "trainer.num_nodes=1 make 1 training process(es): in a torchrun launch torchrun starts each of them. To match, "
            "start torchrun with --nproc_per_node=<devices per node> --nnodes=<num_nodes>, or set trainer.devices to the "
            "processes there are.")):
        validate_train_config(compose_config([f"paths.output_dir={tmp_path}", "trainer=cpu"]))
    validate_train_config(compose_config([f"paths.output_dir={tmp_path}", "trainer=ddp_cpu"]))


@pytest.mark.parametrize("unseeded", ["seed=null", "data.shuffle_seed=null"])
def test_torchrun_of_several_processes_needs_a_seed_given(tmp_path, in_torchrun, unseeded):
    from src.utils.validate import validate_train_config

    cfg = compose_config([f"paths.output_dir={tmp_path}", "trainer=ddp_cpu", unseeded])
    with pytest.raises(UserInputError, match=rf"^{re.escape(unseeded)} cannot be used in a torchrun launch of several "
                                             rf"training processes: torchrun starts each of them, .* Give one: "
                                             rf"{unseeded[:-5]}=<number>\.$"):
        validate_train_config(cfg)


def test_torchrun_must_be_given_the_run_folder_and_runs_no_sweep(in_torchrun):
    from src.utils.launchers import shared_folder_problem

    assert shared_folder_problem(["trainer=ddp_cpu"]) == (
        "This torchrun launch runs the command in 2 processes, which must share one run folder: give it on the command "
        "line, e.g. hydra.run.dir=runs/<name> (with ckpt_path=last, the command run again continues there).")
    assert shared_folder_problem(["trainer=ddp_cpu", "hydra.run.dir=runs/1"]) is None
    assert shared_folder_problem(["-m", "trainer=ddp_cpu", "seed=1,2", "hydra.sweep.dir=s"]).endswith(
        "each of which would run the whole sweep: start torchrun for each run, or sweep without torchrun, with "
        "++trainer.strategy=ddp_spawn.")


def test_torchrun_started_by_a_slurm_jobs_one_task_per_node_is_a_torchrun_run(tmp_path, in_torchrun, monkeypatch):
    """torchrun is often started by a SLURM job's task on each node: its processes are torchrun's, as Lightning takes
    them (SLURM's one task was refused for the trainer's two processes)."""
    from src.utils.launchers import shared_folder_problem
    from src.utils.validate import validate_train_config

    for key, value in {"SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_JOB_NAME": "train.sbatch",
                       "SLURM_JOB_ID": "7"}.items():
        monkeypatch.setenv(key, value)
    validate_train_config(compose_config([f"paths.output_dir={tmp_path}", "trainer=ddp_cpu"]))
    assert shared_folder_problem(["trainer=ddp_cpu"]).startswith("This torchrun launch runs the command in 2 processes")


def test_two_torchrun_processes_train_one_run(tmp_path, synthetic_data_dir):
    run_dir = tmp_path / "run"
    words = ["trainer=ddp_cpu", "model=mlp", f"data.data_dir={synthetic_data_dir}", "data.download=false",
             "data.val_size=80", "data.batch_size=32", "trainer.max_epochs=1", "callbacks.progress_bar=null",
             "++trainer.enable_progress_bar=false"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "src.train"]
    unnamed = subprocess.run([*torchrun, *words, f"paths.log_dir={tmp_path / 'outputs'}"], cwd=PROJECT_ROOT,
                             capture_output=True, text=True, timeout=300)
    assert unnamed.returncode != 0 and "which must share one run folder" in unnamed.stderr
    assert not (tmp_path / "outputs").exists()
    ran = subprocess.run([*torchrun, *words, f"hydra.run.dir={run_dir}"], cwd=PROJECT_ROOT, capture_output=True,
                         text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test/images"] == 100  # each test image counted once across the two processes
    assert [path.name for path in tmp_path.iterdir()] == ["run"]
    assert sorted(path.name for path in (run_dir / "checkpoints").glob("*.ckpt")) == ["epoch000.ckpt", "last.ckpt"]


def test_a_single_torchrun_process_is_a_plain_run(tmp_path, monkeypatch):
    """torchrun --nproc_per_node=1: nothing to share, the defaults stand."""
    from src.utils.launchers import shared_folder_problem
    from src.utils.validate import validate_train_config

    for key, value in {**TORCHRUN_WORKER, "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", "RANK": "0"}.items():
        monkeypatch.setenv(key, value)
    assert shared_folder_problem([]) is None
    validate_train_config(compose_config([f"paths.output_dir={tmp_path}", "seed=null"]))
