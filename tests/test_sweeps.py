"""Multiruns: readable job dirs, TensorBoard scalars/HParams/images per job, the sweep summary, failures,
and the joblib / submitit launchers. Each test runs `python -m src.train -m ...` in a subprocess."""

from __future__ import annotations

import csv
import errno
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from src import CONFIG_DIR, PROJECT_ROOT
from src.callbacks.safety import GracefulStop
from src.utils.run_folders import job_dirname, swept_keys
from src.utils.hparams import HPARAM_METRICS, run_hparams
from src.utils.jobs import usable_cpus
from src.utils.sweep_summary import (
    best_by_validation,
    collect_jobs,
    markdown_table,
    seed_statistics,
    summary_text,
    write_summary,
)
from tests.conftest import compose_config, ctrl_c_as_in_a_terminal, run_module, tiny_run_overrides


def multirun(sweep_dir: Path | None, data_dir: Path, *overrides: str, extra_env: dict | None = None
             ) -> subprocess.CompletedProcess:
    """A tiny sweep into sweep_dir (None: the default dated folder under paths.log_dir)."""
    where = [f"hydra.sweep.dir={sweep_dir}"] if sweep_dir else []
    return run_module(
        "src.train", "-m", *where, f"data.data_dir={data_dir}",
        "data.download=false", "data.val_size=80", "data.batch_size=32", "trainer.max_epochs=1",
        "callbacks.progress_bar=null", "++trainer.enable_progress_bar=false", *overrides, timeout=600, extra_env=extra_env,
    )


def summary_rows(sweep_dir: Path) -> list[dict]:
    with open(sweep_dir / "summary.csv") as f:
        return list(csv.DictReader(f))


def read_events(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


def hparams_session(accumulator) -> tuple[set[str], set[str]]:
    """(hyperparameter names, metric tags) of the run's HParams session."""
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    content = accumulator.PluginTagToContent("hparams")
    experiment = HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    start = HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    return set(start.hparams), {info.name.tag for info in experiment.metric_infos}


def test_two_job_sweep_is_comparable_in_tensorboard(tmp_path, synthetic_data_dir):
    sweep_dir = tmp_path / "sweep"
    result = multirun(sweep_dir, synthetic_data_dir, "model=mlp,cnn")
    assert result.returncode == 0, result.stderr[-3000:]

    job_dirs = sorted(p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir())
    assert [p.name.split("_", 1)[0] for p in job_dirs] == ["0", "1"]
    # What varies comes first (Hydra sorts alphabetically), so a name cut to its first 120 characters still says it.
    assert [p.name for p in job_dirs] == ["0_model=mlp,data.batch_size=32,data.val_size=80,trainer.max_epochs=1",
                                          "1_model=cnn,data.batch_size=32,data.val_size=80,trainer.max_epochs=1"]

    sessions = []
    for job_dir in job_dirs:
        events = read_events(job_dir)
        scalars = set(events.Tags()["scalars"])
        assert {"train/loss", "val/acc", "val/acc_best", "test/acc", "test/loss", "test/acc_class/7"} <= scalars
        hparam_names, metric_tags = hparams_session(events)
        assert metric_tags == set(HPARAM_METRICS) and metric_tags <= scalars  # every metric has a value
        assert {"model", "optimizer/lr", "data/batch_size", "seed"} <= hparam_names
        sessions.append(hparam_names)
        assert {"test/confusion_matrix", "val/confusion_matrix", "val/samples"} <= set(events.Tags()["images"])
        assert (job_dir / "confusion_matrix.png").exists() and (job_dir / "learning_curves.png").exists()
    assert sessions[0] == sessions[1]  # the same columns in every run: one sortable HParams table

    rows = summary_rows(sweep_dir)
    assert [row["status"] for row in rows] == ["ok", "ok"]
    assert [row["varied"] for row in rows] == ["model=mlp", "model=cnn"]
    assert all(float(row["test/acc"]) > 0 and float(row["wall_seconds"]) > 0 for row in rows)
    assert (sweep_dir / "summary.md").exists() and (sweep_dir / "summary.png").exists()
    assert "Sweep summary: 2 ok (" in result.stdout + result.stderr
    assert f"TensorBoard for the whole sweep: tensorboard --logdir {sweep_dir}" in result.stdout + result.stderr


def test_a_sweep_without_tensorboard_names_no_tensorboard_command():
    """logger=csv printed the command all the same, which opened an empty TensorBoard."""
    from src.utils.sweep_summary import _logs_to_tensorboard

    assert _logs_to_tensorboard(compose_config([])) and _logs_to_tensorboard(compose_config(["logger=[csv,tensorboard]"]))
    assert not _logs_to_tensorboard(compose_config(["logger=csv"])) and not _logs_to_tensorboard(compose_config(["logger=[]"]))


def test_a_failing_job_does_not_stop_the_sweep(tmp_path, synthetic_data_dir):
    sweep_dir = tmp_path / "sweep"
    result = multirun(sweep_dir, synthetic_data_dir, "model=mlp", "model.optimizer.lr=-1,0.003")
    assert result.returncode == 0, result.stderr[-3000:]
    failed, ok = summary_rows(sweep_dir)
    assert failed["status"] == "failed" and "model.optimizer.lr=-1" in failed["error"]
    assert ok["status"] == "ok" and float(ok["test/acc"]) > 0.5
    assert "failed" in (sweep_dir / "summary.md").read_text()


def test_a_sweep_where_every_job_fails_exits_non_zero(tmp_path, synthetic_data_dir):
    sweep_dir = tmp_path / "sweep"
    result = multirun(sweep_dir, synthetic_data_dir, "model=mlp", "model.optimizer.lr=-1,-2")
    assert result.returncode != 0
    assert [row["status"] for row in summary_rows(sweep_dir)] == ["failed", "failed"]
    assert "Every job of the sweep failed" in result.stdout + result.stderr


def test_an_interrupted_job_stops_the_sweep_and_is_recorded(tmp_path, synthetic_data_dir):
    """Ctrl-C (or SLURM's SIGTERM) is meant for the whole process: the next job must not start."""
    sweep_dir = tmp_path / "sweep"
    result = multirun(sweep_dir, synthetic_data_dir, "model=mlp", "seed=1,2",
                      "+callbacks.stop._target_=tests.test_eval_resume.InterruptAtStep", "+callbacks.stop.step=3")
    output = result.stdout + result.stderr
    assert result.returncode == 130, output[-3000:]
    assert "Training stopped by Ctrl-C at epoch 0, step 3" in output and "Traceback" not in output
    assert "last.ckpt; resume this job on its own with: python -m src.train " in output  # the sweep's command: below
    assert "was raised with message" not in output  # Lightning's garbled note of the same save
    job_dir, next_job = sorted(p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir())
    assert job_dir.name.startswith("0_") and (job_dir / "checkpoints" / "last.ckpt").is_file()
    assert json.loads((job_dir / "metrics.json").read_text())["status"] == "interrupted"
    # Hydra's end-of-sweep hook never runs: the summary is written at the stop, with the job that never started.
    assert [row["status"] for row in summary_rows(sweep_dir)] == ["interrupted", "not run"]
    assert next_job.name.startswith("1_") and not (next_job / "checkpoints").exists()
    assert re.search(r"The sweep stops here; 1 later job did not start\. Summary: .*summary\.\{csv,md,png\}\. Finish the "
                     r"sweep in its folder .*: python -m src\.train -m .* ckpt_path=last\n", output)
    # The sweep's command comes last, after the job's own resume command.
    assert output.index("Training stopped by Ctrl-C") < output.index("The sweep stops here")

    # With HYDRA_FULL_ERROR=1 too (the traceback is shown): an exception would let Hydra start the next job.
    sweep_dir = tmp_path / "full_error"
    result = multirun(sweep_dir, synthetic_data_dir, "model=mlp", "seed=1,2", "+callbacks.stop._target_=tests.test_eval_resume.InterruptAtStep",
                      "+callbacks.stop.step=3", extra_env={"HYDRA_FULL_ERROR": "1"})
    assert result.returncode == 130 and "Traceback" in result.stdout + result.stderr
    assert [row["status"] for row in summary_rows(sweep_dir)] == ["interrupted", "not run"]


class CtrlCIfArmed(pl.Callback):
    """Ctrl-C in the first training batch of the first job to find the `armed` file (which it removes)."""

    def __init__(self, armed: str) -> None:
        self.armed = Path(armed)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.armed.exists():
            self.armed.unlink()
            (graceful_stop,) = [cb for cb in trainer.callbacks if isinstance(cb, GracefulStop)]
            graceful_stop._request_stop(signal.SIGINT, None)


def test_the_jobs_an_interruption_kept_from_starting_are_listed_under_their_folder_names(tmp_path, synthetic_data_dir):
    """Each job the basic launcher did not start is recorded where Hydra would have run it: running the same sweep
    whole gives the same folders."""
    armed = tmp_path / "armed"
    armed.touch()
    sweep = ["model=mlp", "seed=1,2", "model.optimizer.lr=0.001,0.002", "data.augment.enabled=false",
             f"+callbacks.stop._target_={__name__}.CtrlCIfArmed", f"+callbacks.stop.armed={armed}"]
    stop = multirun(tmp_path / "stopped", synthetic_data_dir, *sweep)
    assert stop.returncode == 130
    assert multirun(tmp_path / "whole", synthetic_data_dir, *sweep).returncode == 0
    stopped, whole = summary_rows(tmp_path / "stopped"), summary_rows(tmp_path / "whole")
    assert [row["job"] for row in stopped] == [row["job"] for row in whole] and len(whole) == 4
    assert [row["status"] for row in stopped] == ["interrupted", "not run", "not run", "not run"]
    assert "The sweep stops here; 3 later jobs did not start. Summary:" in stop.stdout + stop.stderr
    assert {row["error"] for row in stopped[1:]} == {"the sweep was stopped (Ctrl-C) before this job started"}
    assert [row["varied"] for row in stopped] == [row["varied"] for row in whole]

    # The command printed at the stop finishes the sweep in its folder: the interrupted job resumes from its mid-epoch
    # last.ckpt, the others start, and every result equals the sweep run whole. Each job is found by its overrides,
    # so the swept values may come in another order (which numbers the jobs otherwise).
    (finish,) = re.findall(r"Finish the sweep in its folder .*?: python -m src\.train (-m .*)\n", stop.stdout + stop.stderr)
    words = shlex.split(finish)
    assert "seed=1,2" in words and "model.optimizer.lr=0.001,0.002" in words
    reordered = [word for word in words if word not in ("seed=1,2", "model.optimizer.lr=0.001,0.002")]
    result = run_module("src.train", *reordered, "model.optimizer.lr=0.002,0.001", "seed=2,1", timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "still holds jobs that this command did not run" not in result.stdout + result.stderr
    finished = summary_rows(tmp_path / "stopped")
    assert [row["job"] for row in finished] == [row["job"] for row in whole]
    assert [row["varied"] for row in finished] == [row["varied"] for row in whole]  # ckpt_path=last is not a setting
    for key in ("status", "val/acc_best", "test/acc", "test/loss"):
        assert [row[key] for row in finished] == [row[key] for row in whole], key
    resumed = [json.loads((tmp_path / "stopped" / row["job"] / "metrics.json").read_text()).get("resumed_from")
               for row in finished]
    assert resumed[0].endswith("/checkpoints/last.ckpt") and resumed[1:] == [None, None, None]

    # Options chosen by glob() are listed too; folders named otherwise (hydra.sweep.subdir) are not guessed at.
    for where, overrides, statuses in (("glob", ["model=glob(m*)"], ["interrupted", "not run"]),
                                       ("subdir", ["model=mlp", "hydra.sweep.subdir=job${hydra.job.num}"], ["interrupted"])):
        armed.touch()
        result = multirun(tmp_path / where, synthetic_data_dir, *overrides, "seed=1,2",
                          f"+callbacks.stop._target_={__name__}.CtrlCIfArmed", f"+callbacks.stop.armed={armed}")
        assert result.returncode == 130 and "; 1 later job did not start" in result.stdout + result.stderr
        assert [row["status"] for row in summary_rows(tmp_path / where)] == statuses


class SigtermWhenBuilt(pl.Callback):
    """SIGTERM while the trainer is being built: before Lightning handles it (from trainer.fit on)."""

    def __init__(self) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)  # the handler runs when the signal interrupts this sleep, at the latest


def test_sigterm_outside_training_is_reported_and_stops_the_sweep_with_its_summary(tmp_path, synthetic_data_dir):
    """It killed the process at once: no word in the log, the job not recorded, no summary."""
    sweep_dir = tmp_path / "sweep"
    result = multirun(sweep_dir, synthetic_data_dir, "model=mlp", "seed=1,2",
                      f"+callbacks.stop._target_={__name__}.SigtermWhenBuilt")
    output = result.stdout + result.stderr
    assert result.returncode == 143, output[-3000:]
    # Not the same command: the sweep's folder is taken now (the job's metrics.json says it was interrupted).
    assert re.search(r"Stopped by SIGTERM outside training and testing: nothing was saved at that moment\. Run this job "
                     r"again on its own: python -m src\.train .*model=mlp seed=1 ", output) and "Traceback" not in output
    rows = summary_rows(sweep_dir)
    assert [row["status"] for row in rows] == ["interrupted", "not run"]
    assert rows[1]["error"] == "the sweep was stopped (SIGTERM) before this job started"


class SignalOnceBothJobsTrain(pl.Callback):
    """At training step `step`, once both parallel jobs are training, send `signal_name`: to every process of the group
    (what Ctrl-C in a terminal does) or to the launching process alone (`kill <pid>`). Only once per sweep: the first
    job to get there removes the `armed` file. A job at that step waits for the other to start training: on a loaded
    machine one job can finish its few steps while the other is still importing."""

    def __init__(self, step: int, armed: str, signal_name: str = "SIGINT", launcher_only: bool = False) -> None:
        self.step, self.armed = step, Path(armed)
        self.signum, self.launcher_only = getattr(signal, signal_name), launcher_only

    def on_train_start(self, trainer, pl_module) -> None:
        (self.armed.parent / f"training-{os.getpid()}").touch()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step < self.step:
            return
        deadline = time.monotonic() + 300
        while len(list(self.armed.parent.glob("training-*"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        try:
            self.armed.unlink()  # the claim itself: both jobs can get here at the same moment, and one unlink wins
        except FileNotFoundError:
            return
        if self.launcher_only:
            os.kill(int(os.environ["MNIST_SWEEP_LAUNCHER_PID"]), self.signum)
        else:
            os.killpg(os.getpgid(0), self.signum)
        time.sleep(0.5)  # the graceful-stop handler runs (at the latest) when the signal interrupts this sleep


def parallel_sweep_signalled(tmp_path, synthetic_data_dir, *callback_args: str) -> tuple[Path, Path, str, int]:
    """Three jobs, two at a time with joblib; the signal comes from SignalOnceBothJobsTrain at step 25 (epoch 1 of 20).
    The epochs the jobs never reach leave time: a job stopped through the launcher sees the launcher's note at its next
    check (once a second), and with 3 epochs a launcher slow to write it (a loaded machine) let the job finish first."""
    sweep_dir, armed = tmp_path / "sweep", tmp_path / "armed"
    armed.touch()
    command = [sys.executable, "-m", "src.train", "-m", f"hydra.sweep.dir={sweep_dir}", f"data.data_dir={synthetic_data_dir}",
               "data.download=false", "data.val_size=80", "data.batch_size=16", "model=mlp", "model.scheduler.name=none",
               "trainer.max_epochs=20", "callbacks.progress_bar=null", "++trainer.enable_progress_bar=false", "seed=1,2,3",
               "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"+callbacks.signal._target_={__name__}.SignalOnceBothJobsTrain",
               "+callbacks.signal.step=25", f"+callbacks.signal.armed={armed}", *callback_args]
    env = {key: value for key, value in os.environ.items() if key != "HYDRA_FULL_ERROR"}
    # A session of its own, so the group's Ctrl-C does not reach pytest.
    result = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600,
                            start_new_session=True, preexec_fn=ctrl_c_as_in_a_terminal)
    assert not armed.exists(), (result.stdout + result.stderr)[-3000:]
    return sweep_dir, armed, result.stdout + result.stderr, result.returncode


def test_ctrl_c_stops_parallel_jobs_gracefully_and_skips_the_rest(tmp_path, synthetic_data_dir):
    """joblib's launcher, left alone, ends its workers at once on Ctrl-C: no checkpoint, no record, no summary."""
    sweep_dir, armed, output, returncode = parallel_sweep_signalled(tmp_path, synthetic_data_dir)
    assert returncode == 130 and "Traceback" not in output, output[-3000:]
    assert "The sweep was stopped (Ctrl-C)" in output
    # The two running jobs stopped after a batch and saved it; the third never started.
    assert [row["status"] for row in summary_rows(sweep_dir)] == ["interrupted", "interrupted", "not run"]
    for job_dir in sorted(sweep_dir.glob("[01]_*")):
        error = json.loads((job_dir / "metrics.json").read_text())["error"]
        saved = torch.load(job_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
        assert f"step {saved}. Saved" in error, error
    assert not (sweep_dir / ".stop_requested").exists()


def test_sigterm_to_the_launcher_alone_stops_the_running_jobs_too(tmp_path, synthetic_data_dir):
    """`kill <launcher pid>` reaches no worker: the jobs see the launcher's stop request and stop as on a SIGTERM of
    their own (before, they trained to the end, while the launcher said they were stopping)."""
    sweep_dir, _, output, returncode = parallel_sweep_signalled(
        tmp_path, synthetic_data_dir, "+callbacks.signal.signal_name=SIGTERM", "+callbacks.signal.launcher_only=true")
    assert returncode == 143 and "Traceback" not in output, output[-3000:]
    assert [row["status"] for row in summary_rows(sweep_dir)] == ["interrupted", "interrupted", "not run"]
    for job_dir in sorted(sweep_dir.glob("[01]_*")):
        error = json.loads((job_dir / "metrics.json").read_text())["error"]
        saved = torch.load(job_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
        # "at the end of epoch 1" when the job saw the request in an epoch's last batch (a loaded machine's timing).
        assert re.search(rf"Training stopped by SIGTERM at (the end of )?epoch \d+, step {saved}\. Saved", error), error
    assert re.search(r"The sweep was stopped \(SIGTERM\): 2 interrupted, 1 not run\. Finish the sweep in its folder with "
                     r"its own command and ckpt_path=last \(.*\): python -m src\.train -m .*hydra/launcher=joblib "
                     r"hydra\.launcher\.n_jobs=2 .*seed=1,2,3 .*hydra\.sweep\.dir=.* ckpt_path=last\n", output)


def test_a_stop_request_left_by_another_command_is_ignored(tmp_path):
    """A launcher killed outright leaves its marker behind: a later resubmission into the folder must still run."""
    from src.utils.sweep_stop import MARKER, request_stop, requested_exit_code

    (tmp_path / MARKER).write_text("130 999999999")
    assert requested_exit_code(tmp_path) is None
    request_stop(tmp_path, 143)
    assert requested_exit_code(tmp_path) == 143
    request_stop(tmp_path, 130)  # a second signal (Ctrl-C after SIGTERM): the sweep ends with the first one's code
    assert requested_exit_code(tmp_path) == 143


def test_a_sweep_run_again_into_its_folder_is_refused_and_keeps_its_results(tmp_path, synthetic_data_dir):
    sweep_dir = tmp_path / "sweep"
    assert multirun(sweep_dir, synthetic_data_dir, "model=mlp", "seed=1").returncode == 0
    (job_dir,) = [path for path in sweep_dir.iterdir() if (path / ".hydra").is_dir()]
    kept = [job_dir / "metrics.json", job_dir / "checkpoints" / "last.ckpt", job_dir / ".hydra" / "overrides.yaml"]
    before = [path.read_bytes() for path in kept]
    again = multirun(sweep_dir, synthetic_data_dir, "model=mlp", "seed=1")
    assert again.returncode == 1 and f"{job_dir} holds a run already" in again.stdout + again.stderr
    # The sweep's folder was given: ckpt_path=last (not one job's checkpoint) continues each job in it.
    assert ("Choose another hydra.sweep.dir, or leave it out: each sweep then gets a new dated folder; to continue the "
            "sweep in it instead (each job from its own last.ckpt), add ckpt_path=last.") in again.stdout + again.stderr
    assert [path.read_bytes() for path in kept] == before  # not even recorded as a failed job
    # Without its last.ckpt the job has nothing to continue: ckpt_path=last is not offered.
    (job_dir / "checkpoints" / "last.ckpt").unlink()
    again = multirun(sweep_dir, synthetic_data_dir, "model=mlp", "seed=1")
    assert again.returncode == 1 and f"{job_dir} holds a run already (metrics.json)" in again.stdout + again.stderr
    assert "ckpt_path=last" not in again.stdout + again.stderr


@pytest.mark.parametrize("overrides, message", [
    # The summary lists the jobs by their .hydra/overrides.yaml: it said "no jobs" and exited 0.
    (["hydra.output_subdir=null", "seed=1,2"], "hydra.output_subdir=null leaves the sweep's jobs without Hydra's record"),
    (["hydra.output_subdir=meta", "seed=1,2"], "hydra.output_subdir=meta leaves the sweep's jobs without Hydra's record"),
    # A config file's sweep (the command line's is refused before Hydra starts): the basic sweeper's traceback.
    (["hydra.searchpath=[file://{own}]", "sweep=lr_range"], "model.optimizer.lr: interval(0.001,0.01) in "
     "hydra.sweeper.params is a continuous range, which only an optimizing sweeper (such as Optuna's) can sample"),
])
def test_a_sweep_its_summary_or_sweeper_cannot_handle_is_refused_before_its_folder_is_made(tmp_path, synthetic_data_dir,
                                                                                         overrides, message):
    (tmp_path / "own" / "sweep").mkdir(parents=True)
    (tmp_path / "own" / "sweep" / "lr_range.yaml").write_text(
        "# @package _global_\nhydra:\n  sweeper:\n    params:\n      model.optimizer.lr: interval(0.001,0.01)\n")
    overrides = [override.format(own=tmp_path / "own") for override in overrides]
    result = multirun(None, synthetic_data_dir, f"paths.log_dir={tmp_path / 'out'}", *overrides)
    assert result.returncode == 1 and result.stderr.strip().startswith(message), result.stderr[-2000:]
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_sweep_given_ckpt_path_last_from_the_start_is_stopped_and_finished_like_any(tmp_path, synthetic_data_dir):
    """A cluster array requeued with ckpt_path=last: a stop records its later jobs as not run; its continuation goes
    past a job that had failed without a last.ckpt, leaving its record as it is."""
    armed, sweep_dir = tmp_path / "armed", tmp_path / "sweep"
    armed.touch()
    sweep = ["model=mlp", "seed=1,2,3", "ckpt_path=last", f"+callbacks.stop._target_={__name__}.CtrlCIfArmed",
             f"+callbacks.stop.armed={armed}"]
    stop = multirun(sweep_dir, synthetic_data_dir, *sweep)
    assert stop.returncode == 130 and "; 2 later jobs did not start" in stop.stdout + stop.stderr
    rows = summary_rows(sweep_dir)
    assert [row["status"] for row in rows] == ["interrupted", "not run", "not run"]
    failed = sweep_dir / rows[1]["job"] / "metrics.json"
    failed.write_text(json.dumps({"status": "failed", "error": "RuntimeError: out of memory"}))  # as if it had run
    result = multirun(sweep_dir, synthetic_data_dir, *sweep)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert [row["status"] for row in summary_rows(sweep_dir)] == ["ok", "failed", "ok"]
    assert json.loads(failed.read_text())["error"] == "RuntimeError: out of memory"
    assert (f"ckpt_path=last: {sweep_dir / rows[1]['job']} holds a run that failed, and no "
            f"{sweep_dir / rows[1]['job']}/checkpoints/last.ckpt to continue from: it is left as it is. To run it again, "
            "remove that folder or choose another hydra.sweep.dir.") in output


def test_joblib_launcher_runs_jobs_in_parallel_with_split_threads(tmp_path, synthetic_data_dir):
    # Other sweeps started in this second and the next ones hold their dated folders: this sweep gets a folder of its
    # own, and its jobs, in processes of their own, all find it. Every second the sweep may name its folder in, up to
    # multirun()'s timeout, is taken: a loaded machine can take many seconds to start Python and Hydra.
    log_dir = tmp_path / "outputs"
    now = datetime.now()
    taken = [log_dir / "multirun" / f"{now + timedelta(seconds=s):%Y-%m-%d/%H-%M-%S}" for s in range(600 + 60)]
    for folder in taken:
        folder.mkdir(parents=True)
        (folder / "multirun.yaml").write_text("{}\n")
    result = multirun(None, synthetic_data_dir, f"paths.log_dir={log_dir}", "hydra/launcher=joblib",
                      "hydra.launcher.n_jobs=2", "model=mlp", "seed=1,2")
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep_dir,) = [folder for folder in log_dir.glob("multirun/*/*") if folder not in taken]
    assert sweep_dir.name.endswith("-2") and sweep_dir.with_name(sweep_dir.name[:-2]) in taken
    assert all([path.name for path in folder.iterdir()] == ["multirun.yaml"] for folder in taken)
    assert [row["status"] for row in summary_rows(sweep_dir)] == ["ok", "ok"]
    # The cores this process may run on (taskset, a container's cpuset), as the jobs count them: not os.cpu_count().
    threads = max(1, usable_cpus() // min(2, usable_cpus()))
    logs = sorted(sweep_dir.glob("*/train.log"))
    assert len(logs) == 2
    for log_file in logs:
        assert f"using {threads} CPU thread{'' if threads == 1 else 's'}\n" in log_file.read_text()
        # Recorded, since the CPU results depend on it: a job repeated alone needs OMP_NUM_THREADS=<that number>.
        assert json.loads((log_file.parent / "metrics.json").read_text())["cpu_threads"] == threads


def test_submitit_local_launcher(tmp_path, synthetic_data_dir):
    sweep_dir = tmp_path / "sweep"
    result = multirun(sweep_dir, synthetic_data_dir, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "model=mlp")
    assert result.returncode == 0, result.stderr[-3000:]
    assert [row["status"] for row in summary_rows(sweep_dir)] == ["ok"]


def test_summary_table_shows_accuracies_to_four_places_and_seconds_to_two():
    row = {"job": "0_model=mlp", "varied": "model=mlp", "status": "ok", "val/acc_best": 0.965, "test/acc": 0.96981,
           "test/loss": 0.104719, "wall_seconds": 13.7, "error": None, "overrides": "model=mlp"}
    assert markdown_table([row]).splitlines()[-1] == "| 0_model=mlp | model=mlp | ok | 0.9650 | 0.9698 | 0.1047 | 13.70 |  |"
    # An error with a '|' or a line break stays in its cell: the table keeps its columns.
    failed = {**row, "status": "failed", "error": "ValueError: expected a|b,\ngot c"}
    assert markdown_table([failed]).splitlines()[-1].endswith(" | ValueError: expected a\\|b, got c |")


def test_one_damaged_metrics_file_does_not_cost_the_summary_of_the_others(tmp_path):
    # Job 1's file was cut short (a full disk, say); job 2's is JSON, but not the object a run writes.
    for job, metrics_text in (("0_seed=1", '{"status": "ok", "val/acc_best": 0.98}'), ("1_seed=2", '{"status": "o'),
                              ("2_seed=3", "[]")):
        (tmp_path / job / ".hydra").mkdir(parents=True)
        (tmp_path / job / ".hydra" / "overrides.yaml").write_text(f"- seed={job[-1]}\n")
        (tmp_path / job / "metrics.json").write_text(metrics_text)
    rows = write_summary(tmp_path)
    assert [(row["status"], row["val/acc_best"]) for row in rows] == [("ok", 0.98), ("unreadable metrics.json", None),
                                                                     ("unreadable metrics.json", None)]
    assert "JSONDecodeError" in rows[1]["error"] and (tmp_path / "summary.md").exists()
    assert rows[2]["error"] == "not a JSON object"


def test_the_summary_lists_jobs_in_number_order_and_marks_what_varies(tmp_path):
    for number in reversed(range(12)):  # 10 and 11 would sort before 2 as text
        job = tmp_path / f"{number}_seed={number}"
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(f"- model=mlp\n- seed={number}\n")
        (job / "metrics.json").write_text(json.dumps({"status": "ok", "val/acc_best": number / 100}))
    rows = write_summary(tmp_path)
    assert [row["job"].split("_")[0] for row in rows] == [str(number) for number in range(12)]
    assert [row["val/acc_best"] for row in rows] == [number / 100 for number in range(12)]
    assert rows[11]["varied"] == "seed=11"  # model=mlp is the same in every job


def test_the_summary_gives_each_settings_spread_over_seeds(tmp_path):
    """sweep=seeds asks how big the noise is; with the model swept too, each model gets its own figures."""
    accuracies = {("mlp", 1): 0.97, ("mlp", 2): 0.98, ("mlp", 3): 0.99, ("cnn", 1): 0.99, ("cnn", 2): 0.995, ("cnn", 3): None}
    for number, ((model, seed), acc) in enumerate(accuracies.items()):
        job = tmp_path / f"{number}_model={model},seed={seed}"
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(f"- model={model}\n- seed={seed}\n- trainer.max_epochs=1\n")
        metrics = {"status": "ok", "val/acc_best": acc, "test/acc": acc} if acc else {"status": "failed", "error": "x"}
        (job / "metrics.json").write_text(json.dumps(metrics))
    write_summary(tmp_path)
    assert (tmp_path / "summary.md").read_text().endswith(
        "\nMean ± standard deviation over seeds:\n"
        "- model=mlp (3 seeds): val/acc_best 0.9800 ± 0.0100, test/acc 0.9800 ± 0.0100\n"
        "- model=cnn (2 seeds): val/acc_best 0.9925 ± 0.0035, test/acc 0.9925 ± 0.0035\n")
    assert seed_statistics(collect_jobs(tmp_path / "0_model=mlp,seed=1")) == []  # no jobs
    for job in tmp_path.glob("[345]_*"):
        shutil.rmtree(job)
    rows = collect_jobs(tmp_path)  # the model the same in every job: a setting of its own no longer
    assert seed_statistics(rows)[1] == "- every job (3 seeds): val/acc_best 0.9800 ± 0.0100, test/acc 0.9800 ± 0.0100"


def test_the_summary_names_the_best_job_by_validation_never_by_test(tmp_path):
    results = [("ok", 0.990, 0.995), ("ok", 0.992, 0.990), ("failed", None, None), ("ok", 0.992, 0.999)]
    for number, (status, val, test) in enumerate(results):
        job = tmp_path / f"{number}_seed={number}"
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(f"- seed={number}\n")
        (job / "metrics.json").write_text(json.dumps({"status": status, "val/acc_best": val, "test/acc": test}))
    text = summary_text(collect_jobs(tmp_path))
    # Job 3 ties job 1 on validation: the first of them, whatever their test accuracies.
    assert "\nBest by validation: 1_seed=1 (val/acc_best 0.9920, test/acc 0.9900)\n" in text
    assert text.endswith("test/acc 0.9900)\n\nMean ± standard deviation over seeds:\n"
                         "- every job (3 seeds): val/acc_best 0.9913 ± 0.0012, test/acc 0.9947 ± 0.0045\n")
    assert best_by_validation(collect_jobs(tmp_path / "0_seed=0")) == []  # nothing to choose between


def test_a_one_job_sweep_lists_all_its_overrides_as_what_varies(tmp_path):
    """Nothing differs between the jobs of a one-job sweep: its row still names its settings, not an empty label."""
    job = tmp_path / "0_model=mlp,seed=3"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("- model=mlp\n- seed=3\n")
    (job / "metrics.json").write_text(json.dumps({"status": "ok", "val/acc_best": 0.97}))
    (row,) = write_summary(tmp_path)
    assert row["varied"] == row["overrides"] == "model=mlp seed=3"
    assert best_by_validation([row]) == []  # one finished job: nothing to choose between
    assert "Best by validation" not in summary_text([row])


def test_sweep_and_launcher_configs_compose():
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        sweep = compose("train", overrides=["sweep=arch_lr"], return_hydra_config=True)
        slurm = compose("train", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    assert sweep.hydra.mode.name == "MULTIRUN"
    assert dict(sweep.hydra.sweeper.params) == {"model": "mlp,cnn", "model.optimizer.lr": "1e-3,3e-3"}
    assert "sweep" in sweep.hydra.job.config.override_dirname.exclude_keys  # job folders named by what varies
    assert slurm.hydra.launcher._target_.endswith("SlurmLauncher") and slurm.hydra.launcher.tasks_per_node == 1


def test_hparams_have_the_same_keys_in_every_run(tmp_path):
    keys = []
    for choice in ("model=mlp", "model=cnn", "callbacks=[default,ema]"):
        params = run_hparams(compose_config([choice, f"paths.output_dir={tmp_path}"]), num_parameters=1)
        assert all(isinstance(v, (str, int, float, bool)) for v in params.values())
        assert params["callbacks/ema_decay"] == (0.999 if "ema" in choice else 0.0)
        keys.append(set(params))
    assert keys[0] == keys[1] == keys[2]


def test_hparams_show_the_runs_own_settings(tmp_path):
    cfg = compose_config([f"paths.output_dir={tmp_path}", "model=mlp", "model.optimizer.name=sgd", "model.optimizer.lr=0.07",
                          "model.optimizer.weight_decay=0.002", "+model.optimizer.momentum=0.8", "model.scheduler.name=cosine",
                          "+model.scheduler.warmup_steps=30", "model.dropout=0.3", "data.val_size=800",
                          "model.label_smoothing=0.05", "model.batch_norm=false", "data.batch_size=48",
                          "trainer.max_epochs=7", "++trainer.precision=bf16-mixed", "seed=11", "model.compile=true",
                          "++trainer.accumulate_grad_batches=3", "++trainer.gradient_clip_val=0.5"])
    assert run_hparams(cfg, num_parameters=1234) | {"model/arch": "", "data/augment": ""} == {
        "model": "MLP", "model/arch": "", "model/parameters": 1234, "model/dropout": 0.3, "model/conv_dropout": 0.0,
        "model/batch_norm": "false", "model/label_smoothing": 0.05, "model/compile": "true", "model/channels_last": "false",
        "model/cuda_graph": "false", "optimizer/name": "sgd", "optimizer/lr": 0.07, "optimizer/weight_decay": 0.002,
        "optimizer/settings": "decay_norm_and_bias=true, momentum=0.8, nesterov=true", "scheduler": "cosine",
        "scheduler/settings": "min_lr=0, warmup_steps=30",
        "callbacks/ema_decay": 0.0, "data/batch_size": 48, "data/val_size": 800, "data/augment": "",
        "trainer/max_epochs": 7, "trainer/precision": "bf16-mixed", "trainer/accumulate_grad_batches": 3,
        "trainer/gradient_clip_val": 0.5, "seed": 11,
    }


def test_hparams_show_the_settings_a_run_used_whether_written_or_left_at_their_defaults(tmp_path):
    """Sweeping model.optimizer.name=adam,sgd: the SGD rows must show the momentum they trained with."""
    base = [f"paths.output_dir={tmp_path}", "model=mlp", "model.optimizer.name=sgd"]
    implicit = run_hparams(compose_config(base), num_parameters=1)
    explicit = run_hparams(compose_config([*base, "+model.optimizer.momentum=0.9", "+model.optimizer.nesterov=true",
                                           "+model.scheduler.div_factor=25", "+model.optimizer.betas=[0.5,0.6]"]), 1)
    assert implicit == explicit  # betas: not read by SGD
    assert implicit["optimizer/settings"] == "decay_norm_and_bias=true, momentum=0.9, nesterov=true"
    assert implicit["scheduler/settings"] == "cycle_momentum=true, div_factor=25, final_div_factor=10000, pct_start=0.25"
    adam = run_hparams(compose_config([*base[:2], "+model.optimizer.betas=[0.8,0.999]"]), num_parameters=1)
    assert adam["optimizer/settings"] == "betas=[0.8, 0.999], decay_norm_and_bias=true"


def test_job_dirnames_are_flat_short_and_unique():
    assert job_dirname(3, ["model.optimizer.lr=0.003", "model=cnn"]) == "3_model.optimizer.lr=0.003,model=cnn"
    assert "/" not in job_dirname(0, ["experiment=a/b"])
    long_a, long_b = job_dirname(1, ["x=" + "a" * 300]), job_dirname(1, ["x=" + "a" * 299 + "b"])
    assert len(long_a) <= 120 and long_a != long_b and long_a.endswith(",~" + long_a[-8:])
    at_the_limit, past_it = job_dirname(1, ["x=" + "a" * 116]), job_dirname(1, ["x=" + "a" * 117])
    assert len(at_the_limit) == len(past_it) == 120 and "~" not in at_the_limit and past_it.endswith(",~" + past_it[-8:])
    # Cut after the last override that fits whole: a value cut short (val_size=10 for 100) would read as another.
    overrides = [f"seed={n}" for n in range(10)] + ["model.optimizer.name=adam", "data.val_size=100"] + ["model=mlp"] * 3
    name = job_dirname(0, overrides, swept={"model.optimizer.name"})
    assert len(name) <= 120 and name.startswith("0_model.optimizer.name=adam,data.val_size=100,")
    assert re.fullmatch(r"0_[^~]*=[^,~]*,~[0-9a-f]{8}", name) and all(part in overrides for part in name[2:-10].split(","))
    sizes = "model.hidden_sizes=[" + ",".join(["1024"] * 30) + "]"  # one override whose list runs past the limit
    assert re.fullmatch(r"3_seed=1,~[0-9a-f]{8}", job_dirname(3, ["seed=1", sizes], swept={"seed"}))


def test_job_dirnames_put_the_swept_keys_first_and_leave_out_the_excluded(tmp_path):
    (tmp_path / "multirun.yaml").write_text(
        "hydra:\n  overrides:\n    task: [model=mlp, 'seed=range(1,3)', data.val_size=100, ++trainer.limit_train_batches=2]\n"
        "  sweeper:\n    params:\n      model.optimizer.lr: 0.001,0.003\n      data.batch_size: '64'\n")
    assert swept_keys(str(tmp_path)) == {"seed", "model.optimizer.lr"}
    job = ["model=mlp", "seed=2", "data.val_size=100", "++trainer.limit_train_batches=2", "model.optimizer.lr=0.003",
           "data.data_dir=/x/y", "data.batch_size=64"]
    assert job_dirname(4, job, swept_keys(str(tmp_path)), exclude=["data.data_dir"]) == (
        "4_model.optimizer.lr=0.003,seed=2,++trainer.limit_train_batches=2,data.batch_size=64,data.val_size=100,model=mlp")
    assert swept_keys(str(tmp_path / "elsewhere")) == set()  # no record: Hydra's alphabetical order


def test_several_sweep_jobs_resumed_in_one_sweep_each_continue_in_their_own_folder(tmp_path, synthetic_data_dir):
    sweep_dir = tmp_path / "sweep"
    plain_lr = "model.scheduler.name=none"  # a OneCycle schedule's length is fixed: no extending it
    assert multirun(sweep_dir, synthetic_data_dir, "model=mlp", plain_lr, "seed=1,2").returncode == 0
    last = [next(sweep_dir.glob(f"{n}_*")) / "checkpoints" / "last.ckpt" for n in (0, 1)]
    result = multirun(None, synthetic_data_dir, f"paths.log_dir={tmp_path / 'outputs'}", "model=mlp", plain_lr,
                      "trainer.max_epochs=2", "seed=null", f"ckpt_path={last[0]},{last[1]}")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    for checkpoint in last:
        metrics = json.loads((checkpoint.parent.parent / "metrics.json").read_text())
        assert metrics["resumed_from"] == str(checkpoint) and metrics["epochs"] == 2


def test_a_resumed_sweep_job_continues_in_its_own_folder(tmp_path, synthetic_data_dir):
    sweep_dir = tmp_path / "sweep"
    # No scheduler, so the resume may also extend the run (a OneCycle schedule's length is fixed).
    plain_lr = "model.scheduler.name=none"
    assert multirun(sweep_dir, synthetic_data_dir, "model=mlp", plain_lr, "seed=1,2").returncode == 0
    job_dir = next(sweep_dir.glob("1_*"))
    first_events = {path for path in (job_dir / "tensorboard").rglob("events*") if path.suffix != ".hparams"}

    # What a resubmission after pre-emption does: the same overrides plus ckpt_path, no sweep folder given.
    result = run_module(
        "src.train", "-m", f"paths.log_dir={tmp_path / 'outputs'}", f"data.data_dir={synthetic_data_dir}",
        "data.download=false", "data.val_size=80", "data.batch_size=32", "trainer.max_epochs=2",
        "callbacks.progress_bar=null", "++trainer.enable_progress_bar=false", "model=mlp", plain_lr, "seed=2",
        f"ckpt_path='{job_dir / 'checkpoints' / 'last.ckpt'}'", timeout=600,  # quoted: the folder name has = and ,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert not (tmp_path / "outputs").exists()  # no new sweep folder
    metrics = json.loads((job_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["resumed_from"].startswith(str(job_dir))
    assert "dirpath has changed" not in output  # so the best checkpoint's score carried over
    assert first_events < set((job_dir / "tensorboard").rglob("events*"))  # curves continue in the same run
    assert len(list((job_dir / "tensorboard").rglob("*.hparams"))) == 1  # the resumed run's HParams row replaced the first
    assert [row["status"] for row in summary_rows(sweep_dir)] == ["ok", "ok"]  # both jobs still summarized
    (earlier_record,) = sweep_dir.glob("multirun-*.yaml")  # the sweep's own, kept beside the resubmission's
    assert "seed=1,2" in earlier_record.read_text() and "seed=1,2" not in (sweep_dir / "multirun.yaml").read_text()

    # A resubmission with the wrong model fails loudly, and the job's finished result stays as it was.
    finished = (job_dir / "metrics.json").read_text()
    refused = run_module(
        "src.train", "-m", f"data.data_dir={synthetic_data_dir}", "data.download=false", "data.val_size=80",
        "callbacks.progress_bar=null", "++trainer.enable_progress_bar=false", "model=cnn", "seed=2",
        f"ckpt_path='{job_dir / 'checkpoints' / 'last.ckpt'}'", timeout=600,
    )
    output = refused.stdout + refused.stderr
    assert refused.returncode == 1 and "trained with another model (src.models.mlp.MLP; this run's is src.models.cnn.CNN)" in output, output[-3000:]
    assert (job_dir / "metrics.json").read_text() == finished

    # A resubmission that fails otherwise (here: no data on this node) is recorded, and the results it replaces are
    # kept, also through a second such failure.
    for _ in range(2):
        failed = run_module(
            "src.train", "-m", f"data.data_dir={tmp_path / 'no_data'}", "data.download=false", "data.val_size=80",
            "data.batch_size=32", "trainer.max_epochs=2", "callbacks.progress_bar=null", "++trainer.enable_progress_bar=false",
            "model=mlp", plain_lr, "seed=2", f"ckpt_path='{job_dir / 'checkpoints' / 'last.ckpt'}'", timeout=600,
        )
        record = json.loads((job_dir / "metrics.json").read_text())
        assert failed.returncode == 1 and record["status"] == "failed" and "MNIST files are missing" in record["error"]
        assert record["earlier_run"] == json.loads(finished)
        # Not "every job of the sweep": the sweep's other job had finished before.
        assert "Every job of the sweep that this command ran failed" in failed.stdout + failed.stderr


@pytest.mark.parametrize("n_jobs, jobs", [(None, 1), (1, 1), (3, 3), (16, 8), (-1, 8), (-2, 7), (-8, 1), (-20, 1)])
def test_parallel_jobs_count_as_joblib_does(monkeypatch, n_jobs, jobs):
    """Each job's CPU threads follow how many jobs run at once: joblib's n_jobs, counted back from the cores if < 0."""
    from src.utils.jobs import parallel_jobs, threads_per_job, usable_cpus

    pretend_a_sweep_job(monkeypatch, n_jobs, sweep_dir="no-such-folder")  # no record of the sweep: n_jobs counts
    assert usable_cpus() == 8
    assert (parallel_jobs(), threads_per_job()) == (jobs, 8 // jobs)


def pretend_a_sweep_job(monkeypatch, n_jobs: int | None, sweep_dir: str) -> None:
    """A sweep job's Hydra config with joblib's `n_jobs`, on 8 of the machine's 64 cores (taskset, a SLURM allocation:
    joblib counts those, not the machine's)."""
    from hydra.core.hydra_config import HydraConfig

    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(HydraConfig, "initialized", staticmethod(lambda: True))
    job = OmegaConf.create({"launcher": {"n_jobs": n_jobs}, "sweep": {"dir": sweep_dir}})
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: job))


@pytest.mark.parametrize("task, params, max_batch_size, jobs", [
    (["model=mlp,cnn"], {}, None, 2),
    (["model=mlp,cnn", "seed=1,2,3", "trainer.max_epochs=1"], {}, None, 6),
    (["model=mlp,cnn", "seed=1,2,3"], {}, 4, 4),
    (["trainer.max_epochs=1"], {"seed": "1,2,3"}, None, 3),  # sweep=seeds: its values in hydra.sweeper.params
    (["seed=7"], {"seed": "1,2,3"}, None, 1),  # the command line's value replaces the sweep's
    (["seed=range(1,30)"], {}, None, 8),  # more jobs than cores: as many as joblib runs
])
def test_a_sweep_of_fewer_jobs_than_joblib_workers_shares_the_cores_between_its_jobs(tmp_path, monkeypatch, task, params,
                                                                                      max_batch_size, jobs):
    """With n_jobs=-1 on 8 cores, a sweep of 2 jobs ran each with 1 thread: 6 cores stood idle."""
    from src.utils.jobs import parallel_jobs, threads_per_job

    sweeper = {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper", "max_batch_size": max_batch_size,
               "params": params}
    OmegaConf.save({"hydra": {"sweeper": sweeper, "overrides": {"task": task}}}, tmp_path / "multirun.yaml")
    pretend_a_sweep_job(monkeypatch, -1, sweep_dir=str(tmp_path))
    assert (parallel_jobs(), threads_per_job()) == (jobs, 8 // jobs)
    sweeper["_target_"] = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"  # its params mean other things
    OmegaConf.save({"hydra": {"sweeper": sweeper, "overrides": {"task": task}}}, tmp_path / "multirun.yaml")
    assert parallel_jobs() == 8


def test_a_parallel_sweep_job_that_runs_alone_takes_every_core(tmp_path, synthetic_data_dir):
    """joblib starts its workers with (cores / n_jobs) threads each: a sweep of one job took that, not every core."""
    from src.utils.jobs import usable_cpus

    if usable_cpus() < 2:
        pytest.skip("one core: every run takes 1 thread")
    result = multirun(tmp_path, synthetic_data_dir, "hydra/launcher=joblib", f"hydra.launcher.n_jobs={usable_cpus()}",
                      "model=mlp", "test=false")
    assert result.returncode == 0, result.stderr[-3000:]
    (metrics,) = tmp_path.glob("*/metrics.json")
    assert json.loads(metrics.read_text())["cpu_threads"] == usable_cpus()
    assert "sweep jobs run in parallel" not in metrics.with_name("train.log").read_text()


def test_the_sweeps_tensorboard_command_names_its_subfolder_of_a_logger_folder_shared_with_other_runs(tmp_path):
    from src.utils.sweep_summary import _tensorboard_folder

    sweep = tmp_path / "multirun" / "2026-12-03" / "14-22-20"
    ours = tmp_path / "tb" / "tensorboard" / sweep.relative_to(sweep.anchor)  # where its jobs' subfolders are
    for save_dir in (tmp_path / "tb", "${paths.log_dir}/tb"):
        config = compose_config([f"logger.tensorboard.save_dir='{save_dir}'", f"paths.log_dir={tmp_path}"])
        assert _tensorboard_folder(config, sweep) == ours
    assert _tensorboard_folder(compose_config([]), sweep) is None  # in the jobs' own folders: the sweep's shows them
    assert _tensorboard_folder(compose_config(["logger=[]"]), sweep) is None
    # The default save_dir (paths.output_dir, each job's folder) as it resolves in a run: not a shared folder either.
    assert _tensorboard_folder(compose_config([f"paths.output_dir={tmp_path / 'job'}"]), sweep) is None


def test_hparams_tell_augmentation_off_and_an_unaveraged_checkpoint_apart(tmp_path):
    from src.utils.hparams import trained_settings

    described = {enabled: run_hparams(compose_config([f"data.augment.enabled={enabled}", f"paths.output_dir={tmp_path}"]),
                                      num_parameters=1)["data/augment"] for enabled in ("true", "false")}
    assert described["false"] == "off" and "degrees=8.0" in described["true"]  # a sweep over it: two values
    assert trained_settings({})["callbacks/ema_decay"] == 0.0  # trained without weight averaging
    assert trained_settings({"current_model_state": {}})["callbacks/ema_decay"] == -1.0  # averaged, decay unrecorded



def test_a_tested_checkpoints_hparams_show_the_accumulation_and_clipping_it_was_trained_with(tmp_path, synthetic_data_dir):
    """Checkpoints record them: `train=false` tests showed this run's settings (the defaults) instead."""
    from src.train import train
    from src.utils.hparams import trained_settings

    trained = ["model=mlp", "++trainer.accumulate_grad_batches=2", "++trainer.gradient_clip_val=0.5"]
    train(compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path), *trained]))
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    settings = trained_settings(checkpoint)
    assert (settings["trainer/accumulate_grad_batches"], settings["trainer/gradient_clip_val"]) == (2, 0.5)
    older = trained_settings({})  # saved before checkpoints recorded them
    assert (older["trainer/accumulate_grad_batches"], older["trainer/gradient_clip_val"]) == (-1, -1)

def test_a_tested_checkpoints_seed_in_hparams_is_its_runs_not_its_shuffle_seed():
    """src.eval of a `seed=1 data.shuffle_seed=7` run showed 7 in the seed column."""
    from src.utils.hparams import trained_settings

    assert trained_settings({"run_seed": 1, "datamodule_hyper_parameters": {"shuffle_seed": 7}})["seed"] == 1
    assert trained_settings({"datamodule_hyper_parameters": {"shuffle_seed": 7}})["seed"] == 7  # saved before run_seed


def test_a_stop_request_a_killed_launcher_left_is_cleared_when_the_sweep_starts_again(tmp_path):
    """It is ignored only while its process id differs; in a container the next launcher often has the same one."""
    from src.utils.sweep_stop import MARKER, requested_exit_code
    from src.utils.sweep_summary import SweepSummary

    (tmp_path / MARKER).write_text(f"130 {os.getpid()}")
    assert requested_exit_code(tmp_path) == 130
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}, "launcher": {"_target_": "basic"}}})
    SweepSummary().on_multirun_start(config)
    assert requested_exit_code(tmp_path) is None


def test_the_launcher_takes_two_ctrl_cs_as_requests_and_the_third_as_an_abort(tmp_path, monkeypatch):
    from src.utils.sweep_stop import leave_interruptions_to_the_jobs, requested_exit_code

    handlers: dict = {}
    monkeypatch.setattr(signal, "signal", lambda signum, handler: handlers.setdefault(signum, handler))
    monkeypatch.setattr(signal, "getsignal", lambda signum: signal.default_int_handler)  # as in a terminal
    monkeypatch.setenv("MNIST_SWEEP_LAUNCHER_PID", "")  # set by the call: put back as it was
    leave_interruptions_to_the_jobs(tmp_path)
    # Started with Ctrl-C ignored (a script's background job), it leaves it so: its jobs would take it over too.
    ignored: dict = {}
    monkeypatch.setattr(signal, "signal", lambda signum, handler: ignored.setdefault(signum, handler))
    monkeypatch.setattr(signal, "getsignal", lambda signum: signal.SIG_IGN)
    leave_interruptions_to_the_jobs(tmp_path)
    assert set(ignored) == {signal.SIGTERM}
    monkeypatch.undo()
    try:
        for _ in range(2):
            handlers[signal.SIGINT](signal.SIGINT, None)  # "Ctrl-C twice more to abandon them at once"
    except KeyboardInterrupt:
        pytest.fail("a second Ctrl-C abandoned the running jobs")
    assert requested_exit_code(tmp_path) == 130
    with pytest.raises(KeyboardInterrupt):
        handlers[signal.SIGINT](signal.SIGINT, None)


def test_a_logger_inside_the_run_folder_needs_no_version_and_a_fixed_one_is_kept():
    from src.utils.run_folders import logger_version, versioned_by_run_folder

    assert logger_version("/r/tb", "/r") == logger_version("/r", "/r") == ""  # ${paths.output_dir}/tb: inside it
    assert logger_version("/shared", "/runs/a") == "runs/a"
    assert versioned_by_run_folder({"version": "${logger_version:${logger.tensorboard.save_dir},x}"})
    assert not versioned_by_run_folder({"version": "mine"})  # the user's own: never the run folder's to remove


@pytest.mark.parametrize("statuses, advice", [
    (["interrupted", "interrupted"], ": 2 interrupted. Resume each interrupted job as its message says, and run the "
                                     "jobs not run as a sweep of their own."),  # no multirun.yaml to repeat
    (["interrupted", "not run", "ok"], ": 1 interrupted, 1 not run. Resume"),
    (["ok", "ok"], "."),
])
def test_a_stopped_sweep_ends_with_advice_for_the_jobs_it_has(tmp_path, caplog, statuses, advice):
    from src.utils.sweep_stop import request_stop
    from src.utils.sweep_summary import SweepSummary

    for number, status in enumerate(statuses):
        job = tmp_path / f"{number}_seed={number}"
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(f"- seed={number}\n")
        (job / "metrics.json").write_text(json.dumps({"status": status}))
    request_stop(tmp_path, 143)
    with pytest.raises(SystemExit) as exited:
        SweepSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    assert exited.value.code == 143
    assert f"The sweep was stopped (SIGTERM){advice}" in caplog.text  # no "0 not run"


@pytest.mark.parametrize("statuses, exit_code", [(["failed", "failed"], 1), (["ok", "ok"], 1)])
def test_a_summary_that_cannot_be_written_is_printed_and_the_sweep_exits_non_zero(tmp_path, caplog, monkeypatch,
                                                                                    statuses, exit_code):
    """Hydra turns a callback's exception into a warning: a full disk at the summary ended the sweep with exit 0 and
    no table, even when every job had failed."""
    from src.utils.sweep_summary import SweepSummary

    for number, status in enumerate(statuses):
        job = tmp_path / f"{number}_seed={number}"
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(f"- seed={number}\n")
        (job / "metrics.json").write_text(json.dumps({"status": status, "error": "ValueError: x" * (status != "ok")}))

    def disk_full(path, text):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr("src.utils.atomic_files.write_text_atomically", disk_full)
    with caplog.at_level(logging.INFO), pytest.raises(SystemExit) as exited:
        SweepSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    assert exited.value.code == exit_code
    assert f"| 1_seed=1 | seed=1 | {statuses[1]} |" in caplog.text  # the table, printed all the same
    assert (f"Could not write the sweep's summary files into {tmp_path} (OSError: [Errno 28] No space left on device: "
            f"'{tmp_path / 'summary.csv'}'). The jobs' own folders are intact.") in caplog.text
    assert not (tmp_path / "summary.csv").exists()


def test_a_damaged_record_of_a_jobs_overrides_does_not_cost_the_summary(tmp_path):
    for job, record in (("0_seed=1", "- seed=1\n"), ("1_seed=2", "[seed=2\n"), ("2_seed=3", "seed: 3\n")):
        (tmp_path / job / ".hydra").mkdir(parents=True)
        (tmp_path / job / ".hydra" / "overrides.yaml").write_text(record)
        (tmp_path / job / "metrics.json").write_text('{"status": "ok"}')
    rows = write_summary(tmp_path)
    assert [row["status"] for row in rows] == ["ok", "ok", "ok"] and rows[0]["overrides"] == "seed=1"
    assert rows[1]["error"].startswith("1_seed=2/.hydra/overrides.yaml cannot be read (")
    assert rows[2]["error"] == "2_seed=3/.hydra/overrides.yaml is not a list of overrides"


def test_a_command_that_ran_no_job_is_not_a_sweep_whose_every_job_failed(tmp_path, caplog):
    """The earlier command's failed jobs are not this command's: it ran none, so none of its failed."""
    from src.utils.sweep_summary import SweepSummary

    job = tmp_path / "0_seed=0"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("- seed=0\n")
    (job / "metrics.json").write_text(json.dumps({"status": "failed", "error": "ValueError: x"}))
    summary = SweepSummary()
    summary._started = time.time() + 10  # this command started after every file in the folder was written
    summary.on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}, "logger": {}}))
    assert "Every job" not in caplog.text


def test_the_summary_picks_a_best_job_only_among_several_finished_ones_and_ckpt_path_last_is_not_a_setting(tmp_path):
    for job, overrides, status in (("0_seed=1", "- seed=1\n", "ok"), ("1_seed=2", "- seed=2\n- ckpt_path=last\n", "failed")):
        (tmp_path / job / ".hydra").mkdir(parents=True)
        (tmp_path / job / ".hydra" / "overrides.yaml").write_text(overrides)
        (tmp_path / job / "metrics.json").write_text(json.dumps({"status": status, "val/acc_best": 0.9}))
    rows = collect_jobs(tmp_path)
    assert [row["varied"] for row in rows] == ["seed=1", "seed=2"]  # a resumed job differs only in where it went on
    assert "Best by validation" not in summary_text(rows)  # one finished job: nothing to choose between


def test_a_job_whose_record_cannot_be_written_still_reports_its_own_failure(tmp_path, monkeypatch, caplog):
    """A disk that fails the job fails its metrics.json too: the sweep ended in a chain of tracebacks."""
    from src.utils import run

    def failing(cfg):
        raise ValueError("the job's own error")

    def disk_full(path, record):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(run, "write_json_atomically", disk_full)
    monkeypatch.setattr("src.utils.jobs.in_multirun", lambda: True)
    monkeypatch.setattr("src.utils.sweep_stop.sweep_stop_code", lambda: None)
    cfg = compose_config([f"paths.output_dir={tmp_path}"])
    with caplog.at_level(logging.INFO):
        assert run.run_reporting_failures(failing, cfg) is None  # the sweep goes on to its next job
    assert f"Could not record the job's end in {tmp_path / 'metrics.json'} ([Errno 28] No space left on device" in caplog.text
    assert "This job failed" in caplog.text and "the job's own error" in caplog.text


def test_a_stop_one_worker_notes_is_the_launchers_for_every_job(tmp_path, monkeypatch):
    """A joblib worker stopped on its own (SIGTERM to that process) writes the note in its launcher's name: the
    launcher and the other workers read only notes of their own sweep command."""
    from src.utils.sweep_stop import request_stop, requested_exit_code

    monkeypatch.setenv("MNIST_SWEEP_LAUNCHER_PID", str(os.getpid() + 1))  # this process: a worker of that launcher
    request_stop(tmp_path, 143)
    assert requested_exit_code(tmp_path) == 143  # as every process of the sweep reads it
    monkeypatch.setenv("MNIST_SWEEP_LAUNCHER_PID", str(os.getpid() + 2))  # a later command's launcher: not its stop
    assert requested_exit_code(tmp_path) is None
