"""Exponential moving average (EMA) of the weights: validation, the checkpoints (and so the test pass,
`src.eval` and `src.predict`) all use the averaged weights; a resume restores both the raw and the averaged ones."""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import WeightAveraging
from pytorch_lightning.trainer.states import TrainerFn
from torch.optim.swa_utils import AveragedModel

from src.errors import UserInputError
from src.utils.command_words import override_value
from src.utils.setting_checks import is_number


def ema_with_warmup(decay: float) -> Callable[[list[torch.Tensor], list[torch.Tensor], torch.Tensor], None]:
    """EMA update (an AveragedModel `multi_avg_fn`) whose decay grows as min(decay, (1 + n) / (10 + n)) with the
    number n of updates so far.

    With a fixed 0.999 the average would still be 65% initial weights after one MNIST epoch (430 steps), and
    early validations would score near chance; warmed up, it follows the last ~50 steps by then and reaches
    the full `decay` after ~9,000 steps. A partial of a module-level function, not a closure: ddp_spawn pickles it.
    """
    return functools.partial(_warmed_up_update, decay=decay)


@torch.no_grad()
def _warmed_up_update(averages: list[torch.Tensor], currents: list[torch.Tensor], num_averaged: torch.Tensor,
                      decay: float) -> None:
    """All tensors of one device and dtype at once (foreach): updated one by one, a step's update of the best
    recipe's CNN took 1.8-3.1 ms on one CPU thread against 1.0 ms, and some 260 kernel launches on a GPU."""
    n = torch.as_tensor(num_averaged, dtype=torch.float32, device=averages[0].device)  # a tensor: no host sync
    weight = 1 - torch.clamp((1 + n) / (10 + n), max=decay)
    if not averages[0].is_floating_point():  # batch norm's step counters: averaged too, then rounded down
        for average, current in zip(averages, currents):
            average.copy_(average + (current - average) * weight)
        return
    differences = torch._foreach_sub(currents, averages)
    torch._foreach_mul_(differences, weight)  # a 0-dim tensor, not a Python number: no host sync on a GPU
    torch._foreach_add_(averages, differences)


@torch.no_grad()
def update_average(average: AveragedModel, model: torch.nn.Module, first: bool) -> None:
    """`average.update_parameters(model)` (buffers averaged too, by its `multi_avg_fn`) without reading its update
    counter: torch's reads `n_averaged` back from the device twice per update, and on a GPU the host then waits for
    every step to finish. `first`, counted by the caller on the host, says whether to copy instead of averaging."""
    averages = [*average.module.parameters(), *average.module.buffers()]
    currents = [*model.parameters(), *model.buffers()]
    if first:
        for averaged, current in zip(averages, currents, strict=True):
            averaged.copy_(current)
    else:
        groups: dict[tuple, tuple[list, list]] = {}  # the update runs per device and dtype, as torch's does
        for averaged, current in zip(averages, currents, strict=True):
            group = groups.setdefault((averaged.device, averaged.dtype), ([], []))
            group[0].append(averaged)
            group[1].append(current.detach().to(averaged.device))
        for (device, _), (group_averages, group_currents) in groups.items():
            average.multi_avg_fn(group_averages, group_currents, average.n_averaged.to(device))
    average.n_averaged += 1  # on the device, in place: nothing read back


class WeightEMA(WeightAveraging):
    """EMA of the weights (and batch-norm statistics), updated after every optimizer step; a range check on
    `decay`, a warm-up of the decay (`ema_with_warmup`) and four fixes to Lightning's weight averaging:

    - the average lives on the training device: Lightning builds it in `setup`, before the model is moved to
      the GPU, which would copy every weight to the host after every step;
    - `trainer.test(ckpt_path=...)` after `fit` tests the averaged weights the checkpoint holds: Lightning's
      hook would reload the raw weights saved next to them, as it does to resume training;
    - an interruption during validation, while the averaged weights are in the module, swaps them back before
      last.ckpt is saved (checkpoint callbacks run last): it would otherwise store the two the wrong way round;
    - the swaps around each validation leave the average as it was (`_swap_models`): Lightning's copied it into the
      module and back, which under bf16-true/16-true rounded the float32 average to the module's dtype each time.

    And its update (`update_average`) reads nothing back from the GPU.
    """

    def __init__(self, decay: float = 0.999) -> None:
        if not is_number(decay) or not 0.0 < decay < 1.0:
            raise UserInputError(
                f"callbacks.ema.decay={override_value(decay)} is invalid: it must be a number in (0, 1), e.g. 0.999 "
                "(an average over about 1/(1-decay) = 1000 steps)."
            )
        super().__init__(multi_avg_fn=ema_with_warmup(decay))
        self.decay = decay
        self._raw_weights: list[torch.Tensor] | None = None  # the module's own, set aside while it holds the average
        self._updates_counted: int | None = None  # the average's update counter, mirrored on the host once read

    def state_dict(self) -> dict:
        return {**super().state_dict(), "decay": self.decay}  # so a run that only tests the checkpoint can show it

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self._raw_weights is not None:  # the average is in the module
            self._swap_models(pl_module)

    @torch.no_grad()
    def _swap_models(self, pl_module: pl.LightningModule) -> None:
        """Puts the average into the module, or the module's own weights back (Lightning calls it at each
        validation's start and end). The average is only read: its float32 values cannot pass through a bf16 module
        and come back whole, so the module's own weights wait aside in their dtype instead."""
        current = [*pl_module.parameters(), *pl_module.buffers()]
        if self._raw_weights is None:
            self._raw_weights = [tensor.detach().clone() for tensor in current]
            averages = [*self._average_model.module.parameters(), *self._average_model.module.buffers()]
            for tensor, averaged in zip(current, averages, strict=True):
                tensor.copy_(averaged)  # rounded to the module's dtype: what validation uses
        else:
            for tensor, raw in zip(current, self._raw_weights, strict=True):
                tensor.copy_(raw)
            self._raw_weights = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._average_model is not None:
            # Made before trainer.precision=64-true converted the module: a float32 average rounded the float64 weights
            # at every swap for validation. In bf16-true/16-true the average stays float32, where it sums finely.
            weights = next(pl_module.parameters())
            self._average_model.to(pl_module.device, dtype=torch.promote_types(torch.float32, weights.dtype))
        self._updates_counted = None  # read at the first update, after a resumed run's average is restored

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        """Lightning's, with `update_average` for AveragedModel.update_parameters."""
        if trainer.global_step > self._latest_update_step and self.should_update(step_idx=trainer.global_step - 1):
            if self._updates_counted is None:
                self._updates_counted = int(self._average_model.n_averaged)  # read back once per fit
            update_average(self._average_model, pl_module, first=self._updates_counted == 0)
            self._updates_counted += 1
            self._latest_update_step = trainer.global_step

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        if trainer.state.fn == TrainerFn.FITTING:  # resuming: restore the raw weights and the average
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
