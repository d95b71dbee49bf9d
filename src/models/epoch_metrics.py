"""The classifier's metrics: an epoch's mean loss per image and accuracy as three running sums, and the best validation
accuracy; both keep float32 states when the module is converted to 16 bits."""

from __future__ import annotations

import torch
from torchmetrics import MaxMetric, Metric


class KeepsDtype:
    """A torchmetrics Metric whose floating states keep their dtype when the module is converted with `.to(dtype)`
    (Lightning's `trainer.precision=bf16-true` and `16-true` do), as torchmetrics keeps them for `.half()` and the
    like: a bfloat16 sum of an epoch's losses stops growing at a few thousand, and a bfloat16 accuracy moves in steps of
    0.004 near 99%. Nor are they converted there and back, which rounded the sums a resume had loaded. `set_dtype`
    still converts them."""

    def _apply(self, fn, *args, **kwargs):
        if self._dtype_convert:  # set_dtype: a conversion asked of the metric itself
            return super()._apply(fn, *args, **kwargs)
        dtype = self.dtype
        before = {name: (default, getattr(self, name)) for name, default in self._defaults.items()
                  if isinstance(default, torch.Tensor) and default.is_floating_point()}
        metric = super()._apply(fn, *args, **kwargs)
        metric._dtype = dtype  # what update() casts its inputs to
        # A state fn converted is taken from before, only moved: converted back, it would come back rounded to 16 bits
        # (Lightning converts the module after loading a checkpoint, whose sums a mid-epoch resume continues).
        for name, (default, state) in before.items():
            if metric._defaults[name].dtype != default.dtype:
                metric._defaults[name] = default.to(metric._defaults[name].device)
            converted = getattr(metric, name)
            if converted.dtype != state.dtype:
                setattr(metric, name, state.to(converted.device))
        return metric


class BestAccuracy(KeepsDtype, MaxMetric):
    """The best validation accuracy so far."""


class LossAndAccuracy(KeepsDtype, Metric):
    """`update(loss, logits, labels)` per batch (loss: the batch's mean), `compute()` -> (mean loss per image,
    accuracy) over every image since the last `reset()`, summed across ranks.

    One metric for both, updated with six tensor operations in 18 µs on one CPU thread (batch 128). torchmetrics'
    MeanMetric and MulticlassAccuracy took 21 operations and 75 µs; on a GPU, where a small network's step is the
    host's Python and kernel launches, each operation is one more launch.
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("loss_sum", torch.zeros(()), dist_reduce_fx="sum")
        self.add_state("correct", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("images", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        count = len(labels)
        self.loss_sum.add_(loss.detach(), alpha=count)
        self.correct.add_((logits.detach().argmax(dim=1) == labels).sum())
        self.images.add_(count)

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.loss_sum / self.images, self.correct / self.images
