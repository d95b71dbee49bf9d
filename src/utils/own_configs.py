"""A config of one's own (--config-dir, --config-name) that Hydra would pass over, or that is another command's: each
refused in one line before Hydra starts. Hydra searches the project's conf/ before --config-dir, so a file there with
the name of one of the project's is never read; and a config made for another command failed with a traceback
(src.train with eval's) or ran as a resume of the checkpoint's training run (src.eval with one that extends train)."""

from __future__ import annotations

from pathlib import Path

from src import CONFIG_DIR

ENTRY_POINTS = ("train", "eval", "predict")


def own_config_problem(arguments: list[str], entry_point: str) -> str | None:
    return _passed_over(arguments) or _another_commands_config(arguments, entry_point)


def flag_value(arguments: list[str], names: tuple[str, ...]) -> str | None:
    """The value of the last of these flags, given as `--flag value` or `--flag=value`."""
    value = None
    for before, word in zip(["", *arguments], arguments):
        if before in names:
            value = word
        elif word.partition("=")[0] in names and "=" in word:
            value = word.partition("=")[2]
    return value


def own_config_folders(arguments: list[str]) -> list[Path]:
    """The folders of configs of one's own: --config-dir's, and hydra.searchpath's (as lightning-hydra-template adds
    them; its pkg:// entries aside), which Hydra searches after the project's conf/ too."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    folder = flag_value(arguments, ("--config-dir", "-cd"))
    folders = [Path(folder).expanduser()] if folder else []
    for word in arguments:
        if word.lstrip("+").partition("=")[0] != "hydra.searchpath":
            continue
        try:
            entries = OverridesParser.create().parse_override(word).value()
        except Exception:  # Hydra says what is wrong with it
            continue
        entries = entries if isinstance(entries, list) else []
        folders += [Path(entry[len("file://"):]).expanduser() for entry in map(str, entries) if entry.startswith("file://")]
    return folders


def _passed_over(arguments: list[str]) -> str | None:
    for folder in own_config_folders(arguments):
        problem = _passed_over_in(folder, arguments)
        if problem:
            return problem
    return None


def _passed_over_in(folder: Path, arguments: list[str]) -> str | None:
    if folder.resolve() == CONFIG_DIR.resolve():  # the project's own folder: the same files either way
        return None
    chosen = (flag_value(arguments, ("--config-name", "-cn")) or "").removesuffix(".yaml")
    for project_file in sorted(CONFIG_DIR.rglob("*.yaml")):
        name = project_file.relative_to(CONFIG_DIR)
        # A top-level file is read only as the run's config (-cn); a group's option whenever it is chosen.
        if (folder / name).is_file() and (name.parent != Path(".") or name.stem == chosen):
            group = name.parent.as_posix()
            instead = f"{group}/<name>.yaml, chosen with {group}=<name>" if group != "." else "--config-name <name>"
            return (f"{folder / name}: the project's conf/{name.as_posix()} has the same name, and Hydra reads the "
                    f"project's configs first, so this file would be passed over without a word. Give it a name of its "
                    f"own: {instead}.")
    return None


def _another_commands_config(arguments: list[str], entry_point: str) -> str | None:
    name = flag_value(arguments, ("--config-name", "-cn"))
    if not name:
        return None
    name = name.removesuffix(".yaml")
    based_on = name if name in ENTRY_POINTS else _extends(flag_value(arguments, ("--config-dir", "-cd")), name)
    if based_on is None or based_on == entry_point:
        return None
    what = "" if name == based_on else f" (it extends {based_on})"
    return (f"--config-name {name} is a config for src.{based_on}{what}: src.{entry_point} needs its own, "
            f"{entry_point}, or a config that extends it (defaults: [{entry_point}, _self_]).")


def _extends(folder: str | None, name: str) -> str | None:
    """The entry point's config that `<folder>/<name>.yaml` lists in its defaults (None: none, or not one)."""
    import yaml

    if not folder:
        return None
    try:
        text = (Path(folder).expanduser() / f"{name}.yaml").read_text(encoding="utf-8")  # as Hydra reads it
        defaults = (yaml.safe_load(text) or {}).get("defaults")
    except (OSError, UnicodeDecodeError, yaml.YAMLError, AttributeError):
        return None  # Hydra says what is wrong with it
    bases = {entry for entry in defaults or [] if isinstance(entry, str) and entry in ENTRY_POINTS}
    return bases.pop() if len(bases) == 1 else None
