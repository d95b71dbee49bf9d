"""Optimizers and schedulers built from plain config."""

from __future__ import annotations

import pytest
import torch

from src.errors import UserInputError
from src.models.optim import OPTIMIZERS, SCHEDULERS, build_optimizer, build_scheduler


def params():
    return [torch.nn.Parameter(torch.zeros(3))]


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_each_optimizer_builds_with_the_configured_lr(name):
    optimizer = build_optimizer(params(), {"name": name, "lr": 0.01, "weight_decay": 1e-4})
    assert optimizer.param_groups[0]["lr"] == 0.01
    assert optimizer.param_groups[0]["weight_decay"] == 1e-4


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
    assert max(lrs) <= 0.1 + 1e-9 and lrs[-1] < 0.01  # peaks at the configured lr, anneals to near zero


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
    with pytest.raises(UserInputError, match="decay_norm_and_bias='no' is invalid"):
        build_optimizer(net.parameters(), {**config, "decay_norm_and_bias": "no"})
