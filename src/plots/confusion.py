from __future__ import annotations

import torch
from matplotlib.figure import Figure


def confusion_matrix_figure(confusion: torch.Tensor, title: str) -> Figure:
    """Rows: true digit, columns: predicted. Cells show counts; colour is the row-normalized rate, so
    the errors stand out instead of the diagonal's large counts."""
    counts = confusion.detach().cpu().long()
    rates = counts.float() / counts.sum(dim=1, keepdim=True).clamp(min=1)
    off_diagonal = rates.clone().fill_diagonal_(0)
    accuracy = counts.diag().sum().item() / max(counts.sum().item(), 1)

    figure = Figure(figsize=(6.4, 5.6), layout="constrained")
    ax = figure.subplots()
    vmax = max(off_diagonal.max().item(), 1e-3)
    image = ax.imshow(off_diagonal.numpy(), cmap="Reds", vmin=0, vmax=vmax)
    figure.colorbar(image, ax=ax, label="share of the true digit's images (off-diagonal)")
    size = counts.shape[0]
    for true in range(size):
        for predicted in range(size):
            count = counts[true, predicted].item()
            if count:
                on_diagonal = true == predicted
                # White on the dark cells: the largest error is the darkest, and its count the one to read.
                color = "tab:green" if on_diagonal else "white" if off_diagonal[true, predicted] > vmax / 2 else "black"
                ax.text(predicted, true, str(count), ha="center", va="center", fontsize=7, color=color,
                        fontweight="bold" if on_diagonal else None)
    ax.set_xticks(range(size))
    images = counts.sum(dim=1)
    per_class = counts.diag().float() / images.clamp(min=1)
    labels = [f"{digit}  ({acc:.1%})" if n else f"{digit}  (no images)"
              for digit, (acc, n) in enumerate(zip(per_class.tolist(), images.tolist()))]
    ax.set_yticks(range(size), labels)
    ax.set_xlabel("predicted digit")
    ax.set_ylabel("true digit  (its accuracy)")
    ax.set_title(f"{title}: {accuracy:.2%} of {counts.sum().item()} correct")
    return figure
