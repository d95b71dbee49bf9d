"""Config-driven MNIST experiments: PyTorch Lightning + Hydra + TensorBoard."""

import hashlib
from pathlib import Path

from omegaconf import OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = PROJECT_ROOT / "conf"


def job_dirname(job_num: int, overrides: list[str], swept: set[str] | frozenset[str] = frozenset(),
                exclude: list[str] | tuple[str, ...] = (), max_length: int = 120) -> str:
    """A sweep job's folder name: its number and overrides, as Hydra's override_dirname but with the swept keys
    first, so a name cut short (with a hash keeping it unique) still says what the job is; no path separators."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = [override for override in OverridesParser.create().parse_overrides(list(overrides))
              if override.key_or_group not in exclude]
    lines = sorted((override.key_or_group not in swept, override.input_line) for override in parsed)
    name = f"{job_num}_{','.join(line for _, line in lines)}".replace("/", "-") if lines else str(job_num)
    if len(name) > max_length:
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        name = f"{name[: max_length - 9]}~{digest}"
    return name


def swept_keys(sweep_dir: str) -> set[str]:
    """The keys a sweep varies (comma lists and sweep functions on its command line, hydra.sweeper.params), from the
    multirun.yaml Hydra writes into the sweep folder before the first job starts; none if it cannot be read."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        record = OmegaConf.to_container(OmegaConf.load(Path(sweep_dir) / "multirun.yaml").hydra, resolve=False)
        lines = list(record["overrides"]["task"])
        lines += [f"{key}={value}" for key, value in (record["sweeper"].get("params") or {}).items()]
        return {override.key_or_group for override in OverridesParser.create().parse_overrides(lines)
                if override.is_sweep_override()}
    except Exception:  # only the order of the names depends on it
        return set()


def empty_list_groups(arguments: list[str]) -> list[str]:
    """`logger=null` and `callbacks=null` as `=[]` (none): Hydra refuses null for these groups of several entries with
    a traceback, and `logger=null` is how other templates turn logging off."""
    return [f"{argument[:-len('null')]}[]" if argument in ("logger=null", "callbacks=null") else argument
            for argument in arguments]


def require_config_dir() -> None:
    """Exit with advice when conf/ is not beside src/: `pip install .` copies src/ alone into site-packages."""
    import sys

    if not CONFIG_DIR.is_dir():
        sys.exit(f"No configs found: {CONFIG_DIR} does not exist. This project runs from its own folder, where conf/, "
                 "data/ and outputs/ lie beside src/: install it there with `pip install -e .` and run the commands "
                 "from that folder.")


def run_command_line(main) -> None:
    """`main()` of an entry point (a @hydra.main function), with its command line's paths quoted and
    `logger=null`/`callbacks=null` read as none; refused words exit with one line."""
    import sys

    require_config_dir()
    problem = overrides_problem(sys.argv[1:], Path(sys.argv[0]).stem)
    if problem:
        sys.exit(problem)
    sys.argv[1:] = prepared_overrides(sys.argv[1:])
    main()


def overrides_problem(arguments: list[str], entry_point: str) -> str | None:
    """Why these command words are refused (`hydra.job.chdir=true`, a word without a key), or None."""
    changes_directory = {"hydra.job.chdir=" + value for value in ("true", "yes", "y", "on", "1")}  # as OmegaConf reads a bool
    if changes_directory & {argument.lstrip("+").lower() for argument in arguments}:
        # Relative paths given on the command line (ckpt_path, inputs, data.data_dir) would be read inside the new run
        # folder, and a resume would take its checkpoint's run for a new one and overwrite that run's records.
        return ("hydra.job.chdir=true is not supported: every run already writes all its files into its own folder "
                "(hydra.run.dir), whatever the working directory. Leave it out.")
    for word in words_without_a_key(arguments):
        return f"'{word}' has no key: settings are key=value, such as {_likely_setting(word, entry_point)}."
    return None


def prepared_overrides(arguments: list[str]) -> list[str]:
    """Overrides as Hydra must read them: paths quoted, `logger=null`/`callbacks=null` as none."""
    from src.utils.path_overrides import quote_paths

    return empty_list_groups(quote_paths(arguments))


# Hydra's own flags that take the next word as their value (--info takes one optionally).
_FLAGS_WITH_A_VALUE = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn", "--config-dir",
                       "-cd", "--info", "-i", "--shell-completion", "-sc", "--experimental-rerun"}


def words_without_a_key(arguments: list[str]) -> list[str]:
    """Command-line words that are neither key=value, ~key (delete) nor a flag or its value: a path given alone
    (`src.eval run/checkpoints/last.ckpt`), which Hydra's grammar refuses with a parse error that names no fix."""
    return [word for before, word in zip(["", *arguments], arguments)
            if "=" not in word and not word.startswith(("-", "~")) and before not in _FLAGS_WITH_A_VALUE]


def _likely_setting(word: str, entry_point: str) -> str:
    if word.endswith(".ckpt") or entry_point == "eval":
        return f"ckpt_path={word}"
    return f"inputs={word}" if entry_point == "predict" else "model=mlp or trainer.max_epochs=3"


def resumed_job_dir(ckpt_path: str | None, training: bool) -> Path | None:
    """The run (or sweep job) folder a training resume from <folder>/checkpoints/x.ckpt continues in, so
    TensorBoard curves, best-checkpoint tracking and the log go on where they stopped; None otherwise."""
    if ckpt_path and training:
        checkpoint = Path(str(ckpt_path)).expanduser().resolve()
        job_dir = checkpoint.parent.parent
        if checkpoint.parent.name == "checkpoints" and (job_dir / ".hydra").is_dir():
            return job_dir
    return None


def resume_run_dir(ckpt_path: str | None, training: bool, new_run_dir: str) -> str:
    job_dir = resumed_job_dir(ckpt_path, training)
    return str(job_dir) if job_dir else new_run_dir


def holds_a_run(folder: Path) -> list[str]:
    """What in `folder` shows that a run has used it already (its results, its resumable state)."""
    return [name for name in ("metrics.json", "checkpoints/last.ckpt") if (folder / name).is_file()]


def resume_subdir(ckpt_path: str | None, training: bool, output_dir: str, timestamp: str, base: str) -> str:
    """Where a record that a run writes once (Hydra's config and overrides, the CSV log) goes inside the run folder.
    A resume in the checkpoint's own folder writes its own beside the original's, never over it: a refused resume
    prints the original overrides, and the first run's metrics.csv would be lost. So does a new run pointed at a
    folder that holds a run, which is then refused."""
    resumed_here = resumed_job_dir(ckpt_path, training) == Path(output_dir).resolve()
    return f"{base}/resumed-{timestamp}" if resumed_here or holds_a_run(Path(output_dir)) else base


def _resumed_sweep_job(ckpt_path: str | None, training: bool) -> Path | None:
    """A resumed job of an earlier sweep (its folder's parent holds Hydra's multirun.yaml)."""
    job_dir = resumed_job_dir(ckpt_path, training)
    return job_dir if job_dir and (job_dir.parent / "multirun.yaml").is_file() else None


def resume_sweep_dir(ckpt_path: str | None, training: bool, new_sweep_dir: str) -> str:
    job_dir = _resumed_sweep_job(ckpt_path, training)
    return str(job_dir.parent) if job_dir else new_sweep_dir


def resume_job_subdir(ckpt_path: str | None, training: bool, job_num: int, overrides, exclude, sweep_dir: str) -> str:
    job_dir = _resumed_sweep_job(ckpt_path, training)
    return job_dir.name if job_dir else job_dirname(job_num, overrides, swept_keys(sweep_dir), exclude)


def config_options(group: str) -> str:
    """The options of a config group (its files in conf/<group>/), for an entry point's --help."""
    return ", ".join(sorted(path.stem for path in (CONFIG_DIR / group).glob("*.yaml")))


# `${project_root:}` in conf/paths: data/ and outputs/ live beside conf/, wherever the command is run from.
if not OmegaConf.has_resolver("project_root"):
    OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))
    OmegaConf.register_new_resolver("config_options", config_options)
    OmegaConf.register_new_resolver("resume_run_dir", resume_run_dir)
    OmegaConf.register_new_resolver("resume_subdir", resume_subdir)
    OmegaConf.register_new_resolver("resume_sweep_dir", resume_sweep_dir)
    OmegaConf.register_new_resolver("resume_job_subdir", resume_job_subdir)
