"""Commands printed for the user to run next (resume, test a checkpoint): this run's overrides as shell words, and in
a run of src.api (a notebook) the call that does the same."""

from __future__ import annotations

import contextvars
import re
import shlex
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from src.utils.path_overrides import quoted_path, reads_as_number

_CALLED_FROM_PYTHON = contextvars.ContextVar("called_from_python", default=False)
# What Hydra's override grammar reads as a value unquoted: not `~`, spaces, `=`, `,`, brackets, letters beyond ASCII.
_PLAIN_VALUE = re.compile(r"[\w./:+-]+", re.ASCII)
_API_FUNCTIONS = {"train": "train", "eval": "evaluate", "predict": "predict"}


@contextmanager
def advice_as_calls() -> Iterator[None]:
    """Within it (a run of src.api), advice names the src.api call instead of the command line."""
    token = _CALLED_FROM_PYTHON.set(True)
    try:
        yield
    finally:
        _CALLED_FROM_PYTHON.reset(token)


def called_from_python() -> bool:
    return _CALLED_FROM_PYTHON.get()


def command(entry_point: str, words: list[str]) -> str:
    """`python -m src.<entry_point> <words>` (train, eval, predict), or within advice_as_calls the call:
    train('model=mlp', ...). `words` are Hydra overrides as Hydra reads them; each is quoted as the shell or Python
    needs it. A run from a config of one's own (--config-dir, --config-name) is named as a command line even there:
    src.api takes no flags."""
    if called_from_python() and not any(word.startswith("--config-") for word in words):
        return f"{_API_FUNCTIONS[entry_point]}({', '.join(repr(word) for word in words)})"
    return " ".join([f"python -m src.{entry_point}", *(shlex.quote(word) for word in words)])


def override_value(value) -> str:
    """A value as an override writes it, so that a message's `key=value` can be typed back: null, true, false, 25,
    [0.9, 0.999] (a tuple, a class default, too); a string in quotes where the override grammar needs them ('' and
    'cuda 1'), or where it would read another type ('true', '3')."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        plain = _PLAIN_VALUE.fullmatch(value) and value.lower() not in ("null", "true", "false")
        return value if plain and not reads_as_number(value) else "'" + value.replace("'", "\\'") + "'"
    if isinstance(value, Sequence):  # a list, a tuple or a ListConfig
        return f"[{', '.join(map(override_value, value))}]"
    return str(value)


def counted(number: int, noun: str, plural: str | None = None) -> str:
    """`1 block`, `3 blocks`; `plural` where it is not the noun and an s (batches)."""
    return f"{number} {noun if number == 1 else plural or noun + 's'}"


def typed(word: str) -> str:
    """An override as the user types it: a shell word (`callbacks=[default,ema]` quoted), or within advice_as_calls a
    Python string."""
    return repr(word) if called_from_python() else shlex.quote(word)


def run_it_again() -> str:
    return "Run the same call again." if called_from_python() else "Run the same command again."


def command_overrides() -> list[str] | None:
    """This process's command-line overrides (a sweep job's own), as Hydra recorded them, after the flags that chose a
    config of one's own (--config-dir, --config-name), which a resume must repeat too; None outside a Hydra run."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    hydra = HydraConfig.get()
    return [*config_flags(hydra), *hydra.overrides.task]


def config_flags(hydra) -> list[str]:
    """The flags that chose a config of one's own (--config-dir, --config-name, and hydra.searchpath, which Hydra
    records among its own overrides), from Hydra's config of a run (its `hydra` node, also as a sweep's multirun.yaml
    records it)."""
    flags = [f"--config-dir={Path(hydra.runtime.cwd, source.path)}" for source in hydra.runtime.config_sources
             if source.provider == "command-line"]
    flags += [word for word in hydra.overrides.hydra if word.lstrip("+").startswith("hydra.searchpath=")]
    if hydra.job.config_name not in _API_FUNCTIONS:  # each entry point's own config is its name
        flags.append(f"--config-name={hydra.job.config_name}")
    return flags


def original_overrides() -> list[str]:
    """This run's overrides, minus ckpt_path: what a resume must repeat (a placeholder outside a Hydra run)."""
    overrides = command_overrides()
    return ["<the same overrides>"] if overrides is None else without_ckpt_path(overrides)


def eval_overrides() -> list[str]:
    """This run's overrides of settings that src.eval has too: `model` and most callbacks come from the checkpoint or
    do not exist there, and eval writes a run folder of its own (not paths.output_dir)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    shared_keys = ("data", "paths", "trainer", "logger", "callbacks.progress_bar", "callbacks.figures")
    shared = [o for o in HydraConfig.get().overrides.task
              if o.lstrip("+~").startswith(shared_keys) and not o.lstrip("+~").startswith("paths.output_dir")]
    # A trainer setting an experiment added (experiment=quickcheck's limit_*) is not in eval's config: `++` sets it
    # whether or not it is there.
    return ["++" + o.lstrip("+") if o.lstrip("+").startswith("trainer.") else o for o in shared]


def resume_command(overrides, ckpt_path) -> str:
    """The command (in a run of src.api, the call) that resumes from `ckpt_path` with `overrides` (their own ckpt_path
    left out). For a run given ckpt_path=last: its own command, with its folder and ckpt_path=last again (what a job
    script says; it also finds a last.ckpt saved outside the run folder, on a scratch disk, which named alone would
    start a new folder)."""
    from hydra.core.hydra_config import HydraConfig

    from src.utils.run_folders import LATEST, asks_for_last

    words = without_ckpt_path(overrides)
    if any(word.lstrip("+").startswith("sweep=") for word in words):  # a ready-made sweep's job: this one run of it
        words.append("hydra.mode=RUN")
    if asks_for_last(command_overrides() or []):  # the run's own command goes on: in its folder, from its last.ckpt
        folder = quoted_path(HydraConfig.get().runtime.output_dir)
        return command("train", [*words, f"hydra.run.dir={folder}", f"ckpt_path={LATEST}"])
    return command("train", [*words, ckpt_path_override(str(ckpt_path))])


def this_command_with(ckpt_path) -> str | None:
    """This run's own command (in a run of src.api, the call) with ckpt_path=<ckpt_path> in place of its own, which
    named another file (ckpt_path=last: the folder's last.ckpt); None outside a run of src.train, src.eval or
    src.predict."""
    from hydra.core.hydra_config import HydraConfig

    overrides = command_overrides()
    entry_point = HydraConfig.get().job.name if overrides is not None else None
    if entry_point not in _API_FUNCTIONS:
        return None
    words = without_ckpt_path(overrides)
    if entry_point == "train" and any(word.lstrip("+").startswith("sweep=") for word in words):
        words.append("hydra.mode=RUN")  # a ready-made sweep's job: this one run of it
    return command(entry_point, [*words, ckpt_path_override(str(ckpt_path))])


def resume_with(checkpoint_path) -> str:
    """The words "resume with: <command>" for this run, from `checkpoint_path`; a sweep job's say that they resume this
    job on its own (the sweep's closing message has the command that finishes the whole sweep)."""
    from src.utils.jobs import in_multirun

    alone = " this job on its own" if in_multirun() else ""
    return f"resume{alone} with: {resume_command(original_overrides(), checkpoint_path)}"


def without_ckpt_path(overrides) -> list[str]:
    from src.utils.run_folders import ckpt_path_word

    return [override for override in overrides if ckpt_path_word(override) is None]


def ckpt_path_override(path: str) -> str:
    """`ckpt_path=<path>` as Hydra must read it. A sweep job's folder name holds `=` and `,`, which Hydra's override
    grammar reads as syntax unless the value is quoted."""
    return f"ckpt_path={quoted_path(str(path))}"
