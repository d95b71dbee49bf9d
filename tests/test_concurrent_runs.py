"""Several processes at once: two commands given the same run folder, a run's folder while another process works in
it."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytorch_lightning as pl
import pytest

from src import PROJECT_ROOT
from src.errors import RunFolderTaken
from src.utils.run_lock import LOCK_NAME, another_process_holds, holding_run_folder
from tests.conftest import ctrl_c_as_in_a_terminal, run_module


class PauseUntilReleased(pl.Callback):
    """Holds training at its first batch (in the first epoch: nothing saved yet) until the file `release` exists,
    having written `paused` on arrival."""

    def __init__(self, paused: str, release: str) -> None:
        self.paused, self.release = Path(paused), Path(release)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == 0:
            self.paused.touch()
            deadline = time.monotonic() + 600  # past the refused commands' timeouts: the test releases it at the end
            while not self.release.exists() and time.monotonic() < deadline:
                time.sleep(0.05)


def test_a_second_command_in_a_run_folder_is_refused_while_the_first_still_trains(tmp_path, synthetic_data_dir):
    """Until its first epoch saved last.ckpt, nothing showed that a folder given by hydra.run.dir held a run: a second
    command there trained too, replaced the first's .hydra record and config.yaml, set its TensorBoard events aside as
    an earlier attempt's, and left its own best checkpoint beside the first's."""
    run_dir = tmp_path / "run"
    settings = [f"data.data_dir={synthetic_data_dir}", "data.download=false", "data.batch_size=32", "data.val_size=80",
                "trainer=cpu", "trainer.max_epochs=1", "model=mlp", "callbacks.figures=null",
                "callbacks.progress_bar=null", "++trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}"]
    paused, release = tmp_path / "paused", tmp_path / "release"
    pause = [f"+callbacks.pause._target_={__name__}.PauseUntilReleased", f"+callbacks.pause.paused={paused}",
             f"+callbacks.pause.release={release}"]
    env = {key: value for key, value in os.environ.items() if key != "HYDRA_FULL_ERROR"}
    first = subprocess.Popen([sys.executable, "-m", "src.train", *settings, *pause, "model.optimizer.lr=0.001"],
                             cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             preexec_fn=ctrl_c_as_in_a_terminal)
    try:
        deadline = time.monotonic() + 240
        while not paused.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert paused.exists(), first.communicate()[0][-3000:]
        record = (run_dir / ".hydra" / "overrides.yaml").read_text()
        for again in ([], ["ckpt_path=last"]):  # the same command typed twice; a requeued job's, started early
            second = run_module("src.train", *settings, "model.optimizer.lr=0.01", *again, timeout=240)
            output = second.stdout + second.stderr
            assert second.returncode == 1 and "Traceback" not in output, output[-3000:]
            assert f"{run_dir} is in use by another process (process {first.pid} on " in output
            assert "Wait for it to end, or choose another hydra.run.dir." in output
        assert (run_dir / ".hydra" / "overrides.yaml").read_text() == record
    finally:
        release.touch()
        output = first.communicate(timeout=240)[0]
    assert first.returncode == 0, output[-3000:]
    assert "lr: 0.001" in (run_dir / "config.yaml").read_text()
    assert sorted(path.name for path in (run_dir / "checkpoints").iterdir()) == ["epoch000.ckpt", "last.ckpt"]
    assert not list((run_dir / "tensorboard").glob("attempt-*"))
    assert json.loads((run_dir / "metrics.json").read_text())["epochs"] == 1
    assert (run_dir / LOCK_NAME).read_bytes() == b""  # released: the folder as a finished run leaves it


def test_a_ddp_runs_other_processes_work_in_the_folder_their_first_holds(tmp_path, monkeypatch):
    with holding_run_folder(tmp_path):
        descriptor = os.open(tmp_path / LOCK_NAME, os.O_RDONLY)
        with pytest.raises(BlockingIOError):  # what another process sees
            fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
        os.close(descriptor)
        assert not another_process_holds(tmp_path)  # this one does
        monkeypatch.setenv("LOCAL_RANK", "1")  # as Lightning relaunches the script for its second process
        with holding_run_folder(tmp_path / "other"):
            assert not (tmp_path / "other").exists()
        monkeypatch.delenv("LOCAL_RANK")
        monkeypatch.setenv("NODE_RANK", "1")  # another machine's first process, in a multi-node run started by hand
        with holding_run_folder(tmp_path / "other"):
            assert not (tmp_path / "other").exists()
    monkeypatch.delenv("NODE_RANK")
    with holding_run_folder(tmp_path):  # released: taken again
        pass


def test_a_folder_held_by_another_process_is_refused_naming_it(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from src.utils.run_lock import holding_run_folder\n"
                               f"with holding_run_folder(Path({str(tmp_path)!r})):\n"
                               "    print('held', flush=True); time.sleep(60)"],
                              cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        assert another_process_holds(tmp_path)
        with pytest.raises(RunFolderTaken, match=rf"^{tmp_path} is in use by another process \(process {holder.pid} "
                                                 r"on .*\), whose .* choose another hydra.sweep.dir\. If that process "
                                                 rf"no longer runs .*, remove {tmp_path / LOCK_NAME} and run again\.$"):
            with holding_run_folder(tmp_path, "hydra.sweep.dir"):
                pass
    finally:
        holder.kill()
        holder.wait()
    assert not another_process_holds(tmp_path)  # the kernel dropped a killed process's lock


def test_a_lock_another_command_only_looks_at_does_not_refuse_the_run(tmp_path):
    """A command starting beside the run looks at the lock (another_process_holds, when it names its record's folder)
    for an instant: the run, taking it in that instant, was refused although nothing held the folder."""
    (tmp_path / LOCK_NAME).touch()
    looking = os.open(tmp_path / LOCK_NAME, os.O_RDONLY)
    fcntl.flock(looking, fcntl.LOCK_SH | fcntl.LOCK_NB)
    threading.Timer(0.3, os.close, [looking]).start()
    with holding_run_folder(tmp_path):
        pass


def test_a_forked_child_does_not_keep_the_folder_held(tmp_path):
    """A forked child (ddp_fork, a fork-based pool) shares its parent's lock: a child still alive kept the folder held
    after the run had ended, and the resume was refused."""
    started, tell_started = os.pipe()
    with holding_run_folder(tmp_path):
        child = os.fork()
        if child == 0:
            os.write(tell_started, b"1")  # Python's after-fork handlers have run by now
            time.sleep(30)
            os._exit(0)
    try:
        assert os.read(started, 1) == b"1"
        assert not another_process_holds(tmp_path)
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        os.close(started), os.close(tell_started)


def test_the_history_of_a_run_still_writing_its_events_reads_what_is_there(tmp_path, synthetic_data_dir):
    """Lightning writes a step's `epoch` after its metrics, and TensorBoard's writer puts its buffer out at any point:
    Run(...).history() of a run in progress (a notebook plotting a sweep's curves) raised KeyError for the step whose
    metrics were in the file and its epoch not yet."""
    import shutil
    import warnings

    from src.api import Run
    from src.train import train
    from tests.conftest import compose_config, tiny_run_overrides

    run_dir = tmp_path / "run"
    train(compose_config([*tiny_run_overrides(synthetic_data_dir, run_dir), "model=mlp", "trainer.max_epochs=2",
                          "callbacks.figures=null", "test=false"]))
    whole = Run(run_dir).history()
    [fit_events] = [path for path in (run_dir / "tensorboard").glob("events.out.tfevents.*")
                    if not path.name.endswith(".hparams")]  # test=false: the fit's alone
    events = fit_events.read_bytes()
    live = tmp_path / "live"
    shutil.copytree(run_dir, live)
    (live / "metrics.json").unlink()
    written, cut_points = 0, []
    while written < len(events):  # a record: its length (8 bytes), the length's checksum (4), the data, its checksum
        written += 8 + 4 + int.from_bytes(events[written:written + 8], "little") + 4
        cut_points.append(written)
    for cut in cut_points:
        (live / "tensorboard" / fit_events.name).write_bytes(events[:cut])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TensorBoard's about a file it reads to its end
            history = Run(live).history()
        assert all(row.items() <= whole[row["epoch"]].items() for row in history), cut
    assert history == whole
