"""Config-driven MNIST experiments: PyTorch Lightning + Hydra + TensorBoard."""

from pathlib import Path

from omegaconf import OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = PROJECT_ROOT / "conf"


def job_dirname(job_num: int, override_dirname: str, max_length: int = 120) -> str:
    """A sweep job's folder name: its number and overrides, without path separators, kept short
    enough for file systems (a hash keeps truncated names unique)."""
    import hashlib

    name = f"{job_num}_{override_dirname}".replace("/", "-") if override_dirname else str(job_num)
    if len(name) > max_length:
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        name = f"{name[: max_length - 9]}~{digest}"
    return name


def resume_run_dir(ckpt_path: str | None, training: bool, new_run_dir: str) -> str:
    """Resuming training from <run dir>/checkpoints/x.ckpt continues in that run dir, so TensorBoard
    curves, best-checkpoint tracking and the log continue where they stopped; otherwise a new run dir."""
    if ckpt_path and training:
        checkpoint = Path(str(ckpt_path)).expanduser().resolve()
        run_dir = checkpoint.parent.parent
        if checkpoint.parent.name == "checkpoints" and (run_dir / ".hydra").is_dir():
            return str(run_dir)
    return new_run_dir


# `${project_root:}` in conf/paths: data/ and outputs/ live beside conf/, wherever the command is run from.
if not OmegaConf.has_resolver("project_root"):
    OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))
    OmegaConf.register_new_resolver("job_dirname", job_dirname)
    OmegaConf.register_new_resolver("resume_run_dir", resume_run_dir)
