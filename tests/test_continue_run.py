"""ckpt_path=last: a run in a fixed folder (a requeued cluster job, a stopped sweep run again into its folder)
continues from that folder's last.ckpt, or starts there when it has none, never over a finished run's results."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from unittest.mock import ANY

import pytest
from omegaconf import OmegaConf

from src.api import Run
from src.errors import RunFolderTaken, RunInterrupted, UserInputError
from src.train import train
from tests.conftest import compose_config, tiny_run_overrides


def test_ckpt_path_last_starts_a_run_in_its_folder_then_continues_it(tmp_path, synthetic_data_dir, caplog):
    folder = tmp_path / "run"
    run = [*tiny_run_overrides(synthetic_data_dir, folder), "model=mlp", "trainer.max_epochs=2", "ckpt_path=last"]
    stop = ["+callbacks.stop._target_=tests.test_eval_resume.InterruptAtStep", "+callbacks.stop.step=3"]
    caplog.set_level(logging.INFO, logger="src.utils.continue_run")
    with pytest.raises(RunInterrupted):
        train(compose_config([*run, *stop]))
    last = folder / "checkpoints" / "last.ckpt"
    assert f"ckpt_path=last: {last} does not exist yet, so this run starts from the beginning" in caplog.text
    resumed = train(compose_config(run))
    assert resumed["resumed_from"] == str(last.resolve()) and resumed["epochs"] == 2
    assert OmegaConf.load(folder / "config.yaml").ckpt_path == str(last)  # the checkpoint it did continue from
    assert not list(folder.rglob("attempt-*"))  # an attempt that saved last.ckpt is continued, its curves with it
    assert [row["epoch"] for row in Run(folder).history()] == [0, 1]
    straight = train(compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path / "straight"), "model=mlp",
                                     "trainer.max_epochs=2"]))
    for key in ("val/acc_best", "test/acc", "test/loss"):
        assert resumed[key] == straight[key], key


@pytest.mark.parametrize("record, ended", [
    ({"status": "failed", "error": "the loss diverged"}, "failed"),
    ({"status": "ok", "test/acc": 0.99}, "finished"),  # its last.ckpt deleted to free space, say
    ("{not json", "left unreadable metrics.json"),
])
def test_ckpt_path_last_leaves_a_run_that_ended_without_last_ckpt_as_it_is(tmp_path, synthetic_data_dir, caplog,
                                                                          record, ended):
    """Nothing to continue, and nothing to write over: a requeued job ends, a continued sweep goes on to its next."""
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "metrics.json").write_text(record if isinstance(record, str) else json.dumps(record))
    before = (folder / "metrics.json").read_bytes()
    metrics = train(compose_config([*tiny_run_overrides(synthetic_data_dir, folder), "model=mlp", "ckpt_path=last"]))
    assert metrics == (record if isinstance(record, dict) else {"status": "unreadable metrics.json", "error": ANY})
    assert (folder / "metrics.json").read_bytes() == before and sorted(folder.iterdir()) == [folder / "metrics.json"]
    assert (f"ckpt_path=last: {folder} holds a run that {ended}, and no {folder}/checkpoints/last.ckpt to continue "
            "from: it is left as it is. To run it again, remove that folder or choose another hydra.run.dir.") in caplog.text


def test_ckpt_path_last_starts_a_run_stopped_before_it_saved_anything(tmp_path, synthetic_data_dir):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "metrics.json").write_text(json.dumps({"status": "interrupted", "error": "Stopped by SIGTERM outside "
                                                     "training and testing: nothing was saved at that moment."}))
    run = [*tiny_run_overrides(synthetic_data_dir, folder), "model=mlp"]
    with pytest.raises(RunFolderTaken, match="holds a run already"):  # without ckpt_path=last: the folder is taken
        train(compose_config(run))
    metrics = train(compose_config([*run, "ckpt_path=last"]))
    assert metrics["status"] == "ok" and "resumed_from" not in metrics and "earlier_run" not in metrics


@pytest.mark.parametrize("again", [["ckpt_path=last"], []], ids=["ckpt_path=last", "the same folder given again"])
def test_a_killed_attempts_curves_are_kept_apart_from_the_new_ones(tmp_path, synthetic_data_dir, caplog, again):
    """A job killed outright (SIGKILL, the OOM killer) before its first save leaves events but no record and no
    last.ckpt: its requeued command starts over in the folder, and TensorBoard must not draw both attempts as one run.
    So does a run that failed before its first save, given its folder again (hydra.run.dir) once the cause is fixed."""
    from src.api import Run

    folder = tmp_path / "run"
    run = [*tiny_run_overrides(synthetic_data_dir, folder), "model=mlp", "trainer.max_epochs=2", *again]
    train(compose_config(run))
    for killed in (folder / "metrics.json", folder / "checkpoints"):  # what a kill before the first save leaves
        shutil.rmtree(killed) if killed.is_dir() else killed.unlink()
    tensorboard = folder / "tensorboard"
    killed_events = sorted(path.name for path in tensorboard.glob("events.out.tfevents.*"))
    caplog.set_level(logging.INFO, logger="src.utils.continue_run")
    metrics = train(compose_config(run))
    assert metrics["status"] == "ok" and "resumed_from" not in metrics
    [attempt] = [path for path in tensorboard.iterdir() if path.is_dir()]
    assert attempt.name.startswith("attempt-") and sorted(path.name for path in attempt.iterdir()) == killed_events
    assert not {path.name for path in tensorboard.glob("events.out.tfevents.*")} & set(killed_events)
    assert [row["epoch"] for row in Run(folder).history()] == [0, 1]  # this attempt's two epochs, each once
    assert f"earlier attempt in this folder, which saved no checkpoint, were moved to {attempt}" in caplog.text


def test_ckpt_path_last_finds_a_last_checkpoint_saved_elsewhere_in_the_run_folder(tmp_path, synthetic_data_dir):
    from src.errors import ResumeRefused
    from src.utils.run_folders import resume_subdir

    folder = tmp_path / "run"
    run = [*tiny_run_overrides(synthetic_data_dir, folder), "model=mlp", "trainer.max_epochs=2", "ckpt_path=last",
           "callbacks.last_checkpoint.dirpath=${paths.output_dir}/ckpts", "callbacks.last_checkpoint.filename=latest"]
    with pytest.raises(RunInterrupted):
        train(compose_config([*run, "+callbacks.stop._target_=tests.test_eval_resume.InterruptAtStep",
                              "+callbacks.stop.step=3"]))
    config = (folder / "config.yaml").read_bytes()
    with pytest.raises(ResumeRefused, match="seed"):  # a resume in place: the run's config is kept as it was
        train(compose_config([*run, "seed=7"]))
    assert (folder / "config.yaml").read_bytes() == config
    resumed = train(compose_config(run))
    assert resumed["resumed_from"] == str((folder / "ckpts" / "latest.ckpt").resolve()) and resumed["epochs"] == 2
    # Hydra's record of such a resume goes beside the run's own, as for checkpoints in checkpoints/.
    (folder / ".hydra").mkdir()
    (folder / ".hydra" / "config.yaml").touch()
    assert resume_subdir("last", True, str(folder), "T", ".hydra") == ".hydra/resumed-T"
    assert resume_subdir(None, True, str(tmp_path / "new"), "T", ".hydra") == ".hydra"


def test_a_damaged_last_checkpoint_is_refused_naming_the_others_beside_it(tmp_path, synthetic_data_dir):
    """A truncated last.ckpt (a power cut, a full disk on a filesystem that wrote it in place): the advice names the
    run's other checkpoints, newest first, and the command that goes on from the newest; never the damaged file."""
    import os
    import shlex

    from tests.conftest import run_module

    folder = tmp_path / "run"
    run = [*tiny_run_overrides(synthetic_data_dir, folder), "model=mlp", "trainer.max_epochs=2", "ckpt_path=last"]
    train(compose_config(run))
    checkpoints = folder / "checkpoints"
    (best,) = checkpoints.glob("epoch*.ckpt")
    older = checkpoints / "kept-by-hand.ckpt"
    shutil.copy(best, older)
    os.utime(older, (best.stat().st_mtime - 60,) * 2)
    (checkpoints / "last.ckpt").write_bytes((checkpoints / "last.ckpt").read_bytes()[:1000])
    failed = run_module("src.train", *run, f"hydra.run.dir={folder}")
    assert failed.returncode == 1, failed.stderr[-2000:]
    (message,) = [line for line in (failed.stdout + failed.stderr).splitlines() if "[ERROR]" in line]
    advice = message.split("cannot be read as a checkpoint", 1)[1]
    assert f"beside it (newest first): {best}, {older}; e.g. python -m src.train " in advice
    assert "last.ckpt" not in advice
    again = run_module("src.train", *shlex.split(advice.split("; e.g. ", 1)[1])[3:])  # what it says to run
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((folder / "metrics.json").read_text())["resumed_from"] == str(best.resolve())


def test_a_resumed_run_whose_best_checkpoint_was_deleted_says_so_in_one_line(tmp_path, synthetic_data_dir):
    """Its last.ckpt still names the best checkpoint, which the resume tests: Lightning's FileNotFoundError was a
    traceback."""
    folder = tmp_path / "run"
    run = [*tiny_run_overrides(synthetic_data_dir, folder), "model=mlp", "ckpt_path=last"]
    best = Path(train(compose_config(run))["best_model_path"])
    best.unlink()
    last = folder / "checkpoints" / "last.ckpt"
    with pytest.raises(UserInputError) as raised:
        train(compose_config(run))
    assert str(raised.value) == (
        f"{best}: the run's best checkpoint, which it recorded, is missing (deleted or moved since it was saved): "
        "nothing was tested. Put it back and run the same command again, or test another checkpoint of the run "
        f"(newest first: {last}; last.ckpt holds the latest weights, not the best), e.g. python -m src.eval "
        f"ckpt_path={last}")


def test_ckpt_path_last_is_refused_for_testing_alone(tmp_path, synthetic_data_dir):
    with pytest.raises(UserInputError, match="ckpt_path=last resumes training in this run's folder; with train=false "
                                             "name the checkpoint to test"):
        train(compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path), "train=false", "ckpt_path=last"]))


@pytest.mark.parametrize("record, found", [
    ('{"status": "not run", "error": "the sweep was stopped (Ctrl-C) before this job started"}', []),
    ('{"status": "failed"}', ["metrics.json"]),
    ('{"status": "interrupted"}', ["metrics.json"]),
    ('{"status": "ok"}', ["metrics.json"]),
    ('{"status": "ok", "test/ac', ["metrics.json"]),  # unreadable: it may hold results
])
def test_what_shows_a_folder_holds_a_run(tmp_path, record, found):
    from src.utils.run_folders import holds_a_run

    (tmp_path / "metrics.json").write_text(record)
    assert holds_a_run(tmp_path) == found
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").touch()
    assert holds_a_run(tmp_path) == [*found, "checkpoints/last.ckpt"]


def _sweep_record(folder: Path, task: list[str], hydra: list[str], config_dir: str | None = None) -> Path:
    sources = [{"path": "pkg://hydra.conf", "schema": "pkg", "provider": "hydra"}]
    sources += [{"path": config_dir, "schema": "file", "provider": "command-line"}] if config_dir else []
    record = {"hydra": {"overrides": {"hydra": hydra, "task": task},
                        "runtime": {"cwd": "/work/project", "config_sources": sources},
                        "job": {"config_name": "mine" if config_dir else "train"}}}
    folder.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(record), folder / "multirun.yaml")
    return folder


def test_a_stopped_sweep_is_finished_by_its_own_command_with_ckpt_path_last(tmp_path):
    from src.utils.continue_run import continue_sweep_command

    sweep = _sweep_record(tmp_path / "2026-12-03" / "my sweep,2", ["model=mlp", "seed=1,2", "model.hidden_sizes=[32]"],
                          [f"hydra.sweep.dir={tmp_path}/elsewhere", "hydra/launcher=joblib", "hydra.mode=MULTIRUN"])
    assert continue_sweep_command(sweep) == (
        f"python -m src.train -m hydra/launcher=joblib model=mlp seed=1,2 'model.hidden_sizes=[32]' "
        f"'hydra.sweep.dir=\"{sweep}\"' ckpt_path=last")
    # A sweep finished this way once already: its ckpt_path=last is not repeated; a config of one's own is.
    again = _sweep_record(tmp_path / "again", ["seed=1,2", "ckpt_path=last"], ["hydra.mode=MULTIRUN"], config_dir="myconf")
    assert continue_sweep_command(again) == (
        f"python -m src.train -m --config-dir=/work/project/myconf --config-name=mine seed=1,2 "
        f"hydra.sweep.dir={again} ckpt_path=last")
    # Overrides holding ${...} are repeated as written; ckpt_path=null names no checkpoint.
    written = _sweep_record(tmp_path / "written", ["seed=1,2", "ckpt_path=null", "hydra.sweep.subdir=job${hydra.job.num}"], [])
    assert continue_sweep_command(written) == (
        f"python -m src.train -m seed=1,2 'hydra.sweep.subdir=job${{hydra.job.num}}' hydra.sweep.dir={written} ckpt_path=last")
    # A sweep that resumed given checkpoints continued in their runs' folders, and without a record there is no command.
    given = _sweep_record(tmp_path / "given", ["ckpt_path=/runs/a/checkpoints/last.ckpt,/runs/b/checkpoints/last.ckpt"], [])
    assert continue_sweep_command(given) is None
    plus = _sweep_record(tmp_path / "plus", ["seed=1,2", "++ckpt_path=/runs/a/checkpoints/last.ckpt"], [])
    assert continue_sweep_command(plus) is None  # written with ++ too
    plus_last = _sweep_record(tmp_path / "plus_last", ["seed=1,2", "++ckpt_path=last"], [])
    assert continue_sweep_command(plus_last) == f"python -m src.train -m seed=1,2 hydra.sweep.dir={plus_last} ckpt_path=last"
    assert continue_sweep_command(tmp_path / "no record") is None


def test_the_commands_a_run_prints_repeat_its_search_path(tmp_path):
    """hydra.searchpath (a folder of one's own, for model=narrow) is among Hydra's own overrides, not the task's: a
    resume command without it failed on the option it could not find."""
    from src.utils.command_words import config_flags
    from src.utils.continue_run import continue_sweep_command

    search = "hydra.searchpath=[file:///work/myconf]"
    sweep = _sweep_record(tmp_path / "sweep", ["model=narrow", "seed=1,2"], [search, "hydra.mode=MULTIRUN"])
    assert config_flags(OmegaConf.load(sweep / "multirun.yaml").hydra) == [search]
    assert continue_sweep_command(sweep) == (  # once
        f"python -m src.train -m '{search}' model=narrow seed=1,2 hydra.sweep.dir={sweep} ckpt_path=last")


@pytest.mark.parametrize("override, word", [
    ("ckpt_path=last", "last"), ("++ckpt_path=last", "last"), ("ckpt_path='last'", "last"), ('+ckpt_path="a b"', "a b"),
    ("ckpt_path=Null", "null"), ("~ckpt_path", ""), ("ckpt_path_x=1", None), ("seed=1", None),
])
def test_a_ckpt_path_override_is_read_as_hydra_reads_it(override, word):
    from src.utils.run_folders import asks_for_last, ckpt_path_word, names_a_checkpoint_file

    assert ckpt_path_word(override) == word
    assert asks_for_last([override]) == (word == "last")
    assert names_a_checkpoint_file(override) == (word == "a b")


def test_a_job_is_found_by_its_overrides_whatever_its_number(tmp_path):
    from src.utils.run_folders import job_folder_in_sweep, resume_job_subdir

    for name, overrides in (("0_seed=1,lr=0.1", ["seed=1", "lr=0.1"]), ("1_seed=1,lr=0.2", ["seed=1", "lr=0.2"])):
        (tmp_path / name / ".hydra").mkdir(parents=True)
        OmegaConf.save(OmegaConf.create(overrides), tmp_path / name / ".hydra" / "overrides.yaml")
    assert job_folder_in_sweep(tmp_path, ["lr=0.2", "ckpt_path=last", "seed=1"]) == tmp_path / "1_seed=1,lr=0.2"
    assert job_folder_in_sweep(tmp_path, ["lr=0.2", "seed=2"]) is None
    # Keys left out of folder names count too: two jobs may differ only in their data folder.
    assert job_folder_in_sweep(tmp_path, ["data.data_dir=/d", "lr=0.2", "seed=1"]) is None
    # With ckpt_path=last a job continues in that folder, under the number the earlier command gave it.
    assert resume_job_subdir("last", True, 0, ["lr=0.2", "seed=1", "ckpt_path=last"], [], str(tmp_path)) == "1_seed=1,lr=0.2"
    assert resume_job_subdir(None, True, 0, ["lr=0.2", "seed=1"], [], str(tmp_path)).startswith("0_")


def test_a_sweep_that_left_earlier_jobs_unfinished_says_how_to_finish_them(tmp_path, caplog):
    """A continuation given other overrides runs other jobs: the earlier ones' records stay, and the sweep says so."""
    from src.utils.sweep_summary import SweepSummary

    for number, status in enumerate(["ok", "not run", "interrupted"]):
        job = tmp_path / f"{number}_seed={number}"
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(f"- seed={number}\n")
        (job / "metrics.json").write_text(json.dumps({"status": status}))
    SweepSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    assert ("The sweep's folder still holds jobs that this command did not run (1 interrupted, 1 not run: 1_seed=1, "
            "2_seed=2): their overrides are not among its jobs'. Finish them with the command that made them "
            "(multirun-<time>.yaml records each earlier command) and ckpt_path=last.") in caplog.text



def test_ckpt_path_last_outside_training_or_in_a_new_folder_says_what_it_is_for(tmp_path, synthetic_data_dir, caplog,
                                                                                monkeypatch):
    from src.models.checkpoint_file import CheckpointError, existing_checkpoint
    from src.utils import run_folders

    with pytest.raises(CheckpointError, match=r"ckpt_path=last continues training in a run's own folder \(python -m "
                                              r"src\.train\); name the checkpoint file here"):
        existing_checkpoint("last")  # src.eval's and src.predict's check
    # A new dated folder (no hydra.run.dir given) never holds a last.ckpt: the log says how to continue one run.
    monkeypatch.setattr(run_folders, "_MADE_HERE", {tmp_path.resolve()})
    caplog.set_level(logging.INFO, logger="src.utils.continue_run")
    train(compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path), "model=mlp", "ckpt_path=last"]))
    assert "so this run starts from the beginning (a new folder: give hydra.run.dir=<folder> to continue one run)" in caplog.text


def test_a_sweep_given_ckpt_path_last_in_a_new_folder_says_how_to_finish_a_stopped_one(tmp_path, caplog, monkeypatch):
    from src.utils import run_folders
    from src.utils.sweep_summary import SweepSummary

    new, named = tmp_path / "new", tmp_path / "named"
    monkeypatch.setattr(run_folders, "_MADE_HERE", {new.resolve()})
    caplog.set_level(logging.INFO, logger="src.utils.continue_run")
    for sweep_dir, task in ((new, ["seed=1,2", "ckpt_path=last"]), (named, ["seed=1,2", "ckpt_path=last"]),
                            (new, ["seed=1,2"])):
        sweep_dir.mkdir(exist_ok=True)
        caplog.clear()
        SweepSummary().on_multirun_start(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)},
                                                                    "overrides": {"task": task}}}))
        told = (f"ckpt_path=last in a new sweep folder, {sweep_dir}: its jobs start from the beginning. To finish a "
                "stopped sweep, give its folder: hydra.sweep.dir=<that sweep's folder>.") in caplog.text
        assert told == (sweep_dir == new and "ckpt_path=last" in task), (sweep_dir, task)


def test_ckpt_path_last_may_find_its_checkpoints_outside_the_run_folder(tmp_path):
    """callbacks.last_checkpoint.dirpath on a scratch disk: that folder holds this run's checkpoints, not another's."""
    from src.utils.output_folders import writes_into_another_run

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "last.ckpt").touch()
    run = [f"paths.output_dir={tmp_path / 'run'}", f"callbacks.last_checkpoint.dirpath={scratch}"]
    assert writes_into_another_run(compose_config([*run, "ckpt_path=last"]), tmp_path / "run") is None
    assert "lies in another run's folder" in writes_into_another_run(compose_config(run), tmp_path / "run")


def test_a_stopped_sweeps_job_that_has_a_record_keeps_it(tmp_path, monkeypatch):
    """A parallel job sent by ckpt_path=last to its folder, when the stop came first: a finished or failed job's
    record stays; only a job with none (or a not-run one) is recorded as not run."""
    from src.utils import jobs, run, sweep_stop

    monkeypatch.setattr(jobs, "in_multirun", lambda: True)
    monkeypatch.setattr(sweep_stop, "sweep_stop_code", lambda: 130)
    for status in ("ok", "failed", None):
        folder = tmp_path / str(status)
        folder.mkdir()
        if status:
            (folder / "metrics.json").write_text(json.dumps({"status": status}))
        cfg = compose_config([f"paths.output_dir={folder}"])
        assert run.run_reporting_failures(lambda cfg: pytest.fail("the job ran"), cfg) is None
        recorded = json.loads((folder / "metrics.json").read_text())
        assert recorded["status"] == (status or "not run")


def test_a_run_continued_from_a_scratch_disk_is_told_to_continue_in_its_folder(tmp_path, synthetic_data_dir):
    """Its checkpoint alone (outside any run folder's checkpoints/) would start a new folder: the printed command
    names the run's folder and ckpt_path=last again, and continues there."""
    import re
    import shlex

    from tests.conftest import run_module

    folder, scratch = tmp_path / "run", tmp_path / "scratch"
    run = [f"data.data_dir={synthetic_data_dir}", "data.download=false", "data.val_size=80", "model=mlp",
           "trainer.max_epochs=2", "callbacks.progress_bar=null", f"callbacks.last_checkpoint.dirpath={scratch}",
           f"hydra.run.dir={folder}", "ckpt_path=last"]
    stopped = run_module("src.train", *run, "+callbacks.stop._target_=tests.test_eval_resume.InterruptAtStep",
                         "+callbacks.stop.step=3")
    assert stopped.returncode == 130, (stopped.stdout + stopped.stderr)[-3000:]
    (again,) = re.findall(r"resume with: python -m src\.train (.*)\n", stopped.stdout + stopped.stderr)
    words = shlex.split(again)
    assert words[-2:] == [f"hydra.run.dir={folder}", "ckpt_path=last"]
    resumed = run_module("src.train", *[word for word in words if not word.startswith("+callbacks.stop")])
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    assert json.loads((folder / "metrics.json").read_text())["resumed_from"] == str(scratch / "last.ckpt")


def test_a_killed_attempts_folder_is_named_by_when_it_started_in_local_time(tmp_path, monkeypatch):
    import time

    from pytorch_lightning.loggers import TensorBoardLogger

    from src.utils.continue_run import set_aside_earlier_attempt

    logger = TensorBoardLogger(str(tmp_path), name="tensorboard", version="")
    log_dir = Path(logger.log_dir)
    log_dir.mkdir(parents=True)
    record = (10).to_bytes(8, "little") + bytes(4 + 10 + 4)  # one record beyond the version record: not empty
    for stamp in (1700000100, 1700000000):  # the earlier file names the start
        (log_dir / f"events.out.tfevents.{stamp}.host.1.0").write_bytes(record + record)
    monkeypatch.setenv("TZ", "Asia/Kolkata")  # UTC+5:30, to tell local time from UTC
    time.tzset()
    try:
        set_aside_earlier_attempt([logger])
    finally:
        monkeypatch.undo()
        time.tzset()
    [attempt] = [path for path in log_dir.iterdir()]
    assert attempt.name == "attempt-2023-11-15_03-43-20"  # 1700000000 is 2023-11-14 22:13:20 UTC
    assert len(list(attempt.iterdir())) == 2
