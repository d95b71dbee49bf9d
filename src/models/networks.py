"""The architectures as plain torch modules (images N×1×28×28 -> logits N×10), free of Lightning, so a
plain PyTorch loop (src/bench.py) can train exactly the same network."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from src.errors import UserInputError
from src.utils.command_words import counted, override_value
from src.utils.setting_checks import is_whole

NUM_CLASSES = 10
IMAGE_SIDE = 28  # input images are N×1×IMAGE_SIDE×IMAGE_SIDE


def check_sizes(key: str, value, sizes: list) -> None:
    """Refuse a layer size or count that is not a whole number >= 1, naming the setting (torch's own message
    would come later, or never: a layer of width 0 trains as a constant)."""
    if not all(is_whole(size) and size >= 1 for size in sizes):
        raise UserInputError(f"model.{key}={override_value(value)} is invalid: "
                             "sizes and counts must be whole numbers >= 1.")


def as_size_list(key: str, value, example: str = "[64,128]") -> list[int]:
    """A list setting such as model.channels=[32,64], refused as a single number or a string."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise UserInputError(f"model.{key}={override_value(value)} is invalid: "
                             f"it must be a list, e.g. model.{key}={example}.")
    sizes = list(value)
    check_sizes(key, value, sizes)
    return sizes


def mlp_network(hidden_sizes: Sequence[int], dropout: float, batch_norm: bool) -> nn.Sequential:
    """Flatten, then Linear -> [BatchNorm] -> ReLU -> Dropout per hidden layer."""
    hidden_sizes = as_size_list("hidden_sizes", hidden_sizes)
    layers: list[nn.Module] = [nn.Flatten()]
    width = IMAGE_SIDE * IMAGE_SIDE
    for size in hidden_sizes:
        layers.append(nn.Linear(width, size, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm1d(size))
        layers += [nn.ReLU(inplace=True), nn.Dropout(dropout)]
        width = size
    layers.append(nn.Linear(width, NUM_CLASSES))
    return nn.Sequential(*layers)


def conv_block(
    in_channels: int, out_channels: int, kernel_size: int, batch_norm: bool, convs: int = 1, pool: bool = True,
    dropout: float = 0.0,
) -> nn.Sequential:
    """`convs` × (Conv -> [BatchNorm] -> ReLU) -> [MaxPool] -> [Dropout]. Pooled: padded convs, and a 2×2 max-pool
    that halves the resolution (28 -> 14 -> 7 -> 3). Unpooled: unpadded convs, each shrinking the image by
    kernel_size - 1."""
    layers: list[nn.Module] = []
    for index in range(convs):
        layers += [
            nn.Conv2d(in_channels if index == 0 else out_channels, out_channels, kernel_size,
                      padding=kernel_size // 2 if pool else 0, bias=not batch_norm),
            nn.BatchNorm2d(out_channels) if batch_norm else nn.Identity(),
            nn.ReLU(inplace=True),
        ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    if dropout:  # appended last, and parameter-free: the weights' names are those of a block without it
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def cnn_network(
    channels: Sequence[int], kernel_size: int | Sequence[int], convs_per_block: int, hidden_size: int, dropout: float,
    batch_norm: bool, pool: bool = True, conv_dropout: float = 0.0,
) -> nn.Sequential:
    """Conv blocks, then a hidden fully connected layer. Pooled (the default), from the first block on: most
    convolutions run at 14×14 and below, fast on a CPU. Unpooled (An et al. 2020, "no pooling layers"):
    unpadded convolutions shrink the image instead, at several times the arithmetic. `conv_dropout` follows
    every block but the last, whose output goes through the classifier's own `dropout`."""
    channels = as_size_list("channels", channels)
    check_sizes("convs_per_block", convs_per_block, [convs_per_block])
    check_sizes("hidden_size", hidden_size, [hidden_size])
    if isinstance(kernel_size, float):
        raise UserInputError(f"model.kernel_size={override_value(kernel_size)} is invalid: "
                             "it must be a whole number >= 1, or a list "
                             "with one per block, e.g. model.kernel_size=[5,3,3].")
    kernel_sizes = ([kernel_size] * len(channels) if isinstance(kernel_size, int)
                    else as_size_list("kernel_size", kernel_size, "[5,3,3] (one per block) or 3"))
    check_sizes("kernel_size", kernel_size, kernel_sizes)
    if not channels:
        raise UserInputError("model.channels=[] is invalid: the CNN needs at least one block, "
                             "e.g. model.channels=[32,64].")
    if len(kernel_sizes) != len(channels):  # either may be the one changed: the config sets both
        raise UserInputError(
            f"model.channels={override_value(channels)} makes {counted(len(channels), 'block')}, but "
            f"model.kernel_size={override_value(kernel_size)} gives {counted(len(kernel_sizes), 'size')}: give one size "
            f"per block, or one for all (model.kernel_size={kernel_sizes[-1]})."
        )
    blocks, in_channels, side = [], 1, IMAGE_SIDE
    for index, (out_channels, size) in enumerate(zip(channels, kernel_sizes)):
        block_dropout = conv_dropout if index < len(channels) - 1 else 0.0
        blocks.append(conv_block(in_channels, out_channels, size, batch_norm, convs_per_block, pool, block_dropout))
        # Each conv adds 2 × padding and takes kernel size - 1: an even kernel grows a padded image by one pixel.
        side += convs_per_block * (2 * (size // 2 if pool else 0) - size + 1)
        in_channels, side = out_channels, side // 2 if pool else side
        if side < 1:
            raise UserInputError(
                f"model.channels={override_value(channels)} with model.kernel_size={override_value(kernel_size)} "
                f"shrinks the 28×28 image to nothing (model.pool={override_value(pool)}): use fewer blocks"
                f"{'' if pool else ' or smaller kernels'}."
            )
    return nn.Sequential(
        *blocks,
        nn.Flatten(),
        nn.Dropout(dropout),
        nn.Linear(in_channels * side * side, hidden_size, bias=not batch_norm),
        nn.BatchNorm1d(hidden_size) if batch_norm else nn.Identity(),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(hidden_size, NUM_CLASSES),
    )


# The network each classifier class builds from its same-named settings, for inference without Lightning
# (src.models.loading.load_network).
NETWORK_BUILDERS = {"src.models.cnn.CNN": cnn_network, "src.models.mlp.MLP": mlp_network}
