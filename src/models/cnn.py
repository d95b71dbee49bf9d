from __future__ import annotations

from torch import nn

from src.models.classifier import NUM_CLASSES, DigitClassifier


def conv_block(in_channels: int, out_channels: int, kernel_size: int, batch_norm: bool) -> nn.Sequential:
    """Conv -> [BatchNorm] -> ReLU -> 2×2 max-pool: each block halves the resolution (28 -> 14 -> 7 -> 3)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=not batch_norm),
        nn.BatchNorm2d(out_channels) if batch_norm else nn.Identity(),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class CNN(DigitClassifier):
    """Small convnet: one conv block per entry of `channels`, pooling from the first block on, then a
    hidden fully connected layer. Pooling early keeps most convolutions at 14×14 and below, which is
    what makes it fast on a CPU."""

    def __init__(
        self,
        optimizer: dict,
        scheduler: dict | None = None,
        channels: list[int] = (32, 64, 128),
        kernel_size: int = 3,
        hidden_size: int = 256,
        dropout: float = 0.25,
        batch_norm: bool = True,
    ) -> None:
        super().__init__(optimizer, scheduler)
        blocks, in_channels, side = [], 1, 28
        for out_channels in channels:
            blocks.append(conv_block(in_channels, out_channels, kernel_size, batch_norm))
            in_channels, side = out_channels, side // 2
        self.net = nn.Sequential(
            *blocks,
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(in_channels * side * side, hidden_size, bias=not batch_norm),
            nn.BatchNorm1d(hidden_size) if batch_norm else nn.Identity(),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden_size, NUM_CLASSES),
        )
