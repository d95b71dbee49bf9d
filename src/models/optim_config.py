"""Checks of the plain optimizer and scheduler config, without importing torch: they run before any work.

A key that no optimizer (or scheduler) knows is a typo and an error. A key that only another choice uses
(say `momentum` with adam) is ignored, so `model.optimizer.name=adam,sgd` sweeps over one config."""

from __future__ import annotations

from collections.abc import Mapping

from src.errors import UserInputError
from src.utils.command_words import override_value
from src.utils.setting_checks import is_finite_number, is_number, is_pair_of_numbers, is_whole

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("none", "onecycle", "cosine")
# What a setting left out means (the builders in optim.py, the checks below and the HParams row all read these).
OPTIMIZER_DEFAULTS = {"name": "adam", "weight_decay": 0.0, "decay_norm_and_bias": True, "betas": (0.9, 0.999),
                      "momentum": 0.9, "nesterov": True}
SCHEDULER_DEFAULTS = {"name": "none", "pct_start": 0.25, "div_factor": 25.0, "final_div_factor": 1e4,
                      "cycle_momentum": True, "warmup_steps": 0, "min_lr": 0.0}
# OneCycle's momentum (SGD's, or Adam's beta1) while it cycles: torch's defaults, falling as the lr rises.
ONECYCLE_MOMENTUM = (0.95, 0.85)
OPTIMIZER_KEYS = {"lr", *OPTIMIZER_DEFAULTS}
SCHEDULER_KEYS = set(SCHEDULER_DEFAULTS)
# The settings each choice reads (besides name, lr and weight_decay); the others are ignored (see above).
SETTINGS_READ_BY = {
    "adam": {"betas", "decay_norm_and_bias"}, "adamw": {"betas", "decay_norm_and_bias"},
    "sgd": {"momentum", "nesterov", "decay_norm_and_bias"},
    "none": set(), "onecycle": {"pct_start", "div_factor", "final_div_factor", "cycle_momentum"},
    "cosine": {"warmup_steps", "min_lr"},
}


def _require(ok: bool, key: str, value, allowed: str) -> None:
    if not ok:
        raise UserInputError(f"{key}={override_value(value)} is invalid: it must be {allowed}.")


def _check_known_keys(config: Mapping, known: set[str], group: str) -> None:
    unknown = sorted(set(config) - known)
    if unknown:
        raise UserInputError(
            f"{group}.{unknown[0]} is not a setting of {group} (a typo?): the settings are {', '.join(sorted(known))}."
        )


def optimizer_settings(config: Mapping) -> dict:
    """The optimizer config with every setting left out at its default."""
    return {**OPTIMIZER_DEFAULTS, **config}


def scheduler_settings(config: Mapping | None) -> dict:
    return {**SCHEDULER_DEFAULTS, **(config or {})}


def check_optimizer_config(config: Mapping) -> None:
    _check_known_keys(config, OPTIMIZER_KEYS, "model.optimizer")
    config = optimizer_settings(config)
    lr = config.get("lr")
    if not is_finite_number(lr) or lr <= 0:
        raise UserInputError(f"model.optimizer.lr={override_value(lr)} is invalid: "
                             "it must be a finite number > 0 (e.g. 1e-3).")
    name = str(config["name"])  # exactly: every place that reads the name compares it as written
    if name not in OPTIMIZERS:
        raise UserInputError(f"model.optimizer.name={override_value(name)} is unknown: "
                             f"choose one of {', '.join(OPTIMIZERS)}.")
    decay = config["weight_decay"]
    _require(is_finite_number(decay) and decay >= 0, "model.optimizer.weight_decay", decay, "a finite number >= 0")
    for key in ("decay_norm_and_bias", "nesterov"):
        _require(isinstance(config[key], bool), f"model.optimizer.{key}", config[key], "true or false")
    betas = config["betas"]
    _require(is_pair_of_numbers(betas) and all(0 <= b < 1 for b in betas), "model.optimizer.betas", betas,
             "a pair [beta1, beta2] of numbers in [0, 1)")
    momentum = config["momentum"]
    _require(is_number(momentum) and 0 <= momentum < 1, "model.optimizer.momentum", momentum, "a number in [0, 1)")
    if name == "sgd" and config["nesterov"] and momentum == 0:
        raise UserInputError(
            "model.optimizer.momentum=0 is invalid with nesterov=true (the default): "
            "set model.optimizer.nesterov=false for plain SGD."
        )


def check_scheduler_config(config: Mapping | None, lr: float | None = None) -> None:
    """`lr`: the optimizer's (already checked), the schedule's peak, which min_lr must not pass."""
    _check_known_keys(config or {}, SCHEDULER_KEYS, "model.scheduler")
    config = scheduler_settings(config)
    name = str(config["name"])
    if name not in SCHEDULERS:
        raise UserInputError(f"model.scheduler.name={override_value(name)} is unknown: "
                             f"choose one of {', '.join(SCHEDULERS)}.")
    pct_start = config["pct_start"]
    _require(is_number(pct_start) and 0 < pct_start < 1, "model.scheduler.pct_start", pct_start,
             "a number in (0, 1): the share of steps spent warming up")
    div, final_div = config["div_factor"], config["final_div_factor"]
    # Below 1, OneCycle would start above its peak, model.optimizer.lr.
    _require(is_finite_number(div) and div >= 1, "model.scheduler.div_factor", div,
             "a finite number >= 1 (it divides lr for the start)")
    _require(is_finite_number(final_div) and final_div > 0, "model.scheduler.final_div_factor", final_div,
             "a finite number > 0")
    if name == "onecycle" and div * final_div < 1:  # the end, lr / (div_factor × final_div_factor), above the peak
        raise UserInputError(f"model.scheduler.final_div_factor={override_value(final_div)} is invalid with "
                             f"div_factor={override_value(div)}: OneCycle would end at lr / {div * final_div:g}, above "
                             f"its peak lr. It must be at least 1/div_factor ({1 / div:g}).")
    _require(isinstance(config["cycle_momentum"], bool), "model.scheduler.cycle_momentum", config["cycle_momentum"],
             "true or false")
    warmup = config["warmup_steps"]
    _require(is_whole(warmup) and warmup >= 0,
             "model.scheduler.warmup_steps", warmup, "a whole number >= 0")
    min_lr = config["min_lr"]
    _require(is_finite_number(min_lr) and min_lr >= 0, "model.scheduler.min_lr", min_lr, "a finite number >= 0")
    if name == "cosine" and lr is not None and min_lr > lr:  # the schedule climbed from lr to min_lr, without a word
        raise UserInputError(f"model.scheduler.min_lr={override_value(min_lr)} is invalid with model.optimizer.lr="
                             f"{override_value(lr)}: the cosine schedule falls from lr to min_lr, so it must be at most "
                             "lr.")


def check_momentum_is_used(optimizer: Mapping, scheduler: Mapping | None) -> None:
    """A momentum (or Adam's beta1) other than the default would be replaced at every step by OneCycle's own cycle,
    without a word. The default, 0.9, lies within the cycle, and is what the recipes leave to it. Both configs are
    checked already."""
    optimizer, scheduler = optimizer_settings(optimizer), scheduler_settings(scheduler)
    if str(scheduler["name"]) != "onecycle" or not scheduler["cycle_momentum"]:
        return
    sgd = str(optimizer["name"]) == "sgd"
    key = "momentum" if sgd else "betas"
    momentum, default = (optimizer[key], OPTIMIZER_DEFAULTS[key]) if sgd else (optimizer[key][0], OPTIMIZER_DEFAULTS[key][0])
    if momentum == default:
        return
    setting = f"model.optimizer.{key}={override_value(optimizer[key])}" + ("" if sgd else ": its beta1")
    what = "the momentum" if sgd else "beta1 (Adam's momentum)"
    high, low = ONECYCLE_MOMENTUM
    raise UserInputError(
        f"{setting} has no effect with model.scheduler.name=onecycle, which sets "
        f"{what} itself at every step ({high} down to {low} while the learning rate rises, and back). Add "
        f"++model.scheduler.cycle_momentum=false to keep yours throughout, or choose another model.scheduler.name."
    )
