"""Windows and macOS, checked on Linux: what those systems lack or do otherwise, simulated (POSIX-only names removed, a
console's code page, Windows' rules for files that are open)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap

import pytest

from src import PROJECT_ROOT
from tests.conftest import held_open_for


def run_python(code: str, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -c <code>` from the project root."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


# What Windows' Python lacks that Linux has: signals but these, POSIX-only functions and modules.
WITHOUT_POSIX = """
    import os, select, signal, sys
    import hydra, matplotlib, numpy, omegaconf, pytorch_lightning, tensorboard, torch, torchmetrics  # theirs, as they are
    WINDOWS_SIGNALS = {"SIGABRT", "SIGFPE", "SIGILL", "SIGINT", "SIGSEGV", "SIGTERM", "SIGBREAK", "SIG_DFL", "SIG_IGN"}
    for name in [name for name in dir(signal) if name.startswith("SIG") and name not in WINDOWS_SIGNALS]:
        delattr(signal, name)
    for module, names in ((signal, ["alarm", "pause", "setitimer", "siginterrupt", "pthread_kill", "pthread_sigmask"]),
                          (os, ["fork", "wait3", "wait4", "getuid", "geteuid", "sched_getaffinity", "killpg", "getpgid",
                                "setsid", "uname"]),
                          (select, ["poll"])):
        for name in names:
            if hasattr(module, name):
                delattr(module, name)
    for name in ("fcntl", "resource", "pwd", "grp", "termios", "pty", "tty"):
        sys.modules[name] = None
"""


def test_every_module_imports_where_posix_only_names_are_missing():
    """`signal.SIGUSR1` at the top of src/utils/slurm.py, which every command imports, failed every command on
    Windows with an AttributeError before it could print anything."""
    result = run_python(WITHOUT_POSIX + """
    import importlib, pkgutil
    import src
    failed = []
    for module in pkgutil.walk_packages(src.__path__, "src."):
        try:
            importlib.import_module(module.name)
        except Exception as err:
            failed.append(f"{module.name}: {type(err).__name__}: {err}")
    assert not failed, failed
    os.environ.update(SLURM_NTASKS="1", SLURM_JOB_NAME="job")
    from src.utils.slurm import stop_on_slurms_warning
    stop_on_slurms_warning()  # no SIGUSR1 to take
    print("imported")
    """)
    assert result.returncode == 0 and result.stdout.strip() == "imported", result.stderr[-3000:]


def test_a_killed_writers_temporary_file_is_found_without_signalling_on_windows(tmp_path, monkeypatch):
    """os.kill(pid, 0), POSIX's question whether a process runs, sends Ctrl-C on Windows (signal 0 is CTRL_C_EVENT):
    each write beside a killed writer's temporary file interrupted the run. There the file's age decides alone."""
    import time

    from src.utils.atomic_files import STALE_AFTER_SECONDS, write_text_atomically

    def ctrl_c(pid, signum):
        raise AssertionError(f"os.kill({pid}, {signum}): Ctrl-C on Windows")

    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(os, "kill", ctrl_c)
    old = time.time() - STALE_AFTER_SECONDS - 60
    for name, modified in ((".last.ckpt.123.partial", old), (".last.ckpt.456.partial", time.time())):
        (tmp_path / name).write_text("half a checkpoint")
        os.utime(tmp_path / name, (modified, modified))
    write_text_atomically(tmp_path / "last.ckpt", "a checkpoint")
    assert sorted(path.name for path in tmp_path.iterdir()) == [".last.ckpt.456.partial", "last.ckpt"]


def test_a_file_held_open_for_a_moment_on_windows_is_replaced_once_let_go(tmp_path, monkeypatch):
    """A virus scanner or indexer opens each new file for a moment, and Windows refuses to rename a file held so: the
    save of last.ckpt ended the training with a PermissionError. Elsewhere that error is a real one, raised at once."""
    from src.utils import atomic_files

    monkeypatch.setattr(atomic_files, "FILES_HELD_OPEN_BLOCK_RENAMES", True)
    monkeypatch.setattr(os, "replace", held_open_for(3, os.replace))
    atomic_files.write_text_atomically(tmp_path / "last.ckpt", "the new state")
    assert os.replace.calls == 4 and [path.name for path in tmp_path.iterdir()] == ["last.ckpt"]

    # Held past the retries: the error names the file, and the earlier one is kept whole.
    monkeypatch.setattr(atomic_files, "HELD_FILE_RETRY_SECONDS", 0.2)
    monkeypatch.setattr(os, "replace", held_open_for(-1, os.replace))
    with pytest.raises(PermissionError, match=r"Access is denied: .*last\.ckpt"):
        atomic_files.write_text_atomically(tmp_path / "last.ckpt", "a later state")
    assert os.replace.calls > 1 and (tmp_path / "last.ckpt").read_text() == "the new state"
    assert [path.name for path in tmp_path.iterdir()] == ["last.ckpt"]

    monkeypatch.setattr(atomic_files, "FILES_HELD_OPEN_BLOCK_RENAMES", False)  # Linux, macOS
    monkeypatch.setattr(os, "replace", held_open_for(1, os.replace))
    with pytest.raises(PermissionError):
        atomic_files.write_text_atomically(tmp_path / "last.ckpt", "a later state")
    assert os.replace.calls == 1


def test_an_earlier_best_checkpoint_held_open_on_windows_is_removed_when_free_or_left_with_a_warning(
        tmp_path, monkeypatch, caplog):
    """Lightning removes the earlier best checkpoint when a better one is saved; held open (a scanner, a notebook
    loading it), Windows refused that and the training ended. It now waits a moment, and then goes on without it."""
    from src.utils import atomic_files
    from src.utils.checkpoint_io import AtomicCheckpointIO

    earlier = tmp_path / "epoch003.ckpt"
    remove = os.remove
    monkeypatch.setattr(atomic_files, "FILES_HELD_OPEN_BLOCK_RENAMES", True)
    monkeypatch.setattr(atomic_files, "HELD_FILE_RETRY_SECONDS", 0.2)
    for attempts, removed in ((2, True), (-1, False)):
        earlier.write_text("weights")
        monkeypatch.setattr(os, "remove", held_open_for(attempts, remove))
        with caplog.at_level(logging.WARNING):
            AtomicCheckpointIO().remove_checkpoint(str(earlier))
        assert earlier.exists() is not removed
    assert (f"Could not remove the earlier checkpoint {earlier} (Access is denied): another program probably has it "
            "open") in caplog.text

    monkeypatch.setattr(atomic_files, "FILES_HELD_OPEN_BLOCK_RENAMES", False)
    with pytest.raises(PermissionError):
        AtomicCheckpointIO().remove_checkpoint(str(earlier))
    # Lightning's own removal, folders included (sharded checkpoints are folders).
    monkeypatch.setattr(os, "remove", remove)
    sharded = tmp_path / "epoch004.ckpt"
    (sharded / "shards").mkdir(parents=True)
    AtomicCheckpointIO().remove_checkpoint(str(sharded))
    assert not sharded.exists()


# A locale whose encoding lacks the characters written (Windows' cp1252 lacks ≥ and many letters, cp1251 ×): here
# ASCII, Python's own in the C locale when neither its UTF-8 mode nor locale coercion steps in.
ASCII_LOCALE = {"PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0", "LC_ALL": "C", "LANG": "C"}


def test_files_are_written_in_utf8_whatever_the_locale(tmp_path):
    """open() without an encoding writes in the locale's (cp1252 on Windows): config.yaml with a path's letters could
    not be read back (YAML is read as UTF-8), summary.md's ± failed the sweep's summary files where the locale lacks
    it, and a log message with × was a "--- Logging error ---" traceback in place of its line."""
    folder, summary, message = "/home/Jörg/données", "val/acc_best 0.9856 ± 0.0012\n", "expected 28×28"
    result = run_python(f"""
    import locale, logging
    from pathlib import Path
    from omegaconf import OmegaConf
    from src.utils.atomic_files import write_text_atomically
    from src.utils.config_io import save_config
    from src.utils.log_file import RunLogFile
    assert locale.getpreferredencoding(False) != "UTF-8"
    run_dir = Path({str(tmp_path)!a})
    saved = save_config(OmegaConf.create({{"data": {{"data_dir": {folder!a}}}}}), run_dir)
    assert OmegaConf.load(saved).data.data_dir == {folder!a}
    write_text_atomically(run_dir / "summary.md", {summary!a})
    log_file = RunLogFile(run_dir / "train.log")
    log_file.handle(logging.makeLogRecord({{"msg": {message!a}}}))
    log_file.close()
    print("written")
    """, extra_env=ASCII_LOCALE)
    assert result.returncode == 0 and result.stdout == "written\n" and not result.stderr, result.stderr[-3000:]
    assert (tmp_path / "summary.md").read_text(encoding="utf-8") == summary
    assert (tmp_path / "train.log").read_text(encoding="utf-8") == message + "\n"


def test_a_console_that_cannot_show_a_character_shows_it_escaped():
    """Output redirected on Windows is in the code page's encoding (cp1251 lacks ×, cp1252 ≥): an error message such
    as "shrinks the 28×28 image to nothing" was a "--- Logging error ---" traceback in its place, and print() of the
    benchmark's table (its ×) ended the command after its minutes of measuring."""
    for environment in ({"PYTHONIOENCODING": "cp1251"}, ASCII_LOCALE):
        result = run_python("""
        import logging, sys
        from src.utils.console_output import guard_standard_streams
        guard_standard_streams()
        logging.basicConfig(stream=sys.stdout, format="%(message)s")
        logging.error("expected 28\\u00d728")
        print("132\\u00d7 faster, \\u2265 99%")
        """, extra_env=environment)
        assert result.returncode == 0 and not result.stderr, result.stderr[-3000:]
        assert result.stdout == "expected 28\\xd728\n132\\xd7 faster, \\u2265 99%\n"


def test_sweep_job_folders_have_names_windows_allows():
    """A job folder is named after its overrides: `data.device=cuda:0`, a quoted value or a Windows path held
    characters Windows forbids in a name (a colon there even names a stream of a file), so the job could not start, and
    a sweep's folder copied from a cluster could not be unpacked."""
    from src.utils.run_folders import job_dirname

    name = job_dirname(1, ["data.device=cuda:0", 'task_name="a <b>?"', r"+callbacks.x.dirpath=C:\runs|*"])
    assert name == "1_+callbacks.x.dirpath=C--runs--,data.device=cuda-0,task_name=-a -b---"
    assert not set(name) & set('/\\:*?"<>|')


def test_windows_paths_reach_hydra_as_typed(monkeypatch):
    """Paths are quoted for Hydra where its grammar would refuse them, but not one holding a backslash, taken for
    Hydra's escape: on Windows every path, so the resume command the project prints for a sweep job
    (ckpt_path=C:\\...\\1_model=cnn,seed=2\\...) and a path with letters beyond ASCII failed with a parse error."""
    import pytest
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from src.utils import path_overrides

    parser = OverridesParser.create()
    monkeypatch.setattr(path_overrides, "BACKSLASH_SEPARATES", True)
    for path in (r"C:\Users\José\runs\1_model=cnn,seed=2\checkpoints\last.ckpt", "D:\\datasets\\",
                 r"\\server\share\mnist", r"C:\Users\me\data", r"~\datasets"):
        expanded = os.path.expanduser(path)
        for key in ("ckpt_path", "data.data_dir", "hydra.run.dir"):
            (argument,) = path_overrides.quote_paths([f"{key}={path}"])
            assert parser.parse_override(argument).value() == expanded, argument
    # Elsewhere a backslash is Hydra's escape, as the user typed it.
    monkeypatch.setattr(path_overrides, "BACKSLASH_SEPARATES", False)
    assert path_overrides.quote_paths([r"ckpt_path=runs/a\,b.ckpt"]) == [r"ckpt_path=runs/a\,b.ckpt"]
    with pytest.raises(Exception):  # what Windows users got
        parser.parse_override(r"ckpt_path=C:\runs\1_model=cnn,seed=2\last.ckpt")


# shutil.rmtree as on Windows, where a file that is open cannot be removed (Python opens files without sharing that).
WINDOWS_RMTREE = """
    import os, shutil
    real_rmtree = shutil.rmtree

    def windows_rmtree(path, *args, **kwargs):
        inside = os.path.realpath(path) + os.sep
        for descriptor in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{descriptor}")
            except OSError:
                continue
            if target.startswith(inside):
                raise PermissionError(13, "The process cannot access the file because it is being used by another "
                                      "process", target)
        return real_rmtree(path, *args, **kwargs)

    shutil.rmtree = windows_rmtree
"""


def test_a_refused_command_leaves_no_run_folder_behind_on_windows(tmp_path):
    """A refused command's dated folder is removed; Hydra's handler still held the log file open then, which Windows
    cannot remove: the folder stayed, holding the log (and what rmtree had not reached)."""
    log_dir = tmp_path / "outputs"
    result = run_python(WINDOWS_RMTREE + f"""
    import runpy, sys
    sys.argv = ["src/train.py", "model.optimizer.lr=-1", {f"paths.log_dir={log_dir}"!a}]
    runpy.run_module("src.train", run_name="__main__")
    """)
    assert result.returncode == 1 and "model.optimizer.lr=-1 is invalid" in result.stdout, result.stderr[-3000:]
    assert not log_dir.exists(), sorted(log_dir.rglob("*"))


def test_the_benchmarks_whole_processes_are_measured_on_macos_and_windows(tmp_path, monkeypatch):
    """src.bench timed its whole processes with os.wait4, which Windows lacks (the benchmark failed at its first
    process), and read ru_maxrss as KiB, which macOS gives in bytes (1024 times the memory)."""
    import types

    from src.bench import whole_process

    command = [sys.executable, "-c", "print('done')"]
    _, linux = whole_process(command, tmp_path / "linux.log")
    real_wait4 = os.wait4

    def macos_wait4(pid, options):
        pid, status, usage = real_wait4(pid, options)
        return pid, status, types.SimpleNamespace(ru_maxrss=usage.ru_maxrss * 1024)

    with monkeypatch.context() as patched:
        patched.setattr(sys, "platform", "darwin")
        patched.setattr(os, "wait4", macos_wait4)
        _, macos = whole_process(command, tmp_path / "macos.log")
    assert 0.5 < macos / linux < 2, (macos, linux)
    monkeypatch.delattr(os, "wait4")
    wall, peak = whole_process(command, tmp_path / "windows.log")
    assert wall > 0 and peak is None and (tmp_path / "windows.log").read_text() == "done\n"


def test_hydras_parser_builds_under_python_314s_help_check(monkeypatch):
    """Python 3.14's argparse checks each option's help as it is added; Hydra's --shell-completion help is an object,
    not a string, and every command failed there before reading a word. Older Pythons play 3.14's check here."""
    import argparse

    from hydra._internal.utils import get_args_parser

    from src.utils.command_line import allow_hydras_lazy_help

    def check_as_python_314_does(parser, action):
        if action.help and hasattr(parser, "_get_formatter"):
            try:
                parser._get_formatter()._expand_help(action)
            except (ValueError, TypeError, KeyError) as err:
                raise ValueError("badly formed help string") from err

    if not hasattr(argparse.ArgumentParser, "_check_help"):  # before 3.14: add_argument checks nothing
        add_argument = argparse._ActionsContainer.add_argument

        def add_and_check(container, *args, **kwargs):
            action = add_argument(container, *args, **kwargs)
            container._check_help(action)
            return action

        monkeypatch.setattr(argparse._ActionsContainer, "add_argument", add_and_check)
        monkeypatch.setattr(argparse._ActionsContainer, "_check_help", lambda container, action: None, raising=False)
        monkeypatch.setattr(argparse.ArgumentParser, "_check_help", check_as_python_314_does, raising=False)
    with pytest.raises(ValueError, match="badly formed help"):
        get_args_parser()  # what Hydra 1.3.8 does on 3.14

    allow_hydras_lazy_help()
    allow_hydras_lazy_help()  # a second call wraps nothing twice
    assert get_args_parser().parse_args(["model=mlp"]).overrides == ["model=mlp"]
    with pytest.raises(ValueError, match="badly formed help"):  # help given as a string is still checked
        argparse.ArgumentParser().add_argument("--x", help="%(nonsense)s")
