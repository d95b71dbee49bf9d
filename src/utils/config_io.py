"""Show the composed config at start and keep a resolved copy in the run dir."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

# Top-level groups first, in the order a reader wants them; anything else follows.
_ORDER = ("data", "model", "trainer", "callbacks", "logger", "paths")


def print_config_tree(cfg: DictConfig) -> None:
    from rich import print as rich_print
    from rich.syntax import Syntax
    from rich.tree import Tree

    tree = Tree("config", guide_style="dim")
    keys = [k for k in _ORDER if k in cfg] + [k for k in cfg if k not in _ORDER]
    for key in keys:
        value = cfg[key]
        text = OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        tree.add(f"[bold]{key}[/bold]").add(Syntax(text.rstrip(), "yaml", theme="ansi_dark"))
    rich_print(tree)


def save_config(cfg: DictConfig, output_dir: Path) -> Path:
    """Write the fully resolved config: exactly the values this run used."""
    from src.utils.atomic_files import write_text_atomically

    path = output_dir / "config.yaml"
    write_text_atomically(path, OmegaConf.to_yaml(cfg, resolve=True))
    return path
