"""Windows and macOS, checked on Linux: what those systems lack or do otherwise, simulated (POSIX-only names removed, a
console's code page, Windows' rules for files that are open)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from src import PROJECT_ROOT


def run_python(code: str, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -c <code>` from the project root."""
    import os

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
