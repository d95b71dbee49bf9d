"""Path settings typed on the command line, quoted for Hydra where its override grammar would refuse them with a
bare parse error: a sweep job's folder name holds `=` and `,` (3_model=cnn,seed=1), and folders are named with
brackets, apostrophes, `~` or letters outside ASCII. A leading `~` is expanded to the home folder, as a shell would:
Hydra would create a folder named `~` for hydra.run.dir."""

from __future__ import annotations

import os
import re
from pathlib import Path

PATH_KEYS = ("ckpt_path", "inputs", "output", "data.data_dir", "hydra.run.dir", "hydra.sweep.dir")  # and paths.*
HYDRA_UNQUOTED = re.compile(r"[A-Za-z0-9_$%*+\-./:?@| ]*")  # the characters Hydra reads in an unquoted value
SWEEP_FUNCTION = re.compile(r"\w+\(.*\)")  # choice(...), glob(...): Hydra's own syntax, left as typed
# A backslash typed in a path: Hydra's escape, left as typed; on Windows it separates folders (C:\runs\1_model=cnn).
BACKSLASH_SEPARATES = os.sep == "\\"


def quote_paths(arguments: list[str]) -> list[str]:
    sweeping = is_multirun(arguments)
    return [_quoted_argument(argument, sweeping) for argument in arguments]


def is_multirun(arguments: list[str]) -> bool:
    """-m, its spelling as a setting (hydra.mode=MULTIRUN), or a ready-made sweep (sweep=<name>, whose config sets
    that mode) unless hydra.mode=RUN makes it one run (a sweep job resumed on its own)."""
    if {"-m", "--multirun"} & set(arguments):
        return True
    words = [a.lstrip("+").lower().replace('"', "").replace("'", "") for a in arguments]
    if "hydra.mode=run" in words:
        return False
    ready_made = any(word.startswith("sweep=") and word not in ("sweep=", "sweep=null") for word in words)
    return ready_made or "hydra.mode=multirun" in words


def _quoted_argument(argument: str, sweeping: bool) -> str:
    key, equals, value = argument.partition("=")
    bare_key = key.lstrip("+~")
    is_path = bare_key in PATH_KEYS or bare_key.startswith("paths.")
    escaped = "\\" in value and not BACKSLASH_SEPARATES
    typed_as_syntax = value[:1] in ("'", '"') or "${" in value or escaped or SWEEP_FUNCTION.fullmatch(value)
    if not equals or not is_path or typed_as_syntax:
        return argument
    if value.startswith("[") and value.endswith("]"):  # a list of paths (predict's inputs)
        return f"{key}=[{','.join(_list_elements(value[1:-1]))}]"
    # Hydra's own folders take one path even in a sweep (Hydra sweeps no hydra.* setting): a comma is part of it.
    paths = _sweep_values(value) if sweeping and not bare_key.startswith("hydra.") else [value]
    return f"{key}={','.join(quoted_path(path) for path in paths)}"


def quoted_path(path: str) -> str:
    """`path` as Hydra's override grammar must read it: quoted where needed, a leading `~` expanded."""
    path = os.path.expanduser(path)
    # Hydra would drop spaces at either end, and read a folder named 2024 as a number.
    plain = HYDRA_UNQUOTED.fullmatch(path) and path == path.strip() and not reads_as_number(path)
    if plain:
        return path
    # In quotes Hydra reads backslashes before a quote as escapes: those are doubled (a Windows folder's last one,
    # D:\data\ before the closing quote), and a quote in a name is escaped.
    escaped = re.sub(r'(\\+)\Z', r"\1\1", re.sub(r'(\\*)"', r'\1\1\\"', path))
    return f'"{escaped}"'


def reads_as_number(word: str) -> bool:
    """Whether Hydra's grammar would read `word` as a number (2024, 1e3, inf, nan) rather than as text."""
    try:
        float(word)
    except ValueError:
        return False
    return True


def _list_elements(inner: str) -> list[str]:
    """The elements of a typed list, each as Hydra must read it: one quoted as typed is kept as it is; the others are
    quoted where needed, commas inside a file's name kept (as for a sweep's values)."""
    elements, unquoted, rest = [], [], inner
    while rest:
        rest = rest.lstrip(" ")
        if rest[:1] in ("'", '"'):
            end = next((i for i in range(1, len(rest)) if rest[i] == rest[0] and rest[i - 1] != "\\"), len(rest) - 1)
            elements += [quoted_path(path.strip()) for path in _sweep_values(",".join(unquoted))] if unquoted else []
            elements.append(rest[: end + 1])
            unquoted, rest = [], rest[end + 1 :].lstrip(" ").removeprefix(",")
        else:
            part, _, rest = rest.partition(",")
            unquoted.append(part)
    elements += [quoted_path(path.strip()) for path in _sweep_values(",".join(unquoted))] if unquoted else []
    return elements


def _sweep_values(value: str) -> list[str]:
    """The paths of a comma-separated value (a multirun's values, a list's elements): from each part on, the shortest
    run of parts that names an existing file or folder (a sweep job's folder name holds commas), else the part alone."""
    parts, paths, start = value.split(","), [], 0
    while start < len(parts):
        end = next((end for end in range(start + 1, len(parts) + 1)
                    if Path(",".join(parts[start:end])).expanduser().exists()), start + 1)
        paths.append(",".join(parts[start:end]))
        start = end
    return paths
