"""The figures' content, checked on the matplotlib objects rather than on pixels."""

import torch

from src.plots.confusion import confusion_matrix_figure
from src.plots import short_label
from src.plots.curves import learning_curves_figure
from src.plots.sweep import sweep_figure


def _row(epoch: int, val_acc: float) -> dict[str, float]:
    return {"epoch": epoch, "train/loss": 0.5, "train/acc": 0.9, "val/loss": 0.4, "val/acc": val_acc}


def test_learning_curves_label_epochs_with_whole_numbers_even_for_one_epoch():
    for history in ([_row(0, 0.97)], [_row(e, 0.9 + e / 100) for e in range(7)]):
        for ax in learning_curves_figure(history).axes:
            ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
            assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_learning_curves_point_at_the_best_validation_epoch():
    history = [_row(0, 0.95), _row(1, 0.99), _row(2, 0.98)]
    acc_ax = learning_curves_figure(history).axes[1]
    (note,) = acc_ax.texts
    assert note.get_text() == "best val 99.00%" and tuple(note.xy) == (1, 0.99)


def test_confusion_matrix_title_and_row_labels_give_overall_and_per_digit_accuracy():
    confusion = torch.zeros(10, 10, dtype=torch.long)
    confusion.fill_diagonal_(9)
    confusion[3, 5] = 1  # one 3 taken for a 5: 90 of 91 right, the 3s at 90%
    ax = confusion_matrix_figure(confusion, "test").axes[0]
    assert ax.get_title() == "test: 98.90% of 91 correct"
    labels = [label.get_text() for label in ax.get_yticklabels()]
    assert labels[3] == "3  (90.0%)" and labels[5] == "5  (100.0%)"


def test_the_counts_on_dark_cells_are_white_so_the_largest_error_stays_readable():
    confusion = torch.zeros(10, 10, dtype=torch.long)
    confusion.fill_diagonal_(90)
    confusion[4, 9], confusion[7, 1] = 10, 1  # the darkest cell, and a pale one
    texts = {text.get_text(): text.get_color() for text in confusion_matrix_figure(confusion, "test").axes[0].texts}
    assert texts["10"] == "white" and texts["1"] == "black" and texts["90"] == "tab:green"


def test_the_training_loss_curve_names_its_label_smoothing():
    """Smoothing keeps the training loss far above the validation loss by design: the legend must say why."""
    loss_ax = learning_curves_figure([_row(0, 0.9), _row(1, 0.95)], label_smoothing=0.1).axes[0]
    assert [text.get_text() for text in loss_ax.get_legend().get_texts()] == ["train (label smoothing 0.1)", "val"]
    loss_ax = learning_curves_figure([_row(0, 0.9)]).axes[0]
    assert [text.get_text() for text in loss_ax.get_legend().get_texts()] == ["train", "val"]


def test_a_digit_without_images_has_no_accuracy_on_the_confusion_matrix():
    confusion = torch.zeros(10, 10, dtype=torch.long)
    confusion[1, 1] = 2
    labels = [label.get_text() for label in confusion_matrix_figure(confusion, "test").axes[0].get_yticklabels()]
    assert labels[1] == "1  (100.0%)" and labels[0] == "0  (no images)"


def test_sweep_labels_show_what_varies_in_short_and_cut_in_the_middle():
    rows = [{"job": f"{n}_x", "status": "ok", "val/acc_best": 0.99, "test/acc": 0.98,
             "varied": f"model.optimizer.lr=0.001 model.optimizer.weight_decay={wd}"} for n, wd in enumerate((0, 0.0001))]
    labels = [label.get_text() for label in sweep_figure(rows).axes[0].get_yticklabels()]
    assert labels == ["0: lr=0.001 weight_decay=0", "1: lr=0.001 weight_decay=0.0001"]
    # Keys whose last parts coincide stay whole; a label still too long loses its middle, not its distinct end.
    rows = [{**rows[0], "varied": "model.optimizer.lr=0.001 data.augment.degrees=10 callbacks.ema.lr=5 seed=1"}]
    (label,) = [label.get_text() for label in sweep_figure(rows).axes[0].get_yticklabels()]
    assert label == "0: model.optimizer.lr=0…allbacks.ema.lr=5 seed=1" and len(label) == 48
    assert short_label("IMG_20261124_135501.png", 16) == "IMG_202…5501.png"
