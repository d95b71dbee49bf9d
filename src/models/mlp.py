from __future__ import annotations

from torch import nn

from src.models.classifier import NUM_CLASSES, DigitClassifier


class MLP(DigitClassifier):
    """Fully connected: flatten, then Linear -> [BatchNorm] -> ReLU -> Dropout per hidden layer."""

    def __init__(
        self,
        optimizer: dict,
        scheduler: dict | None = None,
        hidden_sizes: list[int] = (1024, 1024),
        dropout: float = 0.2,
        batch_norm: bool = True,
    ) -> None:
        super().__init__(optimizer, scheduler)
        layers: list[nn.Module] = [nn.Flatten()]
        width = 28 * 28
        for size in hidden_sizes:
            layers.append(nn.Linear(width, size, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(size))
            layers += [nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, NUM_CLASSES))
        self.net = nn.Sequential(*layers)
