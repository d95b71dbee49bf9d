"""A sheet of 28×28 digit images, each with a caption; flagged ones (e.g. wrong predictions) in red."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from matplotlib.figure import Figure


def digit_sheet(
    images: torch.Tensor,
    captions: Sequence[str],
    flagged: Sequence[bool] | None = None,
    title: str = "",
    columns: int = 8,
) -> Figure:
    """`images`: N×28×28 or N×1×28×28, any scale (each sheet is shown with the tensor's own min/max)."""
    images = images.detach().float().cpu().reshape(len(images), *images.shape[-2:])
    flagged = list(flagged) if flagged is not None else [False] * len(images)
    columns = max(1, min(columns, len(images)))
    rows = max(1, math.ceil(len(images) / columns))
    figure = Figure(figsize=(1.3 * columns, 1.5 * rows + (0.4 if title else 0)), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    low, high = (float(images.min()), float(images.max())) if len(images) else (0.0, 1.0)
    for index, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if index >= len(images):
            continue
        ax.imshow(images[index].numpy(), cmap="gray", vmin=low, vmax=high)
        # parse_math=False: captions hold file names, and matplotlib would read `$...$` in one as a formula.
        ax.set_title(captions[index], fontsize=8, color="tab:red" if flagged[index] else "black", parse_math=False)
        if flagged[index]:
            ax.add_patch(_frame(ax))
    if title:
        figure.suptitle(title, fontsize=10, parse_math=False)
    return figure


def _frame(ax):
    from matplotlib.patches import Rectangle

    # A red border in axes coordinates marks a flagged image even when printed in grey.
    return Rectangle((0, 0), 1, 1, transform=ax.transAxes, fill=False, edgecolor="tab:red", linewidth=3, clip_on=False)
