"""Optimizer and LR scheduler from plain config dicts (names, not objects, so checkpoints stay plain)."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch

from src.errors import UserInputError
from src.models.optim_config import (
    ONECYCLE_MOMENTUM,
    check_optimizer_config,
    check_scheduler_config,
    optimizer_settings,
    scheduler_settings,
)

log = logging.getLogger(__name__)


def build_optimizer(params: Iterable[torch.nn.Parameter], config: dict) -> torch.optim.Optimizer:
    """config: {name, lr, weight_decay, decay_norm_and_bias, momentum (sgd), nesterov (sgd), betas (adam/adamw)}.

    decay_norm_and_bias=false exempts every parameter with fewer than 2 dimensions (biases, batch-norm scales and
    shifts) from weight decay, which then only shrinks the weight matrices and convolution kernels.
    """
    check_optimizer_config(config)
    config = optimizer_settings(config)
    name, lr, weight_decay = str(config["name"]), config["lr"], config["weight_decay"]
    if not config["decay_norm_and_bias"]:
        params = list(params)
        params = [{"params": [p for p in params if p.ndim > 1]},
                  {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    if name in ("adam", "adamw"):
        optimizer_class = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        betas = tuple(config["betas"])
        return optimizer_class(params, lr=lr, weight_decay=weight_decay, betas=betas)
    return torch.optim.SGD(
        params,
        lr=lr,
        weight_decay=weight_decay,
        momentum=config["momentum"],
        nesterov=config["nesterov"],
    )


def build_scheduler(optimizer: torch.optim.Optimizer, config: dict | None, total_steps: int) -> dict | None:
    """A Lightning `lr_scheduler` dict stepping every batch, or None for a constant LR.

    config: {name: none|onecycle|cosine, pct_start, div_factor, final_div_factor, cycle_momentum (onecycle),
    warmup_steps, min_lr (cosine)}.
    """
    base_lr = optimizer.param_groups[0]["lr"]
    check_scheduler_config(config, lr=base_lr)
    config = scheduler_settings(config)
    name = str(config["name"])
    if name == "none":
        return None
    if total_steps < 1:
        raise UserInputError(f"model.scheduler.name={name} needs at least one training step.")
    if name == "onecycle":
        pct_start = config["pct_start"]
        if float(pct_start * total_steps) == 1.0:  # torch divides by (warm-up steps - 1): ZeroDivisionError
            raise UserInputError(
                f"model.scheduler.name=onecycle with pct_start={pct_start} and {total_steps} training steps warms up "
                "for exactly one step, which torch's OneCycleLR cannot do. Train longer, change "
                "model.scheduler.pct_start, or set model.scheduler.name=none."
            )
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=base_lr,
            total_steps=total_steps,
            pct_start=pct_start,
            div_factor=config["div_factor"],
            final_div_factor=config["final_div_factor"],
            cycle_momentum=config["cycle_momentum"],
            max_momentum=ONECYCLE_MOMENTUM[0],
            base_momentum=ONECYCLE_MOMENTUM[1],
        )
    else:  # cosine
        warmup = min(int(config["warmup_steps"]), total_steps - 1)
        if warmup < config["warmup_steps"]:
            log.warning("model.scheduler.warmup_steps=%d is not shorter than this run's %d training steps: the learning "
                        "rate warms up for %d of them and falls to min_lr in the last one.", config["warmup_steps"],
                        total_steps, warmup)
        min_lr = config["min_lr"]
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps - warmup, eta_min=min_lr)
        if warmup > 0:
            ramp = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1e-3, total_iters=warmup)
            scheduler = torch.optim.lr_scheduler.SequentialLR(optimizer, [ramp, cosine], milestones=[warmup])
        else:
            scheduler = cosine
    return {"scheduler": scheduler, "interval": "step", "name": "lr"}  # the chart's tag, whatever the optimizer
