"""Optimizers and schedulers built from plain config."""

from __future__ import annotations

import logging

import pytest
import torch

from src.errors import UserInputError
from src.models.optim import build_optimizer, build_scheduler
from src.models.optim_config import (
    OPTIMIZERS,
    SCHEDULERS,
    check_momentum_is_used,
    check_optimizer_config,
    check_scheduler_config,
)


def params():
    return [torch.nn.Parameter(torch.zeros(3))]


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_each_optimizer_builds_with_the_configured_lr(name):
    optimizer = build_optimizer(params(), {"name": name, "lr": 0.01, "weight_decay": 1e-4})
    assert optimizer.param_groups[0]["lr"] == 0.01
    assert optimizer.param_groups[0]["weight_decay"] == 1e-4
    # AdamW's decoupled weight decay is another regularizer than Adam's L2 penalty: the class must be the one named.
    assert type(optimizer) is {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[name]


def test_every_optimizer_setting_reaches_torch():
    adam = build_optimizer(params(), {"name": "adamw", "lr": 0.01, "betas": [0.8, 0.9]})
    assert adam.defaults["betas"] == (0.8, 0.9)
    sgd = build_optimizer(params(), {"name": "sgd", "lr": 0.05, "momentum": 0.8, "nesterov": True})
    assert (sgd.defaults["momentum"], sgd.defaults["nesterov"]) == (0.8, True)


def scheduled_lrs(scheduler: dict, steps: int = 100, lr: float = 0.1) -> list[float]:
    optimizer = build_optimizer(params(), {"name": "sgd", "lr": lr})
    config = build_scheduler(optimizer, scheduler, total_steps=steps)
    lrs = [optimizer.param_groups[0]["lr"]]
    for _ in range(steps - 1):
        optimizer.step()
        config["scheduler"].step()
        lrs.append(optimizer.param_groups[0]["lr"])
    return lrs


def test_every_scheduler_setting_reaches_torch(caplog):
    onecycle = scheduled_lrs({"name": "onecycle", "pct_start": 0.25, "div_factor": 10.0})
    assert onecycle.index(max(onecycle)) == 24  # the peak after a quarter of the 100 steps (torch's default: 30%)
    assert onecycle[0] == pytest.approx(0.01)  # starts at lr / div_factor
    cosine = scheduled_lrs({"name": "cosine", "warmup_steps": 0, "min_lr": 0.02})
    assert min(cosine) == pytest.approx(0.02, abs=1e-3) and cosine[0] == pytest.approx(0.1)
    ends = scheduled_lrs({"name": "onecycle", "div_factor": 10.0, "final_div_factor": 100.0})
    assert ends[-1] == pytest.approx(0.1 / 10 / 100, rel=1e-3)  # lr / div_factor / final_div_factor
    warmed = scheduled_lrs({"name": "cosine", "warmup_steps": 20, "min_lr": 0.02})
    assert warmed[0] == pytest.approx(0.1 * 1e-3) and max(warmed) == pytest.approx(0.1, rel=1e-3)
    assert warmed[-1] == pytest.approx(0.02, abs=1e-3)  # the cosine takes the steps after the warm-up
    # A warm-up longer than the run is cut to it; the scheduler steps once per training step, the last one included.
    optimizer = build_optimizer(params(), {"name": "sgd", "lr": 0.1})
    with caplog.at_level(logging.WARNING):
        longer = build_scheduler(optimizer, {"name": "cosine", "warmup_steps": 500, "min_lr": 0.0}, total_steps=100)
    assert ("model.scheduler.warmup_steps=500 is not shorter than this run's 100 training steps: the learning rate warms "
            "up for 99 of them and falls to min_lr in the last one.") in caplog.text
    for _ in range(100):
        optimizer.step()
        longer["scheduler"].step()  # the cosine after it had no step left: a division by zero
    assert 0 <= optimizer.param_groups[0]["lr"] <= 0.1
    with pytest.raises(UserInputError, match="model.scheduler.name=onecycle needs at least one training step"):
        build_scheduler(build_optimizer(params(), {"name": "sgd", "lr": 0.1}), {"name": "onecycle"}, total_steps=0)


@pytest.mark.parametrize("config", [{"name": "adam", "lr": 0}, {"name": "sgd", "lr": -1.0}, {"name": "adam"}])
def test_non_positive_or_missing_lr_is_a_clear_error(config):
    with pytest.raises(UserInputError, match="model.optimizer.lr"):
        build_optimizer(params(), config)


def test_unknown_optimizer_lists_the_choices():
    with pytest.raises(UserInputError, match="model.optimizer.name=rmsprop is unknown: choose one of adam, adamw, sgd"):
        build_optimizer(params(), {"name": "rmsprop", "lr": 0.1})


@pytest.mark.parametrize("name", SCHEDULERS)
def test_schedulers_run_their_whole_course(name):
    optimizer = build_optimizer(params(), {"name": "sgd", "lr": 0.1})
    config = build_scheduler(optimizer, {"name": name, "warmup_steps": 5}, total_steps=50)
    if name == "none":
        assert config is None
        return
    assert config["interval"] == "step"
    lrs = []
    for _ in range(50):
        optimizer.step()
        config["scheduler"].step()
        lrs.append(optimizer.param_groups[0]["lr"])
    assert max(lrs) == pytest.approx(0.1, rel=1e-3)  # peaks at the configured lr
    assert lrs[-1] < 0.01  # and anneals to near zero


def test_unknown_scheduler_lists_the_choices():
    optimizer = build_optimizer(params(), {"name": "sgd", "lr": 0.1})
    with pytest.raises(UserInputError, match="choose one of none, onecycle, cosine"):
        build_scheduler(optimizer, {"name": "step"}, total_steps=10)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_biases_and_batch_norm_can_be_exempt_from_weight_decay(name):
    from src.models.networks import cnn_network

    net = cnn_network([8, 16], 3, 1, 32, 0.0, True)
    matrices = {id(p) for p in net.parameters() if p.ndim > 1}
    config = {"name": name, "lr": 0.01, "weight_decay": 0.05, "decay_norm_and_bias": False}
    groups = build_optimizer(net.parameters(), config).param_groups
    assert [group["weight_decay"] for group in groups] == [0.05, 0.0]
    assert {id(p) for p in groups[0]["params"]} == matrices
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(list(net.parameters()))
    assert all(p.ndim == 1 for p in groups[1]["params"]) and groups[1]["params"]  # biases, BN scales and shifts

    (everything,) = build_optimizer(net.parameters(), {**config, "decay_norm_and_bias": True}).param_groups
    assert everything["weight_decay"] == 0.05 and len(everything["params"]) == len(list(net.parameters()))
    with pytest.raises(UserInputError, match="decay_norm_and_bias=no is invalid"):
        build_optimizer(net.parameters(), {**config, "decay_norm_and_bias": "no"})


@pytest.mark.parametrize("config, message", [
    ({"name": "adam", "lr": 1e-3, "weight_decy": 0.1}, "model.optimizer.weight_decy is not a setting of model.optimizer"),
    ({"name": "adam", "lr": 1e-3, "weight_decay": -1}, "model.optimizer.weight_decay=-1 is invalid: it must be a finite number >= 0"),
    ({"name": "adamw", "lr": 1e-3, "weight_decay": float("inf")}, "model.optimizer.weight_decay=inf is invalid"),
    ({"name": "adamw", "lr": 1e-3, "weight_decay": 10**400}, "model.optimizer.weight_decay=1000.* is invalid"),  # no float
    ({"name": "adam", "lr": 1e-3, "betas": [0.9]}, "model.optimizer.betas=[0.9] is invalid"),
    ({"name": "sgd", "lr": 0.1, "momentum": 0}, "set model.optimizer.nesterov=false"),
    ({"name": "adam", "lr": 1e-3, "betas": [0.9, 1.0]}, "is invalid: it must be a pair [beta1, beta2] of numbers in [0, 1"),
    ({"name": "sgd", "lr": 0.1, "momentum": 1}, "model.optimizer.momentum=1 is invalid: it must be a number in [0, 1"),
    ({"name": "Adam", "lr": 1e-3}, "model.optimizer.name=Adam is unknown: choose one of adam, adamw, sgd"),
    ({"name": "sgd", "lr": 0.1, "nesterov": "yes"}, "model.optimizer.nesterov=yes is invalid: it must be true or false"),
])
def test_bad_optimizer_settings_are_clear_errors(config, message):
    with pytest.raises(UserInputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        check_optimizer_config(config)


@pytest.mark.parametrize("config, message", [
    ({"name": "onecycle", "pct_start": 1.5}, "model.scheduler.pct_start=1.5 is invalid: it must be a number in \\(0, 1\\)"),
    ({"name": "onecycle", "pct_start": 0}, "model.scheduler.pct_start=0 is invalid: it must be a number in \\(0, 1\\)"),
    ({"name": "cosine", "warmup_steps": -5}, "model.scheduler.warmup_steps=-5 is invalid: it must be a whole number >= 0"),
    ({"name": "cosine", "min_lr": -0.1}, "model.scheduler.min_lr=-0.1 is invalid"),
    ({"name": "onecycle", "pct_strat": 0.3}, "model.scheduler.pct_strat is not a setting of model.scheduler"),
    ({"name": "onecycle", "div_factor": 0}, "model.scheduler.div_factor=0 is invalid: it must be a finite number >= 1"),
    # Below 1, onecycle started 10 times above its peak, or ended 4 times above it, without a word.
    ({"name": "onecycle", "div_factor": 0.1}, "model.scheduler.div_factor=0.1 is invalid: it must be a finite number >= 1 "
                                              "\\(it divides lr for the start\\)"),
    ({"name": "onecycle", "final_div_factor": 0.01}, "model.scheduler.final_div_factor=0.01 is invalid with "
                                                     "div_factor=25.0: OneCycle would end at lr / 0.25, above its peak lr. "
                                                     "It must be at least 1/div_factor \\(0.04\\)."),
    ({"name": "onecycle", "final_div_factor": float("inf")}, "model.scheduler.final_div_factor=inf is invalid"),
    ({"name": "cosine", "min_lr": float("nan")}, "model.scheduler.min_lr=nan is invalid"),
    # Names as written: the learning-rate monitor and the HParams table compare them so too.
    ({"name": "OneCycle"}, "model.scheduler.name=OneCycle is unknown: choose one of none, onecycle, cosine"),
    ({"name": None}, "model.scheduler.name=None is unknown"),
    ({"name": "onecycle", "cycle_momentum": "no"}, "model.scheduler.cycle_momentum=no is invalid: it must be true or false"),
])
def test_bad_scheduler_settings_are_clear_errors(config, message):
    with pytest.raises(UserInputError, match=message):
        check_scheduler_config(config)


def test_a_onecycle_end_above_its_start_but_below_its_peak_is_allowed():
    lrs = scheduled_lrs({"name": "onecycle", "div_factor": 25.0, "final_div_factor": 0.5})
    assert lrs[0] == pytest.approx(0.1 / 25) and lrs[-1] == pytest.approx(0.1 / 12.5, rel=1e-2) and max(lrs) <= 0.1


def test_a_cosine_min_lr_above_the_learning_rate_is_refused():
    """The schedule climbed from lr to min_lr (0.003 to 0.5: a test loss of 52), without a word."""
    message = (r"model.scheduler.min_lr=0.5 is invalid with model.optimizer.lr=0.003: the cosine schedule falls from lr "
               r"to min_lr, so it must be at most lr.")
    with pytest.raises(UserInputError, match=message):
        check_scheduler_config({"name": "cosine", "min_lr": 0.5}, lr=0.003)
    with pytest.raises(UserInputError, match=message):
        build_scheduler(build_optimizer(params(), {"name": "adam", "lr": 0.003}), {"name": "cosine", "min_lr": 0.5}, 10)
    check_scheduler_config({"name": "cosine", "min_lr": 0.003}, lr=0.003)
    check_scheduler_config({"name": "onecycle", "min_lr": 0.5}, lr=0.003)  # cosine's setting, ignored by onecycle


def test_a_setting_of_another_choice_is_accepted_so_one_config_can_sweep_over_names():
    """cnn_sgd keeps model=cnn's OneCycle pct_start under its cosine scheduler; adam ignores SGD's momentum."""
    check_scheduler_config({"name": "cosine", "pct_start": 0.25, "warmup_steps": 200})
    optimizer = build_optimizer(params(), {"name": "adam", "lr": 1e-3, "momentum": 0.9, "nesterov": True})
    assert isinstance(optimizer, torch.optim.Adam)
    check_optimizer_config({"name": "adam", "lr": 1e-3, "momentum": 0})  # SGD's nesterov check is SGD's alone


def test_a_onecycle_warm_up_of_exactly_one_step_is_a_clear_error():
    """torch's OneCycleLR divides by (warm-up steps - 1): 4 steps at pct_start=0.25 was a ZeroDivisionError."""
    optimizer = build_optimizer(params(), {"name": "adam", "lr": 0.01})
    with pytest.raises(UserInputError, match="pct_start=0.25 and 4 training steps warms up for exactly one step"):
        build_scheduler(optimizer, {"name": "onecycle", "pct_start": 0.25}, total_steps=4)
    for total_steps in (3, 8):  # shorter or longer warm-ups are fine
        scheduler = build_scheduler(optimizer, {"name": "onecycle", "pct_start": 0.25}, total_steps=total_steps)["scheduler"]
        for _ in range(total_steps):
            optimizer.step()
            scheduler.step()


def momenta(optimizer_config: dict, scheduler_config: dict, steps: int = 20) -> list[float]:
    """SGD's momentum, or Adam's beta1, at each step of a schedule."""
    optimizer = build_optimizer(params(), {"lr": 0.1, **optimizer_config})
    scheduler = build_scheduler(optimizer, scheduler_config, total_steps=steps)["scheduler"]
    key = "momentum" if optimizer_config["name"] == "sgd" else "betas"
    seen = []
    for _ in range(steps):
        value = optimizer.param_groups[0][key]
        seen.append(value if key == "momentum" else value[0])
        optimizer.step()
        scheduler.step()
    return seen


@pytest.mark.parametrize("optimizer", [{"name": "sgd", "momentum": 0.0, "nesterov": False}, {"name": "adam", "betas": [0.5, 0.99]}])
def test_onecycle_keeps_the_momentum_given_only_when_told_to(optimizer):
    """torch's OneCycleLR sets the momentum (beta1) at every step; with momentum 0 SGD trained with 0.85-0.95 all the
    same, and the HParams row said 0."""
    key, value = ("momentum", 0.0) if optimizer["name"] == "sgd" else ("betas", [0.5, 0.99])
    with pytest.raises(UserInputError, match=rf"model.optimizer.{key}=.* has no effect with model.scheduler.name=onecycle.*"
                                             r"Add \+\+model.scheduler.cycle_momentum=false to keep yours throughout"):
        check_momentum_is_used(optimizer, {"name": "onecycle"})
    kept = {"name": "onecycle", "cycle_momentum": False}
    check_momentum_is_used(optimizer, kept)
    assert set(momenta(optimizer, kept)) == {0.0 if key == "momentum" else 0.5}
    cycled = momenta({**optimizer, key: 0.9 if key == "momentum" else [0.9, 0.99]}, {"name": "onecycle"})
    assert cycled[0] == pytest.approx(0.95) and min(cycled) == pytest.approx(0.85, abs=0.01)  # the recipes' schedule
    check_momentum_is_used(optimizer, {"name": "cosine"})  # schedules that leave the momentum alone
    check_momentum_is_used(optimizer, {"name": "none"})
