from __future__ import annotations

from collections.abc import Sequence

from src.models.classifier import DigitClassifier
from src.models.networks import mlp_network


class MLP(DigitClassifier):
    """Fully connected network (src/models/networks.py): one hidden layer per entry of `hidden_sizes`."""

    def __init__(
        self,
        optimizer: dict,
        scheduler: dict | None = None,
        hidden_sizes: Sequence[int] = (1024, 1024),
        dropout: float = 0.2,
        batch_norm: bool = True,
        label_smoothing: float = 0.0,
        compile: bool = False,
        channels_last: bool = False,
        cuda_graph: bool | str = False,
    ) -> None:
        super().__init__(optimizer, scheduler, label_smoothing=label_smoothing, compile=compile,
                         channels_last=channels_last, cuda_graph=cuda_graph)
        self.net = mlp_network(hidden_sizes, dropout, batch_norm)
