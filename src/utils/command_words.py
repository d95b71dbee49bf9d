"""Commands printed for the user to run next (resume, test a checkpoint): this run's overrides as shell words, and in
a run of src.api (a notebook) the call that does the same."""

from __future__ import annotations

import contextvars
import re
import shlex
from collections.abc import Iterator
from contextlib import contextmanager

_CALLED_FROM_PYTHON = contextvars.ContextVar("called_from_python", default=False)
_API_FUNCTIONS = {"train": "train", "eval": "evaluate"}


@contextmanager
def advice_as_calls() -> Iterator[None]:
    """Within it (a run of src.api), `command` names the src.api call instead of the command line."""
    token = _CALLED_FROM_PYTHON.set(True)
    try:
        yield
    finally:
        _CALLED_FROM_PYTHON.reset(token)


def command(entry_point: str, words: str) -> str:
    """`python -m src.<entry_point> <words>`, or within advice_as_calls the same as a call: train('model=mlp', ...)."""
    if _CALLED_FROM_PYTHON.get():
        return f"{_API_FUNCTIONS[entry_point]}({', '.join(repr(word) for word in shlex.split(words))})"
    return f"python -m src.{entry_point} {words.strip()}"


def command_overrides() -> list[str] | None:
    """This process's command-line overrides (a sweep job's own), as Hydra recorded them; None outside a Hydra run."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else None


def original_overrides() -> str:
    """This run's command-line overrides, minus ckpt_path: what a resume must repeat."""
    overrides = command_overrides()
    return "<the same overrides>" if overrides is None else shell_words(overrides)


def eval_overrides() -> str:
    """This run's overrides of settings that src.eval has too, followed by a space: `model` and most callbacks
    come from the checkpoint or do not exist there, and eval writes a run folder of its own (not paths.output_dir)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return ""
    shared_keys = ("data", "paths", "trainer", "logger", "callbacks.progress_bar", "callbacks.figures")
    shared = [o for o in HydraConfig.get().overrides.task
              if o.lstrip("+~").startswith(shared_keys) and not o.lstrip("+~").startswith("paths.output_dir")]
    # A trainer setting an experiment added (experiment=quickcheck's limit_*) is not in eval's config: `++` sets it
    # whether or not it is there.
    shared = ["++" + o.lstrip("+") if o.lstrip("+").startswith("trainer.") else o for o in shared]
    return shell_words(shared) + " " if shared else ""


def shell_words(overrides) -> str:
    """Overrides (minus ckpt_path) as a shell would need them typed: `callbacks=[default,ema]` quoted."""
    return " ".join(shlex.quote(o) for o in overrides if not o.startswith("ckpt_path="))


def ckpt_override(path: str) -> str:
    """`ckpt_path=<path>` as a shell word. A sweep job's folder name holds `=` and `,`, which Hydra's override
    grammar reads as syntax unless the value is quoted."""
    if re.fullmatch(r"[\w./~+-]+", str(path), re.ASCII):  # Hydra reads other letters only inside quotes
        return f"ckpt_path={path}"
    return f"'ckpt_path=\"{path}\"'"
