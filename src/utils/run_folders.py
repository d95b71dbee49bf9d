"""Run and sweep-job folders: a sweep job's folder name, and where a resumed run or sweep job continues (its own
folder). conf/hydra/default.yaml reads these through the resolvers registered in src/__init__.py."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

# Path separators, and what else Windows forbids in a file name: a job folder named after data.device=cuda:0 or a
# quoted value could not be made there, nor copied there from a cluster's disk.
_NOT_IN_A_NAME = str.maketrans(dict.fromkeys('/\\:*?"<>|', "-"))


def job_dirname(job_num: int, overrides: Sequence[str], swept: set[str] | frozenset[str] = frozenset(),
                exclude: Sequence[str] = (), max_length: int = 120) -> str:
    """A sweep job's folder name: its number and overrides, as Hydra's override_dirname but with the swept keys
    first, so a name cut short still says what the job is; no path separators, nor other characters Windows forbids
    (each is a `-`). A name cut short ends with `,~` and a hash of the whole name (keeping it unique) after the last
    override that fits whole, never inside a value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = [override for override in OverridesParser.create().parse_overrides(list(overrides))
              if override.key_or_group not in exclude]
    lines = sorted((override.key_or_group not in swept, override.input_line) for override in parsed)
    name = f"{job_num}_{','.join(line for _, line in lines)}".translate(_NOT_IN_A_NAME) if lines else str(job_num)
    if len(name) > max_length:
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        kept = name[: max_length - 10]
        # Up to the last whole override (a comma outside brackets: model.hidden_sizes=[64,32] is one); an override
        # longer than the limit, cut at the limit.
        depth, end = 0, -1
        for index, char in enumerate(kept):
            depth += (char in "[(") - (char in "])")
            if char == "," and depth == 0:
                end = index
        name = f"{kept[: end + 1] if end > 0 else kept + ','}~{digest}"
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
    except Exception:  # a folder name then lists the keys in their plain order (a cut one may lose swept ones)
        return set()


def resumed_job_dir(ckpt_path: str | None, training: bool) -> Path | None:
    """The run (or sweep job) folder a training resume from <folder>/checkpoints/x.ckpt continues in, so
    TensorBoard curves, best-checkpoint tracking and the log go on where they stopped; None otherwise."""
    if ckpt_path and training:
        checkpoint = Path(str(ckpt_path)).expanduser().resolve()
        job_dir = checkpoint.parent.parent
        if checkpoint.parent.name == "checkpoints" and is_run_folder(job_dir):
            return job_dir
    return None


def is_run_folder(folder: Path) -> bool:
    """Whether a run made `folder`: Hydra's record is there, or (hydra.output_subdir=null or another name) the run's
    config.yaml."""
    return (folder / ".hydra").is_dir() or (folder / "config.yaml").is_file()


def resume_run_dir(ckpt_path: str | None, training: bool, new_run_dir: str) -> str:
    """The default hydra.run.dir: a resumed run's own folder, or a new one. Registered with use_cache, so a config
    resolves it once: the folder it makes is this run's."""
    job_dir = resumed_job_dir(ckpt_path, training)
    return str(job_dir) if job_dir else str(new_folder(Path(new_run_dir)))


# The folders new_folder made in this process (a run's, and those above it that were new too: the date folder,
# paths.log_dir): the only ones discard_unused_folder may remove.
_MADE_HERE: set[Path] = set()
_NAMED_ONLY = False  # --cfg and --info: the config is printed, nothing runs in its folders


def name_folders_only() -> None:
    """From now on new_folder names a run's or sweep's new folder without making it: `--cfg all --resolve` resolves
    hydra.run.dir and hydra.sweep.dir to print them, and left two empty dated folders behind."""
    global _NAMED_ONLY
    _NAMED_ONLY = True


def new_folder(folder: Path) -> Path:
    """`folder`, or if it exists, the first of folder-2, folder-3, ... that does not, made here. Made exclusively, so
    runs that start within the same second (in parallel, or one after another) never share a folder."""
    candidate, number = folder, 1
    while _NAMED_ONLY:
        if not candidate.exists():
            return candidate
        number += 1
        candidate = folder.with_name(f"{folder.name}-{number}")
    while True:
        try:
            missing = [above for above in candidate.resolve().parents if not above.is_dir()]
            candidate.parent.mkdir(parents=True, exist_ok=True)
            _MADE_HERE.update(missing)
            candidate.mkdir()
            _MADE_HERE.add(candidate.resolve())
            return candidate
        except FileExistsError:
            number += 1
            candidate = folder.with_name(f"{folder.name}-{number}")
        except FileNotFoundError:  # a refused run beside this one removed the new date folder just now: make it again
            continue
        except OSError:  # not writable: the run reports it where it first writes there
            return candidate


def made_here(folder: Path) -> bool:
    """Whether this process made `folder` as a new run folder (not one named by hydra.run.dir)."""
    return folder.resolve() in _MADE_HERE


def discard_unused_folder(folder: Path, record_dir: str | None) -> bool:
    """Remove a run folder made in this process (not one named by hydra.run.dir) that holds nothing of a refused run
    but Hydra's record of the command (in `record_dir`, hydra.output_subdir), the saved config and the log, which
    holds the refusal already printed. A mistyped command then leaves no dated folder behind; the folders made for it
    above it (the date's) go too when empty. Returns whether the folder was removed."""
    import shutil

    from src.utils.run_lock import LOCK_NAME

    folder = folder.resolve()
    if folder not in _MADE_HERE or not folder.is_dir():
        return False
    for path in folder.rglob("*"):
        if path.is_dir() and not path.is_symlink():
            continue
        inside = path.relative_to(folder)
        record = (record_dir is not None and inside.is_relative_to(record_dir)) or (
            inside.parent == Path(".") and (path.suffix == ".log" or path.name in ("config.yaml", LOCK_NAME)))
        if not (record or empty_event_file(path)):
            return False
    _close_log_files_in(folder)
    try:
        shutil.rmtree(folder)
        for above in folder.parents:
            if above not in _MADE_HERE:
                break
            above.rmdir()  # fails while it holds another run's folder, which is what should happen
    except OSError:
        pass
    return not folder.exists()


def _close_log_files_in(folder: Path) -> None:
    """Windows removes no file that is open: the refused run's log file, which Hydra's handler holds open until the
    process ends, is closed first (the console has shown the refusal)."""
    import logging

    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).resolve().is_relative_to(folder):
            root.removeHandler(handler)
            handler.close()


def discard_refused_run(folder: Path, record_dir: str | None, cfg: DictConfig) -> None:
    """A refused run's folder (discard_unused_folder), and then its loggers' empty subfolders elsewhere."""
    if discard_unused_folder(folder, record_dir):
        discard_empty_logger_folders(cfg)


def discard_empty_logger_folders(cfg: DictConfig) -> None:
    """The subfolders a refused run's loggers made in a folder shared by many runs (logger_version), while they hold
    nothing but empty event files (TensorBoard's is opened before the data is read), and the folders made for them."""
    import shutil

    for name in cfg.get("logger") or {}:
        written = OmegaConf.to_container(cfg.logger, resolve=False)[name]
        if not isinstance(written, dict) or not versioned_by_run_folder(written):
            continue  # a version of one's own may be another run's too, one that has only just started
        try:
            entry = OmegaConf.to_container(cfg.logger[name], resolve=True)
        except Exception:  # a logger config that does not resolve made no folder
            continue
        if not entry.get("version") or not entry.get("save_dir"):
            continue  # inside the run's folder
        top = Path(entry["save_dir"]).expanduser() / str(entry.get("name") or "")
        folder = top / str(entry["version"])
        if not folder.is_dir() or not all(empty_event_file(path) for path in folder.iterdir()):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        for above in folder.parents:
            if not above.is_relative_to(top):  # save_dir itself stays: one's own folder, perhaps made for the purpose
                break
            try:
                above.rmdir()  # fails while it holds another run's folder, which is what should happen
            except OSError:
                break


LATEST = "last"  # ckpt_path=last: the run folder's own last checkpoint (src/utils/continue_run.py)


def ckpt_path_word(override) -> str | None:
    """The value an override gives ckpt_path, as Hydra reads it (`last`, a path, `null`; quotes removed, null in any
    case), "" for `~ckpt_path`; None when the override sets something else."""
    key, _, value = str(override).lstrip("+~").partition("=")
    if key != "ckpt_path":
        return None
    value = value.strip()
    if len(value) > 1 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]  # quoted: a string, 'null' too
    return "null" if value.lower() == "null" else value


def asks_for_last(overrides) -> bool:
    """Whether these overrides (a job's, as Hydra records them) include ckpt_path=last."""
    return any(ckpt_path_word(override) == LATEST for override in overrides)


def names_a_checkpoint_file(override) -> bool:
    """Whether a sweep job's override gives it a checkpoint of its own (whose run's folder it continues in)."""
    return ckpt_path_word(override) not in (None, "", LATEST, "null")


def holds_a_run(folder: Path) -> list[str]:
    """What in `folder` shows that a run has used it already: its results (the record of a job that a stopped sweep
    never started is none), its resumable state."""
    found = ["metrics.json"] if run_status(folder) not in (None, "not run") else []
    return [*found, "checkpoints/last.ckpt"] if (folder / "checkpoints" / "last.ckpt").is_file() else found


def run_status(folder: Path) -> str | None:
    """The status its metrics.json records (ok, failed, interrupted, not run, unreadable metrics.json); None without
    one."""
    from src.utils.sweep_summary import read_metrics

    path = folder / "metrics.json"
    return read_metrics(path).get("status", "unreadable metrics.json") if path.is_file() else None


def job_folder_in_sweep(sweep_dir: Path, overrides) -> Path | None:
    """The folder of the sweep's job with these overrides (in any order, ckpt_path aside), whatever its number: where
    ckpt_path=last continues that job when the swept values are listed in another order. Every other override counts,
    even those left out of folder names (two jobs may differ only in data.data_dir)."""
    def settings(words) -> set[str]:
        return {str(word) for word in words if ckpt_path_word(word) is None}

    wanted = settings(overrides)
    for record in sorted(sweep_dir.glob("*/.hydra/overrides.yaml")):
        try:
            if settings(OmegaConf.to_container(OmegaConf.load(record), resolve=False)) == wanted:
                return record.parent.parent
        except Exception:  # not a list of overrides: not a job of this project's sweeps
            continue
    return None


def resume_subdir(ckpt_path: str | None, training: bool, output_dir: str | None, timestamp: str, base: str) -> str:
    """Where a record that a run writes once (Hydra's config and overrides, the CSV log) goes inside the run folder.
    A resume in the checkpoint's own folder writes its own beside the original's, never over it: a refused resume
    prints the original overrides, and the first run's metrics.csv would be lost. So does a new run pointed at a
    folder that holds a run, which is then refused. Resolved without a run folder (--cfg job --resolve): `base`."""
    from src.utils.run_lock import another_process_holds

    if not output_dir:
        return base
    resumed_here = resumed_job_dir(ckpt_path, training) == Path(output_dir).resolve()
    recorded = any((Path(output_dir) / name).is_file() for name in (".hydra/config.yaml", "config.yaml"))
    continued = ckpt_path == LATEST and recorded  # a run there, wherever it kept its checkpoints (callbacks.*.dirpath)
    # A run still in its first epoch there has saved nothing yet, and this command will be refused (run_lock.py).
    used = holds_a_run(Path(output_dir)) or another_process_holds(Path(output_dir))
    return f"{base}/resumed-{timestamp}" if resumed_here or continued or used else base


def _resumed_sweep_job(ckpt_path: str | None, training: bool) -> Path | None:
    """A resumed job of an earlier sweep (its folder's parent holds Hydra's multirun.yaml)."""
    job_dir = resumed_job_dir(ckpt_path, training)
    return job_dir if job_dir and (job_dir.parent / "multirun.yaml").is_file() else None


def resume_sweep_dir(ckpt_path: str | None, training: bool, new_sweep_dir: str, _root_: DictConfig) -> str:
    """The default hydra.sweep.dir: a resumed job's sweep folder, or a new one, made here (two sweeps started in the
    same second would otherwise share one, and each other's summary). The new folder is kept in the config's resolver
    cache, which Hydra hands from the sweep's config to every job's, also in other processes, so all jobs resolve the
    folder the sweep made. Not a cached resolver: that cache is keyed by the arguments as written, the same for every
    job, and a sweep over ckpt_path (resuming several jobs) would send every job to the first value's folder."""
    job_dir = _resumed_sweep_job(ckpt_path, training)
    if job_dir:
        return str(job_dir.parent)
    made = OmegaConf.get_cache(_root_).setdefault("new_sweep_folder", {})
    if new_sweep_dir not in made:
        made[new_sweep_dir] = str(new_folder(Path(new_sweep_dir)))
    return made[new_sweep_dir]


def resume_job_subdir(ckpt_path: str | None, training: bool, job_num: int, overrides, exclude, sweep_dir: str) -> str:
    job_dir = _resumed_sweep_job(ckpt_path, training)
    if job_dir is None and ckpt_path == LATEST and training:
        job_dir = job_folder_in_sweep(Path(sweep_dir), overrides)
    return job_dir.name if job_dir else job_dirname(job_num, overrides, swept_keys(sweep_dir), exclude)


def logger_version(save_dir: str | None, output_dir: str | None) -> str:
    """A logger's `version` (the last folders of its path): none when it writes inside this run's folder; in a folder
    elsewhere (one TensorBoard folder shared by many runs), this run folder's whole path, which no other run folder has
    (two sweeps' jobs have the same names, and so do runs under two paths.log_dir), so that runs there neither mix
    their events nor replace each other's HParams row or metrics.csv, and a resume continues its own. Resolved without
    a run folder (--cfg job --resolve): none."""
    if not save_dir or not output_dir:
        return ""
    save, run = Path(save_dir).expanduser().resolve(), Path(output_dir).expanduser().resolve()
    return "" if save == run or run in save.parents else run.relative_to(run.anchor).as_posix()


def versioned_by_run_folder(logger: dict) -> bool:
    """Whether a logger's config, as written (unresolved), takes its version from logger_version."""
    return str(logger.get("version")).startswith("${logger_version:")


def event_files(loggers: list) -> set[Path]:
    """The event files in the folders of the TensorBoard loggers among `loggers`."""
    from pytorch_lightning.loggers import TensorBoardLogger

    return {path for logger in loggers if isinstance(logger, TensorBoardLogger)
            for path in Path(logger.log_dir).glob("events.out.tfevents.*")}


def drop_empty_event_files(loggers: list, earlier: set[Path]) -> None:
    """Remove the empty event files opened since `earlier` was listed: a fit that trains nothing (a finished run's
    resume) opens one, in this process or a ddp_spawn process, and ends it with nothing but its version record."""
    for path in event_files(loggers) - earlier:
        if empty_event_file(path):
            path.unlink()


def empty_event_file(path: Path) -> bool:
    """A TensorBoard event file holding nothing but the version record every new one starts with (the logger opens its
    file before the data is read, so a refusal then leaves one): a record is its length (8 bytes), the length's
    checksum (4), the data and the data's checksum (4)."""
    if not path.name.startswith("events.out.tfevents.") or path.is_symlink():
        return False
    with path.open("rb") as events:
        length = int.from_bytes(events.read(8), "little")
    return path.stat().st_size == 16 + length
