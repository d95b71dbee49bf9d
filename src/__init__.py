"""Config-driven MNIST experiments: PyTorch Lightning + Hydra + TensorBoard."""

from pathlib import Path

from omegaconf import OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = PROJECT_ROOT / "conf"

# `${project_root:}` in conf/paths: data/ and outputs/ live beside conf/, wherever the command is run from.
if not OmegaConf.has_resolver("project_root"):
    OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))
