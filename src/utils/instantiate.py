"""Build lists of callbacks and loggers from config groups whose entries are `{name: {_target_: ...}}`."""

from __future__ import annotations

import inspect
import re
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig

from src.errors import ReportedError, UserInputError


def build(node: DictConfig, **kwargs: Any) -> Any:
    """hydra.utils.instantiate, but our own clear errors from a constructor reach the user unwrapped."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, ReportedError):
            raise err.__cause__ from None
        unknown = re.search(r"unexpected keyword argument '(\w+)'", str(err.__cause__))
        if isinstance(err.__cause__, TypeError) and unknown:  # a typo in an appended key: +model.dropuot=0.1
            raise _not_a_setting(node, unknown.group(1)) from err
        raise


def _not_a_setting(node: DictConfig, name: str) -> UserInputError:
    group = node._get_full_key(None) or "the config"
    settings = [p for p in inspect.signature(get_class(node._target_)).parameters if p not in ("self", "args", "kwargs")]
    return UserInputError(f"{group}.{name} is not a setting of {group} ({node._target_}), a typo? Its settings are: "
                          f"{', '.join(settings)}.")


def instantiate_entries(group: DictConfig | None, group_name: str) -> list[Any]:
    """One object per entry; an entry set to null is deliberately disabled and left out."""
    if not group:
        return []
    objects = []
    for name, entry in group.items():
        if entry is None:
            continue
        if not isinstance(entry, DictConfig) or "_target_" not in entry:
            raise UserInputError(
                f"{group_name}.{name} has no _target_: each entry of `{group_name}` must be a config "
                f"with a _target_ class (or null to disable it), got {entry!r}."
            )
        objects.append(build(entry))
    return objects
