"""Config-driven MNIST experiments: PyTorch Lightning + Hydra + TensorBoard."""

from pathlib import Path

from omegaconf import OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = PROJECT_ROOT / "conf"


def config_options(group: str) -> str:
    """The options of a config group (its files in conf/<group>/), for an entry point's --help."""
    return ", ".join(sorted(path.stem for path in (CONFIG_DIR / group).glob("*.yaml")))


# `${project_root:}` in conf/paths: data/ and outputs/ live beside conf/, wherever the command is run from.
if not OmegaConf.has_resolver("project_root"):
    from src.utils.run_folders import logger_version, resume_job_subdir, resume_run_dir, resume_subdir, resume_sweep_dir

    OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))
    OmegaConf.register_new_resolver("config_options", config_options)
    OmegaConf.register_new_resolver("resume_run_dir", resume_run_dir, use_cache=True)  # it makes the folder
    OmegaConf.register_new_resolver("resume_subdir", resume_subdir)
    OmegaConf.register_new_resolver("resume_sweep_dir", resume_sweep_dir)
    OmegaConf.register_new_resolver("resume_job_subdir", resume_job_subdir)
    OmegaConf.register_new_resolver("logger_version", logger_version)
