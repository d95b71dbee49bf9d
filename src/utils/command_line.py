"""The command line of an entry point (train, eval, predict), and the same words from Python (src.api): refused words
with one line each, paths quoted for Hydra, `logger=null`/`callbacks=null` read as none."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

from src import CONFIG_DIR, config_options
from src.utils.console_output import guard_standard_streams
from src.utils.own_configs import own_config_problem
from src.utils.path_overrides import is_multirun
from src.utils.launchers import shared_folder_problem
from src.utils.slurm import requeue_if_warned, stop_on_slurms_warning


CHDIR_NOT_SUPPORTED = ("hydra.job.chdir=true is not supported: every run already writes all its files into its own "
                       "folder (hydra.run.dir), whatever the working directory. Leave it out.")


def run_command_line(main) -> None:
    """`main()` of an entry point (a @hydra.main function), with its command line's paths quoted and
    `logger=null`/`callbacks=null` read as none; refused words exit with one line. Output whose reader has gone is
    discarded (src/utils/console_output.py)."""
    guard_standard_streams()  # a closed pipe (`| head`) does not end the run
    require_config_dir()
    problem = overrides_problem(sys.argv[1:], Path(sys.argv[0]).stem)
    if problem:
        sys.exit(problem)
    sys.argv[1:] = prepared_overrides(sys.argv[1:])
    if prints_only(sys.argv[1:]):
        from src.utils.run_folders import name_folders_only

        name_folders_only()
    problem = shared_folder_problem(sys.argv[1:])
    if problem:
        sys.exit(problem)
    stop_on_slurms_warning()
    allow_hydras_lazy_help()
    try:
        main()
    finally:
        requeue_if_warned(sys.argv[1:], Path(sys.argv[0]).stem)


def allow_hydras_lazy_help() -> None:
    """Python 3.14's argparse checks each option's help as the option is added, and Hydra 1.3's help of
    --shell-completion is an object that renders later, not a string: every command failed with a TypeError in Hydra's
    parser, before reading a word (Hydra issue #3121, not fixed in 1.3.8). The check is skipped for such help only."""
    import argparse

    check = getattr(argparse.ArgumentParser, "_check_help", None)  # new in 3.14
    if check is None or getattr(check, "skips_lazy_help", False):
        return

    def check_string_help(parser, action):
        if action.help is None or isinstance(action.help, str):
            check(parser, action)

    check_string_help.skips_lazy_help = True
    argparse.ArgumentParser._check_help = check_string_help


def prints_only(arguments: list[str]) -> bool:
    """Whether Hydra is to print the config or its own information (--cfg, --info), not run the command."""
    return bool({"--cfg", "-c", "--info", "-i"} & {argument.partition("=")[0] for argument in arguments})


def overrides_problem(arguments: list[str], entry_point: str) -> str | None:
    """Why these command words are refused (`hydra.job.chdir=true`, a word without a key), or None."""
    changes_directory = {"hydra.job.chdir=" + value for value in ("true", "yes", "y", "on", "1")}  # as OmegaConf reads a bool
    if changes_directory & {argument.lstrip("+").lower() for argument in arguments}:
        # Relative paths given on the command line (ckpt_path, inputs, data.data_dir) would be read inside the new run
        # folder, and a resume would take its checkpoint's run for a new one and overwrite that run's records.
        return CHDIR_NOT_SUPPORTED
    spaced = _spaced_setting(arguments)
    if spaced:
        return spaced
    for word in words_without_a_key(arguments):
        return f"'{word}' has no key: settings are key=value, such as {_likely_setting(word, entry_point)}."
    multirun = is_multirun(arguments)
    if {"-m", "--multirun"} & set(arguments) and {"--cfg", "-c"} & {argument.partition("=")[0] for argument in arguments}:
        return ("--cfg shows the config of one run and cannot be combined with -m: leave out -m and give one value per "
                "setting to see that job's config.")
    if entry_point == "predict" and multirun:
        return ("src.predict does not sweep: it classifies with one checkpoint (its jobs would each write the same "
                "output= and leave no results for a sweep summary). Run it once per checkpoint.")
    own_sweeper = any(a.lstrip("+").startswith("hydra/sweeper=") for a in arguments)
    for word in arguments if multirun and not own_sweeper else []:
        key, _, value = word.partition("=")
        problem = continuous_range_problem(word, key, value)
        if problem:
            return problem
    unknown = _unknown_setting(arguments, entry_point) or own_config_problem(arguments, entry_point)
    if unknown:
        return unknown
    own_config = _uses_own_config(arguments)  # its own groups
    for word in words_with_a_key(arguments):
        key, _, value = word.lstrip("+").partition("=")
        if word.startswith("+") and key in _config_groups(entry_point) and not own_config:
            # Hydra: "Multiple values for experiment. To override a value use 'override experiment: fast'".
            return (f"{word}: {key} is a config group the run has already, so an option of it is chosen without `+`: "
                    f"{word.lstrip('+')}.")
        empty = value.strip().strip("'\"") == ""
        if empty and _names_a_folder(key):
            # `hydra.run.dir=$RUN_DIR` with the variable unset: the run would write into the current folder, or `/`.
            return (f"{word} is empty: it must be a folder (an unset shell variable?). Give one, or leave the setting "
                    "out for its default.")
        if empty and key == "ckpt_path":  # train: it read as none, then Lightning failed
            instead = ("a checkpoint to resume from (or last), or leave it out to train from scratch"
                       if entry_point == "train" else
                       "a checkpoint file, e.g. ckpt_path=outputs/<date>/<time>/checkpoints/last.ckpt")
            return f"{word} is empty (an unset shell variable?): give {instead}."
    for word in arguments:
        dropped = _dropped_group(word, entry_point)
        if dropped:
            return dropped
        key = word.lstrip("~").partition("=")[0]  # ~seed=42 deletes seed too (if it is 42)
        if word.startswith("~") and key in _top_level_settings(entry_point):
            value = "null for an unseeded run" if key == "seed" else "<value>"
            return f"{word} would delete `{key}`, which every {entry_point} run reads: set it instead ({key}={value})."
        task_name = word.partition("=")[2]
        if word.lstrip("+").startswith("task_name=") and ("/" in task_name or not task_name.strip("'\" ")
                                                            or task_name.lower() in ("null", "~")):  # None.log
            return (f"{word.lstrip('+')} is invalid: the task name names the run's log file (<task_name>.log), so it "
                    "cannot be empty or null or hold '/'. Use another name, e.g. task_name=my_run.")
    return None


def continuous_range_problem(given: str, key: str, value: str) -> str | None:
    """Why `key`'s `value` (as `given`) is refused for Hydra's basic sweeper: a continuous range (interval(...), tagged
    too), on which it fails with a traceback that names no fix."""
    if not (value.replace(" ", "").startswith(("interval(", "tag(")) and "interval(" in value):
        return None
    return (f"{given} is a continuous range, which only an optimizing sweeper (such as Optuna's) can sample; "
            f"Hydra's basic sweeper, used here, runs the values listed: {key.lstrip('+')}=<value>,<value>,... "
            "(or range(start,stop,step) for evenly spaced ones).")


def _names_a_folder(key: str) -> bool:
    from src.utils.output_folders import OUTPUT_FOLDER_KEYS

    return key in ("hydra.run.dir", "hydra.sweep.dir", "hydra.sweep.subdir") or key.startswith("paths.") or (
        key.rsplit(".", 1)[-1] in OUTPUT_FOLDER_KEYS)


def _dropped_group(word: str, entry_point: str) -> str | None:
    """Why `model=null` or `~model` is refused (Hydra fails on the first with a traceback, and the run on a config
    without the second's group); `~experiment` leaves out an optional group, as it should. `logger` and `callbacks`,
    groups of entries, may be none (`logger=null`)."""
    deleted = word.startswith("~")
    key, _, value = word.lstrip("~+").partition("=")
    group = CONFIG_DIR / key
    if key in ("logger", "callbacks") or key not in _config_groups(entry_point) or not group.is_dir():
        return None
    options = config_options(key)
    if _group_defaults(entry_point).get(key) is None:  # optional: none by default
        if deleted or value.strip().lower() != "null":  # Hydra reads null in any case
            return None
        return (f"{word}: Hydra cannot set a config group to null on the command line. No {key} is the default, so leave "
                f"it out (~{key} drops one that a config of one's own chooses).")
    if deleted or value.strip().lower() == "null":
        return f"{word} would leave out the {key} config, which every {entry_point} run needs: choose one of {options}."
    return None


_OWN_CONFIG_FLAGS = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd"}


def _uses_own_config(arguments: list[str]) -> bool:
    """-cd x, --config-dir=x and the like, or hydra.searchpath=[file://x] (its folder may hold groups of its own)."""
    return any(argument.partition("=")[0] in _OWN_CONFIG_FLAGS or argument.lstrip("+").startswith("hydra.searchpath=")
               for argument in arguments)


def _unknown_setting(arguments: list[str], entry_point: str) -> str | None:
    """A word whose key starts with neither a setting nor a config group of the entry point: `+modle=mlp`, which Hydra
    suggests for a mistyped `modle=mlp` and then adds to the config, where nothing reads it. Not checked with a config
    of one's own (-cd/-cn, hydra.searchpath), which may have keys of its own."""
    if _uses_own_config(arguments):
        return None
    settings, groups = _top_level_settings(entry_point), _config_groups(entry_point)
    if not settings:
        return None
    for word in words_with_a_key(arguments):
        first = _first_key(word)
        if first and not names_a_setting(word, entry_point):
            more = (" The network and its settings come from the checkpoint." if entry_point != "train" and first in
                    ("model", "experiment") else "")
            listed = f"; its config groups: {', '.join(sorted(groups))}" if groups else ""
            typo = "" if more else " (a typo?)"
            return (f"{word}: `{first}` is not a setting of src.{entry_point}{typo}, so nothing would read it.{more} "
                    f"Its settings: {', '.join(sorted(settings))}{listed} (python -m src.{entry_point} --help).")
    return None


def names_a_setting(word: str, entry_point: str) -> bool:
    """Whether `word` is key=value with a key the entry point has (a setting, a config group's, Hydra's own)."""
    return "=" in word and _first_key(word) in _top_level_settings(entry_point) | _config_groups(entry_point) | {"hydra"}


def _first_key(word: str) -> str:
    """The top-level key a key=value word sets: model for +model.dropout=0.1, hydra for hydra/launcher=joblib."""
    return word.lstrip("+").partition("=")[0].strip().split(".", 1)[0].split("/", 1)[0]


def words_with_a_key(arguments: list[str]) -> list[str]:
    """The key=value words (+ and ++ ones too), not flags, their values or ~deletions."""
    return [word for before, word in zip(["", *arguments], arguments)
            if "=" in word and not word.startswith(("-", "~")) and before not in _FLAGS_WITH_A_VALUE]


@functools.cache
def _entry_config(entry_point: str) -> dict:
    """The entry point's own config file (conf/<entry_point>.yaml) as written; empty if there is none."""
    from omegaconf import OmegaConf

    config = CONFIG_DIR / f"{entry_point}.yaml"
    return OmegaConf.to_container(OmegaConf.load(config)) if config.is_file() else {}


def _config_groups(entry_point: str) -> set[str]:
    """The config groups the entry point's defaults list names (data, model, ...; hydra's own aside)."""
    return set(_group_defaults(entry_point)) - {"hydra"}


def _group_defaults(entry_point: str) -> dict[str, object]:
    """Each group of the entry point's defaults list, with the option it chooses (None: none)."""
    defaults = {}
    for entry in _entry_config(entry_point).get("defaults", []):
        for group, option in (entry.items() if hasattr(entry, "items") else []):
            defaults[str(group).split()[-1].split("/", 1)[0]] = option  # "override hydra/launcher", "optional x"
    return defaults


def _top_level_settings(entry_point: str) -> set[str]:
    """The plain settings at the top of the entry point's config (seed, train, ckpt_path, ...), not its groups."""
    return set(_entry_config(entry_point)) - {"defaults", "hydra"}


def prepared_overrides(arguments: list[str]) -> list[str]:
    """Overrides as Hydra must read them: paths quoted, `logger=null`/`callbacks=null` as none."""
    from src.utils.path_overrides import quote_paths

    return empty_list_groups(quote_paths(arguments))


def empty_list_groups(arguments: list[str]) -> list[str]:
    """`logger=null` and `callbacks=null` as `=[]` (none): Hydra refuses null for these groups of several entries with
    a traceback, and `logger=null` is how other templates turn logging off."""
    return [f"{argument[:-len('null')]}[]" if argument in ("logger=null", "callbacks=null") else argument
            for argument in arguments]


def require_config_dir() -> None:
    """Exit with advice when conf/ is not beside src/: `pip install .` copies src/ alone into site-packages."""
    problem = config_dir_problem()
    if problem:
        sys.exit(problem)


def config_dir_problem() -> str | None:
    if CONFIG_DIR.is_dir():
        return None
    return (f"No configs found: {CONFIG_DIR} does not exist. This project runs from its own folder, where conf/, data/ "
            "and outputs/ lie beside src/: install it there with `pip install -e .` and run the commands from that folder.")


# Hydra's own flags that take the next word as their value (--info takes one optionally).
_FLAGS_WITH_A_VALUE = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn", "--config-dir",
                       "-cd", "--info", "-i", "--shell-completion", "-sc", "--experimental-rerun"}


def words_without_a_key(arguments: list[str]) -> list[str]:
    """Command-line words that are neither key=value, ~key (delete) nor a flag or its value: a path given alone
    (`src.eval run/checkpoints/last.ckpt`), which Hydra's grammar refuses with a parse error that names no fix."""
    return [word for before, word in zip(["", *arguments], arguments)
            if "=" not in word and not word.startswith(("-", "~")) and before not in _FLAGS_WITH_A_VALUE]


def _spaced_setting(arguments: list[str]) -> str | None:
    """Why `key = value` (or `key =value`, `key= value`) is refused: the shell made several words of one setting,
    which Hydra reads as a word without a key, or as an empty value and another word."""
    for index, word in enumerate(arguments):
        before = arguments[index - 1] if index else ""
        after = arguments[index + 1] if index + 1 < len(arguments) else ""
        if word == "=" and before and after:
            typed, meant = f"{before} = {after}", f"{before}={after}"
        elif word.startswith("=") and len(word) > 1 and before and "=" not in before:
            typed, meant = f"{before} {word}", before + word
        elif (word.endswith("=") and word.count("=") == 1 and after and "=" not in after
              and not after.startswith(("-", "~", "+")) and not _takes_a_path(word[:-1].lstrip("+"))):
            typed, meant = f"{word} {after}", word + after
        else:
            continue
        return f"'{typed}': a setting is one word, without spaces around '=': {meant}."
    return None


def _takes_a_path(key: str) -> bool:
    """An empty path (an unset shell variable) before an input file is likelier than a space after `=`: the checks of
    an empty folder and of a word without a key answer those."""
    return key in ("ckpt_path", "inputs", "output") or _names_a_folder(key) or key.endswith(("_dir", "_path"))


def _likely_setting(word: str, entry_point: str) -> str:
    if word.endswith(".ckpt") or entry_point == "eval":
        return f"ckpt_path={word}"
    key = word.partition(":")[0]
    if ":" in word and (key in _top_level_settings(entry_point) or _first_key(key) in _config_groups(entry_point)):
        return word.replace(":", "=", 1)  # model.optimizer.lr:0.01, as YAML writes it
    return f"inputs={word}" if entry_point == "predict" else "model=mlp or trainer.max_epochs=3"
