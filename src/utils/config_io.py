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


def take_the_checkpoints_settings(cfg: DictConfig, checkpoint: dict) -> None:
    """Testing a checkpoint uses its own network and input normalization, whatever `model` and `data.mean/std` say:
    write those into `cfg`, so the config shown and saved is the one the run used. A network or normalization set
    otherwise on the command line (src.train train=false) is named in a warning."""
    import logging

    from omegaconf import open_dict

    from src.models.checkpoint_file import normalization
    from src.utils.command_words import command_overrides
    from src.utils.run import is_rank_zero

    mean, std = normalization(checkpoint)
    checkpoints_model = {"_target_": checkpoint.get("model_class"), **(checkpoint.get("hyper_parameters") or {})}
    overridden = [word.lstrip("+").partition("=")[0] for word in command_overrides() or []]
    ignored = [f"data.{key}={cfg.data[key]} (the checkpoint's: {value})" for key, value in (("mean", mean), ("std", std))
               if f"data.{key}" in overridden and cfg.data[key] != value]
    if "model" in cfg:
        ignored += _model_settings_not_used(cfg.model, checkpoints_model, overridden)
    if ignored and is_rank_zero():
        logging.getLogger(__name__).warning("Not used: %s. The checkpoint's network is tested, on images normalized as "
                                            "in its training.", "; ".join(ignored))
    with open_dict(cfg):
        cfg.data.mean, cfg.data.std = mean, std
        if "model" in cfg:
            cfg.model = checkpoints_model


def _model_settings_not_used(model: DictConfig, checkpoints_model: dict, overridden: list[str]) -> list[str]:
    """The command line's model settings (`model=mlp`, `model.dropout=0.9`) that differ from the checkpoint's."""
    saved = OmegaConf.create(checkpoints_model)
    named = []
    for key in overridden:
        if key == "model" and model.get("_target_") != saved.get("_target_"):
            named.append(f"the network {model.get('_target_')} (the checkpoint's: {saved.get('_target_')})")
        elif key.startswith("model."):
            given = OmegaConf.select(model, key[len("model."):], default=None)
            kept = OmegaConf.select(saved, key[len("model."):], default=None)
            if given != kept:
                named.append(f"{key}={given} (the checkpoint's: {kept})")
    return named


def save_config(cfg: DictConfig, output_dir: Path) -> Path:
    """Write the fully resolved config: exactly the values this run used."""
    from src.utils.atomic_files import write_text_atomically

    path = output_dir / "config.yaml"
    write_text_atomically(path, OmegaConf.to_yaml(cfg, resolve=True))
    return path
