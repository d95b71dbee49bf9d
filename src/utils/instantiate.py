"""Build lists of callbacks and loggers from config groups whose entries are `{name: {_target_: ...}}`."""

from __future__ import annotations

import inspect
import re
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig

from src.errors import ReportedError, UserInputError


def build(node: DictConfig, refused_by: tuple[type[Exception], ...] = (), **kwargs: Any) -> Any:
    """hydra.utils.instantiate, but our own clear errors from a constructor reach the user unwrapped, and so do the
    constructor's own `refused_by` errors, as one line naming the group."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, ReportedError):
            raise err.__cause__ from None
        unknown = re.search(r"unexpected keyword argument '(\w+)'", str(err.__cause__))
        if isinstance(err.__cause__, TypeError) and unknown:  # a typo in an appended key: +model.dropuot=0.1
            raise not_a_setting(node, unknown.group(1)) from err
        if isinstance(err.__cause__, refused_by):
            group = node._get_full_key(None) or "the config"
            reason = " ".join(str(err.__cause__).split())
            raise UserInputError(f"{group}: {node._target_} refused these settings: {reason}") from err
        raise


def build_group(cfg: DictConfig, group: str, example: str) -> Any:
    """The object a top-level group's config (model, data) describes, with plain dicts and lists for its constructor
    (what checkpoints then store); refused in one line when the config names no class: Lightning would fail later,
    with a traceback, on the dict it would get instead."""
    node = cfg.get(group)
    if not isinstance(node, DictConfig) or "_target_" not in node:
        raise UserInputError(f"{group} has no _target_: its config must name the class to build, e.g. "
                             f"`_target_: {example}`.")
    return build(node, _convert_="all")


def takes_setting(node: DictConfig, name: str) -> bool:
    """Whether the class `node` builds has a constructor argument `name` (or takes any keyword); True when `node` names
    no class that can be found (that is reported when it is built)."""
    try:
        parameters = inspect.signature(get_class(node._target_)).parameters.values()
    except Exception:
        return True
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in parameters)


def not_a_setting(node: DictConfig, name: str) -> UserInputError:
    group = node._get_full_key(None) or "the config"
    settings = [p for p in inspect.signature(get_class(node._target_)).parameters if p not in ("self", "args", "kwargs")]
    recipe = _experiment_setting(group, name)
    if recipe:  # experiment=fast model=mlp: the recipe's CNN sizes land on the MLP
        experiment, own_option = recipe
        return UserInputError(f"{group}.{name} is not a setting of {group} ({node._target_}): experiment={experiment} "
                              f"sets it, a recipe for {f'{group}={own_option}' if own_option else f'another {group}'}. "
                              f"Leave out the {group} override, or the experiment.")
    return UserInputError(f"{group}.{name} is not a setting of {group} ({node._target_}), a typo? Its settings are: "
                          f"{', '.join(settings)}.")


def _experiment_setting(group: str, name: str) -> tuple[str, str | None] | None:
    """(the chosen experiment, the `group` option it selects) if the experiment's file sets `group.name`; None
    otherwise, or when composed without @hydra.main."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from src import CONFIG_DIR

    experiment = HydraConfig.get().runtime.choices.get("experiment") if HydraConfig.initialized() else None
    path = CONFIG_DIR / "experiment" / f"{experiment}.yaml"
    if not isinstance(experiment, str) or not path.is_file():
        return None
    recipe = OmegaConf.load(path)
    if OmegaConf.select(recipe, f"{group}.{name}", default=None) is None:
        return None
    key = f"override /{group}"
    chosen = [entry[key] for entry in recipe.get("defaults", []) if isinstance(entry, DictConfig) and key in entry]
    return experiment, chosen[0] if chosen else None


def instantiate_entries(group: DictConfig | None, group_name: str, kind: type | None = None) -> list[Any]:
    """One object per entry, each an instance of `kind` when given; an entry set to null is deliberately disabled and
    left out. A value the class's constructor refuses (Lightning's callbacks check theirs) is one line."""
    from pytorch_lightning.utilities.exceptions import MisconfigurationException

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
        built = build(entry, refused_by=(MisconfigurationException, ValueError, TypeError))
        if kind is not None and not isinstance(built, kind):
            raise UserInputError(f"{group_name}.{name}: {entry._target_} is not a Lightning {kind.__name__}, so "
                                 f"`{group_name}` cannot take it.")
        objects.append(built)
    return objects
