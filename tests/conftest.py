from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from src import CONFIG_DIR, PROJECT_ROOT
from src.data.mnist_files import missing_files
from src.data.synthetic import write_synthetic_mnist

REAL_DATA_DIR = PROJECT_ROOT / "data"
HAS_REAL_MNIST = not missing_files(REAL_DATA_DIR)
# CI stages real MNIST and sets this, so a staging mistake fails the real-data tests instead of skipping them.
REAL_DATA_REQUIRED = os.environ.get("MNIST_REQUIRE_REAL_DATA", "").strip().lower() in {"1", "true", "yes"}
needs_real_mnist = pytest.mark.skipif(
    not (HAS_REAL_MNIST or REAL_DATA_REQUIRED), reason=f"real MNIST not found in {REAL_DATA_DIR}/MNIST/raw"
)


def hydra_run_dirs() -> set[Path]:
    outputs = PROJECT_ROOT / "outputs"
    return set(outputs.glob("*/*")) | set(outputs.glob("multirun/*/*"))


@pytest.fixture(scope="session", autouse=True)
def project_outputs_untouched():
    """Tests write under tmp_path only. A run folder that appears in the project's outputs/ during the session
    is a `python -m src.*` call that forgot hydra.run.dir, and it would clutter the user's own runs."""
    before = hydra_run_dirs()
    yield
    added = sorted(str(path.relative_to(PROJECT_ROOT)) for path in hydra_run_dirs() - before)
    assert not added, f"tests created run folders in the project's outputs/: {added}"


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory) -> Path:
    """400 train + 100 test images in MNIST's own IDX format (gzip), under <dir>/MNIST/raw/."""
    return write_synthetic_mnist(tmp_path_factory.mktemp("synthetic_mnist"))


def compose_config(overrides: list[str], config_name: str = "train") -> DictConfig:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


def tiny_run_overrides(data_dir: Path, output_dir: Path) -> list[str]:
    """A run over the synthetic data that takes seconds: small batches, one short epoch, on CPU."""
    return [
        f"data.data_dir={data_dir}",
        "data.download=false",
        "data.batch_size=32",
        "data.eval_batch_size=50",
        "data.val_size=80",
        f"paths.output_dir={output_dir}",
        "trainer=cpu",
        "trainer.max_epochs=1",
        "trainer.log_every_n_steps=1",
        "callbacks.progress_bar=null",
        "++trainer.enable_progress_bar=false",
    ]


def run_module(module: str, *args: str, timeout: int = 300, extra_env: dict | None = None,
               own_process_group: bool = False) -> subprocess.CompletedProcess:
    """`python -m <module> <args>` from the project root, as a user would run it. HYDRA_FULL_ERROR is
    removed so the one-line error messages under test are what the user sees by default. `own_process_group`: for a
    run that signals its whole process group, which would otherwise reach the tests too."""
    env = {key: value for key, value in os.environ.items() if key != "HYDRA_FULL_ERROR"}
    env.update(PYTHONUNBUFFERED="1", **(extra_env or {}))
    return subprocess.run([sys.executable, "-m", module, *args], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, preexec_fn=ctrl_c_as_in_a_terminal,
                          start_new_session=own_process_group)


def ctrl_c_as_in_a_terminal() -> None:
    """For a child process: Ctrl-C (SIGINT) handled as in a terminal. A test run started in the background of
    a script (CI) ignores it, and children inherit that: Ctrl-C tests would then test nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def hparams_values(run_dir: Path, events_dir: Path | None = None) -> dict[str, object]:
    """The run's row in TensorBoard's HParams tab (`events_dir`: its TensorBoard folder, if not <run_dir>/tensorboard)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    accumulator = EventAccumulator(str(events_dir or run_dir / "tensorboard"))
    accumulator.Reload()
    content = accumulator.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = HParamsPluginData.FromString(content).session_start_info
    return {name: getattr(value, value.WhichOneof("kind")) for name, value in start.hparams.items()}


def held_open_for(attempts: int, real):
    """`real` (os.replace, os.remove) refused as Windows refuses a file that another process has open, `attempts`
    times (every time: -1); the calls made are counted in `.calls`."""
    def refused_while_held(*args, **kwargs):
        refused_while_held.calls += 1
        if attempts < 0 or refused_while_held.calls <= attempts:
            raise PermissionError(13, "Access is denied", str(args[0]))
        return real(*args, **kwargs)

    refused_while_held.calls = 0
    return refused_while_held
