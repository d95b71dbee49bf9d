"""ckpt_path=last: a run in a fixed folder (a requeued cluster job, a stopped sweep run again into its folder)
continues from that folder's last.ckpt, or starts there when it has none, never over a finished run's results."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from omegaconf import OmegaConf

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
    straight = train(compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path / "straight"), "model=mlp",
                                     "trainer.max_epochs=2"]))
    for key in ("val/acc_best", "test/acc", "test/loss"):
        assert resumed[key] == straight[key], key


def test_ckpt_path_last_starts_a_failed_run_over_but_never_a_finished_one(tmp_path, synthetic_data_dir):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "metrics.json").write_text(json.dumps({"status": "failed", "error": "the loss diverged"}))
    run = [*tiny_run_overrides(synthetic_data_dir, folder), "model=mlp"]
    with pytest.raises(RunFolderTaken, match="holds a run already"):  # without ckpt_path=last: the folder is taken
        train(compose_config(run))
    metrics = train(compose_config([*run, "ckpt_path=last"]))
    assert metrics["status"] == "ok" and "resumed_from" not in metrics and "earlier_run" not in metrics

    # A finished run whose last.ckpt is gone: nothing to continue, and its results are not written over.
    (folder / "checkpoints" / "last.ckpt").unlink()
    before = (folder / "metrics.json").read_bytes()
    with pytest.raises(RunFolderTaken, match=rf"ckpt_path=last: {folder} holds a finished run \(metrics\.json\) but not "
                                             r"its last\.ckpt to continue from.* or choose another hydra\.run\.dir\."):
        train(compose_config([*run, "ckpt_path=last"]))
    assert (folder / "metrics.json").read_bytes() == before


def test_ckpt_path_last_is_refused_for_testing_alone(tmp_path, synthetic_data_dir):
    with pytest.raises(UserInputError, match="ckpt_path=last resumes training in this run's folder; with train=false "
                                             "name the checkpoint to test"):
        train(compose_config([*tiny_run_overrides(synthetic_data_dir, tmp_path), "train=false", "ckpt_path=last"]))


@pytest.mark.parametrize("record, found, finished", [
    ('{"status": "not run", "error": "the sweep was stopped (Ctrl-C) before this job started"}', [], []),
    ('{"status": "failed"}', ["metrics.json"], []),
    ('{"status": "interrupted"}', ["metrics.json"], []),
    ('{"status": "ok"}', ["metrics.json"], ["metrics.json"]),
    ('{"status": "ok", "test/ac', ["metrics.json"], ["metrics.json"]),  # unreadable: it may hold results
])
def test_what_shows_a_folder_holds_a_run(tmp_path, record, found, finished):
    from src.utils.run_folders import holds_a_run

    (tmp_path / "metrics.json").write_text(record)
    assert holds_a_run(tmp_path) == found and holds_a_run(tmp_path, unfinished=False) == finished
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
    # A sweep that resumed given checkpoints continued in their runs' folders, and without a record there is no command.
    given = _sweep_record(tmp_path / "given", ["ckpt_path=/runs/a/checkpoints/last.ckpt,/runs/b/checkpoints/last.ckpt"], [])
    assert continue_sweep_command(given) is None
    assert continue_sweep_command(tmp_path / "no record") is None
