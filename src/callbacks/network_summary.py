"""The summary printed before training, of the network alone. A classifier also holds its metrics (torchmetrics
modules: no parameters, no sizes), which filled half the rows of Lightning's summary with question marks."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from pytorch_lightning.callbacks import RichModelSummary
from pytorch_lightning.utilities.model_summary import ModelSummary
from torchmetrics import Metric

from src.models.networks import IMAGE_SIDE


class _WithoutMetrics(ModelSummary):
    def _metric_parts(self) -> set[int]:
        return {id(part) for module in self._model.modules() if isinstance(module, Metric) for part in module.modules()}

    def summarize(self):
        metric_parts = self._metric_parts()
        return {name: layer for name, layer in super().summarize().items() if id(layer._module) not in metric_parts}

    @property
    def total_training_modes(self) -> dict[str, int]:
        metric_parts = self._metric_parts()
        network = [module for module in self._model.modules() if id(module) not in metric_parts][1:]  # not the root
        modes = [module.training for module in network]
        return {"train": modes.count(True), "eval": modes.count(False)}


class NetworkSummary(RichModelSummary):
    """Lightning's rich model summary (each layer's parameters, input and output sizes and FLOPs for one image),
    without the metric objects."""

    def _summary(self, trainer, pl_module) -> ModelSummary:
        return _WithoutMetrics(pl_module, max_depth=self._max_depth)

    def on_fit_start(self, trainer, pl_module) -> None:
        with _eager_with_an_example(pl_module):
            super().on_fit_start(trainer, pl_module)


@contextmanager
def _eager_with_an_example(pl_module):
    """A compiled classifier has no example image (through the compiled network it would compile a graph for batches
    of one): the summary, which showed 0 FLOPs and no sizes then, runs one through the network uncompiled."""
    compiled = pl_module.__dict__.get("_compiled_net")
    if compiled is None or pl_module.example_input_array is not None:
        yield
        return
    del pl_module.__dict__["_compiled_net"]
    pl_module.example_input_array = torch.zeros(1, 1, IMAGE_SIDE, IMAGE_SIDE)
    try:
        yield
    finally:
        pl_module.example_input_array = None
        pl_module.__dict__["_compiled_net"] = compiled
