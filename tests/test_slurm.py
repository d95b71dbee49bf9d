"""A run inside a SLURM job (simulated by its environment variables): SIGUSR1, the warning a job script asks for
before the time limit, saves and stops as SIGTERM does, and requeues a job whose command continues where it stopped;
Lightning's own auto-requeue (its hpc_ckpt_<n>.ckpt files) stays out of it."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import pytorch_lightning as pl
import pytest

from src.errors import UserInputError
from src.train import train
from tests.conftest import compose_config, run_module, tiny_run_overrides

SLURM_JOB = {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "1", "SLURM_JOB_NAME": "train", "SLURM_PROCID": "0",
             "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}


class SignalIfArmed(pl.Callback):
    """SIGUSR1 to this process at the first training batch after the `armed` file appears (which it removes). Only one
    process is signalled: the parallel jobs of a sweep can get here at the same moment, and one unlink wins."""

    def __init__(self, armed: str) -> None:
        self.armed = Path(armed)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx != 1:
            return
        try:
            self.armed.unlink()  # the claim itself: an exists() check before it let both jobs through, and one failed
        except FileNotFoundError:
            return
        os.kill(os.getpid(), signal.SIGUSR1)


def _fake_scontrol(tmp_path: Path) -> tuple[dict, Path]:
    """An environment whose PATH has an `scontrol` that writes its arguments into the file returned."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "scontrol_calls"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "scontrol").chmod(0o755)
    return {**SLURM_JOB, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}, calls


def _run_words(synthetic_data_dir: Path, armed: Path) -> list[str]:
    words = [word for word in tiny_run_overrides(synthetic_data_dir, Path("unused")) if not word.startswith("paths.")]
    return [*words, "model=mlp", "trainer.max_epochs=2", f"+callbacks.usr1._target_={__name__}.SignalIfArmed",
            f"+callbacks.usr1.armed={armed}"]


def test_slurms_warning_saves_stops_and_requeues_a_job_that_continues(tmp_path, synthetic_data_dir):
    env, calls = _fake_scontrol(tmp_path)
    folder, armed = tmp_path / "run", tmp_path / "armed"
    armed.touch()
    command = [*_run_words(synthetic_data_dir, armed), f"hydra.run.dir={folder}", "ckpt_path=last"]
    stopped = run_module("src.train", *command, extra_env=env)
    output = stopped.stdout + stopped.stderr
    assert stopped.returncode == 143, output[-3000:]
    assert "SIGUSR1 (SLURM's warning before the job's time limit): stopping as for SIGTERM." in output
    assert "Training stopped by SIGTERM at epoch 0, step 2. Saved" in output
    assert calls.read_text() == "requeue 4242\n" and "Requeued SLURM job 4242" in output
    assert (folder / "checkpoints" / "last.ckpt").is_file() and not list(folder.rglob("hpc_ckpt_*"))
    assert "SLURM auto-requeueing enabled" not in output  # Lightning's own, which saves hpc_ckpt_<n>.ckpt files
    # The command it prints is the job's own, which continues from last.ckpt wherever it is saved.
    assert f"resume with: python -m src.train {' '.join(command[:-2])} hydra.run.dir={folder} ckpt_path=last\n" in output

    requeued = run_module("src.train", *command, extra_env=env)  # what SLURM runs again
    assert requeued.returncode == 0, (requeued.stdout + requeued.stderr)[-3000:]
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["status"] == "ok" and metrics["epochs"] == 2
    assert metrics["resumed_from"] == str((folder / "checkpoints" / "last.ckpt").resolve())
    assert calls.read_text() == "requeue 4242\n"  # not again: no warning this time


def test_a_job_that_would_start_over_is_not_requeued(tmp_path, synthetic_data_dir):
    env, calls = _fake_scontrol(tmp_path)
    armed = tmp_path / "armed"
    armed.touch()
    stopped = run_module("src.train", *_run_words(synthetic_data_dir, armed), f"hydra.run.dir={tmp_path / 'run'}",
                         extra_env=env)
    output = stopped.stdout + stopped.stderr
    assert stopped.returncode == 143, output[-3000:]
    assert ("SLURM job 4242 is not requeued: its command would start over in a new folder. To have it continue where "
            "it stopped, give it its folder on the command line, and ckpt_path=last: hydra.run.dir=<folder> "
            "ckpt_path=last.") in output
    assert not calls.exists()


def test_lightnings_own_slurm_checkpoint_in_the_run_folder_is_refused(tmp_path, synthetic_data_dir, monkeypatch):
    """Lightning would resume from it, or test it in place of the final weights, unchecked."""
    for key, value in SLURM_JOB.items():
        monkeypatch.setenv(key, value)
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "hpc_ckpt_1.ckpt").write_bytes(b"")
    with pytest.raises(UserInputError, match=r"hpc_ckpt_1\.ckpt is a checkpoint of Lightning's own SLURM auto-requeue"):
        train(compose_config([*tiny_run_overrides(synthetic_data_dir, folder), "model=mlp"]))


def test_slurms_warning_is_taken_for_sigterm_from_the_start_of_the_command(tmp_path):
    """From the start of the command on (a sweep's launching process too), SIGUSR1 does what SIGTERM does (before a
    run's own handling is in place, that ends the process, as SIGTERM would)."""
    import subprocess
    import sys

    from tests.conftest import PROJECT_ROOT

    script = ("import os, signal, time\n"
              "from src.utils.command_line import run_command_line\n"
              "signal.signal(signal.SIGTERM, lambda *_: print('SIGTERM came', flush=True))\n"
              "run_command_line(lambda: (os.kill(os.getpid(), signal.SIGUSR1), time.sleep(0.5)))\n")
    ran = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, env={**os.environ, **SLURM_JOB},
                         capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0 and "SIGTERM came" in ran.stdout, ran.stdout + ran.stderr


@pytest.mark.parametrize("tasks, trainer, refused", [
    ({"SLURM_NTASKS": "1"}, ["trainer=ddp_cpu"], "1 task(s) (SLURM_NTASKS)"),  # Lightning: one process, without a word
    ({"SLURM_NTASKS": "2"}, [], "2 task(s) (SLURM_NTASKS)"),  # Lightning: a traceback
    ({"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "1"}, ["trainer=ddp_cpu"],
     "1 task(s) per node (SLURM_NTASKS_PER_NODE)"),  # Lightning: a traceback
    ({"SLURM_NTASKS": "2"}, ["trainer=ddp_cpu"], None),  # srun started both processes
    ({"SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "2"}, ["trainer=ddp_cpu", "+trainer.num_nodes=2"], None),
    ({"SLURM_NTASKS": "1"}, [], None),
])
def test_a_slurm_job_must_have_a_task_for_each_training_process(tmp_path, monkeypatch, tasks, trainer, refused):
    from src.utils.validate import validate_train_config

    for key, value in {**SLURM_JOB, **tasks}.items():
        monkeypatch.setenv(key, value)
    cfg = compose_config([f"paths.output_dir={tmp_path}", *trainer])
    if refused is None:
        validate_train_config(cfg)
        return
    with pytest.raises(UserInputError, match=rf"^This SLURM job has {re.escape(refused)}, but trainer\.devices=\S+ and "
                                             r"trainer\.num_nodes=1 make \d training process"):
        validate_train_config(cfg)


@pytest.mark.parametrize("unseeded", ["seed=null", "data.shuffle_seed=null"])
def test_a_slurm_job_of_several_processes_needs_a_seed_given(tmp_path, monkeypatch, unseeded):
    """SLURM starts each process: each drew a seed of its own, and their shares of the training set overlapped."""
    from src.utils.validate import validate_train_config

    for key, value in {**SLURM_JOB, "SLURM_NTASKS": "2"}.items():
        monkeypatch.setenv(key, value)
    cfg = compose_config([f"paths.output_dir={tmp_path}", "trainer=ddp_cpu", unseeded])
    with pytest.raises(UserInputError, match=rf"^{re.escape(unseeded)} cannot be used in a SLURM job of several training "
                                             rf"processes: .* Give one: {unseeded[:-5]}=<number>\.$"):
        validate_train_config(cfg)
    monkeypatch.setenv("SLURM_NTASKS", "1")
    validate_train_config(compose_config([f"paths.output_dir={tmp_path}", unseeded]))  # one process draws for itself


@pytest.mark.parametrize("arguments, entry_point, requeued", [
    (["hydra.run.dir=runs/a", "ckpt_path=last"], "train", True),
    (["-m", "seed=1,2", "hydra.sweep.dir=sweeps/a", "ckpt_path=last"], "train", True),
    (["-m", "seed=1,2", "hydra.run.dir=runs/a", "ckpt_path=last"], "train", False),  # a new sweep folder each time
    (["sweep=seeds", "hydra.sweep.dir=sweeps/a", "ckpt_path=last"], "train", True),  # a ready-made sweep: the same
    (["sweep=seeds", "hydra.run.dir=runs/a", "ckpt_path=last"], "train", False),
    (["hydra.sweep.dir=sweeps/a", "ckpt_path=last"], "train", False),  # a single run: a new run folder each time
    (["hydra.run.dir=runs/a"], "train", False),  # starts over
    (["hydra.run.dir=runs/a", "ckpt_path=last"], "eval", False),  # nothing to continue: src.eval refuses it
])
def test_only_a_command_that_continues_where_it_stopped_is_requeued(tmp_path, monkeypatch, caplog, arguments,
                                                                   entry_point, requeued):
    from src.utils import slurm

    env, calls = _fake_scontrol(tmp_path)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(slurm, "_warned", slurm.threading.Event())
    slurm.requeue_if_warned(arguments, entry_point)
    assert not calls.exists()  # no SIGUSR1, no requeue
    slurm._warned.set()
    monkeypatch.setenv("SLURM_PROCID", "1")
    slurm.requeue_if_warned(arguments, entry_point)
    assert not calls.exists()  # the first task requeues the job, once
    monkeypatch.setenv("SLURM_PROCID", "0")
    slurm.requeue_if_warned(arguments, entry_point)
    assert calls.exists() == requeued and ("SLURM job 4242 is not requeued" in caplog.text) != requeued


def test_a_run_of_several_slurm_tasks_must_be_given_its_folder(tmp_path, monkeypatch):
    env = {**SLURM_JOB, "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2"}
    refused = run_module("src.train", "trainer=ddp_cpu", f"paths.log_dir={tmp_path / 'outputs'}", extra_env=env)
    assert refused.returncode == 1 and not (tmp_path / "outputs").exists()
    assert refused.stderr.strip().endswith(
        "This SLURM job runs the command in 2 tasks (one training process each), which must share one run folder: give "
        "it on the command line, e.g. hydra.run.dir=runs/$SLURM_JOB_ID (with ckpt_path=last, a requeued job continues "
        "there).")
    from src.utils.launchers import shared_folder_problem

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert shared_folder_problem(["trainer=ddp_cpu"]) is not None
    assert shared_folder_problem(["trainer=ddp_cpu", "hydra.run.dir=runs/1"]) is None
    assert shared_folder_problem(["-m", "trainer=ddp_cpu", "hydra/launcher=slurm"]) is None  # submitit's job folders


def test_an_array_task_is_requeued_by_its_own_id(tmp_path, monkeypatch):
    from src.utils import slurm

    env, calls = _fake_scontrol(tmp_path)
    for key, value in {**env, "SLURM_ARRAY_JOB_ID": "100", "SLURM_ARRAY_TASK_ID": "3", "SLURM_JOB_ID": "103"}.items():
        monkeypatch.setenv(key, value)
    warned = slurm.threading.Event()
    warned.set()
    monkeypatch.setattr(slurm, "_warned", warned)
    slurm.requeue_if_warned(["hydra.run.dir=runs/a", "ckpt_path=last"], "train")
    assert calls.read_text().split() == ["requeue", "100_3"]  # not the whole array, not another task's id


@pytest.mark.parametrize("job_name, in_job", [("train", True), ("bash", False), ("interactive", False)])
def test_an_interactive_allocation_is_not_taken_for_a_job(monkeypatch, job_name, in_job):
    """salloc's shell (job name bash or interactive): SIGUSR1 keeps its meaning there, as in Lightning."""
    from src.utils.slurm import in_slurm_job

    for key, value in {**SLURM_JOB, "SLURM_JOB_NAME": job_name}.items():
        monkeypatch.setenv(key, value)
    assert in_slurm_job() == in_job
    monkeypatch.delenv("SLURM_NTASKS")
    assert not in_slurm_job()


@pytest.mark.parametrize("plugins, expected", [
    ([], "SLURMEnvironment"),
    (["+trainer.plugins=[{_target_:pytorch_lightning.plugins.environments.LightningEnvironment}]"], "LightningEnvironment"),
])
def test_lightnings_slurm_environment_comes_without_its_auto_requeue_unless_the_config_names_plugins(
        tmp_path, synthetic_data_dir, monkeypatch, plugins, expected):
    from src.utils.trainer_setup import build_trainer

    for key, value in SLURM_JOB.items():
        monkeypatch.setenv(key, value)
    trainer, _ = build_trainer(compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path / "run"), *plugins]))
    environment = trainer._accelerator_connector.cluster_environment
    assert type(environment).__name__ == expected
    assert getattr(environment, "auto_requeue", False) is False  # Lightning's SIGUSR1 handler and hpc_ckpt files off


def test_slurms_warning_stops_a_job_in_a_sweeps_worker_process_as_sigterm_does(tmp_path, synthetic_data_dir):
    """joblib runs each job in a worker process, which SLURM warns too: left alone, SIGUSR1 would kill it outright."""
    env, calls = _fake_scontrol(tmp_path)
    sweep, armed = tmp_path / "sweep", tmp_path / "armed"
    armed.touch()
    stopped = run_module("src.train", "-m", *_run_words(synthetic_data_dir, armed), "seed=1,2", "hydra/launcher=joblib",
                         "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}", extra_env=env)  # a single job would run in this process
    output = stopped.stdout + stopped.stderr
    assert stopped.returncode == 143, output[-3000:]
    assert "SIGUSR1 (SLURM's warning before the job's time limit): stopping as for SIGTERM." in output
    assert "Training stopped by SIGTERM at epoch 0, step 2. Saved" in output
    statuses = {json.loads((job / "metrics.json").read_text())["status"]: job for job in sweep.iterdir()
                if (job / ".hydra").is_dir()}  # the other job may have finished before the sweep stopped
    assert set(statuses) <= {"interrupted", "ok"}, output[-3000:]  # neither job failed (on the armed file, say)
    assert (statuses["interrupted"] / "checkpoints" / "last.ckpt").is_file()
    assert not calls.exists()  # the launching process was not warned: a job requeues only what its own process saw
