from __future__ import annotations

from collections.abc import Sequence

from src.models.classifier import DigitClassifier
from src.models.networks import cnn_network


class CNN(DigitClassifier):
    """Small convnet (src/models/networks.py): `channels` gives one conv block per entry."""

    def __init__(
        self,
        optimizer: dict,
        scheduler: dict | None = None,
        channels: Sequence[int] = (32, 64, 128),
        kernel_size: int | list[int] = 3,
        convs_per_block: int = 1,
        pool: bool = True,
        hidden_size: int = 256,
        dropout: float = 0.25,
        conv_dropout: float = 0.0,
        batch_norm: bool = True,
        label_smoothing: float = 0.0,
        compile: bool = False,
        channels_last: bool = False,
        cuda_graph: bool | str = False,
    ) -> None:
        super().__init__(optimizer, scheduler, label_smoothing=label_smoothing, compile=compile,
                         channels_last=channels_last, cuda_graph=cuda_graph)
        self.net = cnn_network(
            channels, kernel_size, convs_per_block, hidden_size, dropout, batch_norm, pool, conv_dropout
        )
