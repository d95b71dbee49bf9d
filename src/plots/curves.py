from __future__ import annotations

from collections.abc import Sequence

from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter, MaxNLocator


def learning_curves_figure(history: Sequence[dict[str, float]], label_smoothing: float = 0.0) -> Figure:
    """Loss and accuracy per epoch, train vs validation. `history`: one dict per epoch with keys
    `epoch`, `train/loss`, `val/loss`, `train/acc`, `val/acc` (missing keys are skipped). `label_smoothing`: the
    training loss's, named in its legend: it keeps that loss well above the validation loss by design."""
    figure = Figure(figsize=(10, 4), layout="constrained")
    loss_ax, acc_ax = figure.subplots(1, 2)
    epochs = [row["epoch"] for row in history]
    for ax, metric in ((loss_ax, "loss"), (acc_ax, "acc")):
        for split, style in (("train", "o-"), ("val", "s-")):
            key = f"{split}/{metric}"
            points = [(e, row[key]) for e, row in zip(epochs, history) if key in row]
            if points:
                smoothed = split == "train" and metric == "loss" and label_smoothing > 0
                ax.plot(*zip(*points), style, label=f"train (label smoothing {label_smoothing:g})" if smoothed else split)
        ax.set_xlabel("epoch")
        if len(set(epochs)) == 1:
            ax.set_xticks(epochs)  # the locator would otherwise label one point's padding with fractions
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title("cross-entropy loss" if metric == "loss" else "accuracy")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # nothing logged for this metric (a run stopped early): no legend
            ax.legend()
    loss_ax.set_yscale("log")
    loss_ax.set_ylabel("log scale")
    # Plain numbers (0.6, 1.5) rather than matplotlib's 6×10^-1 on a log axis; minor ticks labelled only where the
    # losses span less than a decade or two, as matplotlib decides for its own labels.
    loss_ax.yaxis.set_major_formatter(_PlainLogFormatter(labelOnlyBase=False))
    loss_ax.yaxis.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.4)))
    val_points = [(row["epoch"], row["val/acc"]) for row in history if "val/acc" in row]
    if val_points:
        best_epoch, best_acc = max(val_points, key=lambda point: point[1])
        # In the lower right corner, which accuracy curves (rising from the left) leave empty: a note beside the
        # point itself covered the validation curve leading up to it.
        acc_ax.annotate(f"best val {best_acc:.2%}", (best_epoch, best_acc), textcoords="axes fraction",
                        xytext=(0.95, 0.08), ha="right", arrowprops={"arrowstyle": "->", "alpha": 0.6})
    return figure


class _PlainLogFormatter(LogFormatter):
    """The ticks matplotlib's log formatter labels, labelled as plain numbers."""

    def __call__(self, x, pos=None) -> str:
        return f"{x:g}" if super().__call__(x, pos) else ""
