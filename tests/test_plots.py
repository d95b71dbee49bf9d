"""The figures' content, checked on the matplotlib objects rather than on pixels."""

from types import SimpleNamespace

import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import same_color

from src.callbacks.figures import DiagnosticFigures
from src.plots import short_label
from src.plots.confusion import confusion_matrix_figure
from src.plots.curves import learning_curves_figure
from src.plots.digit_sheet import digit_sheet
from src.plots.sweep import sweep_figure


def _row(epoch: int, val_acc: float) -> dict[str, float]:
    return {"epoch": epoch, "train/loss": 0.5, "train/acc": 0.9, "val/loss": 0.4, "val/acc": val_acc}


def test_learning_curves_label_epochs_with_whole_numbers_even_for_one_epoch():
    for history in ([_row(0, 0.97)], [_row(e, 0.9 + e / 100) for e in range(7)]):
        for ax in learning_curves_figure(history).axes:
            ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
            assert ticks and all(float(t).is_integer() for t in ticks), ticks


@pytest.mark.parametrize("losses", [[1.85, 1.75, 1.6, 1.5], [2.3, 0.7, 0.2, 0.06, 0.02], [0.9, 0.7, 0.5, 0.35]])
def test_the_loss_axis_is_labelled_with_plain_numbers(losses):
    """Not matplotlib's 1.5×10^0 or 6×10^-1 on a log axis over less than a decade."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figure = learning_curves_figure([{**_row(e, 0.9), "train/loss": loss, "val/loss": loss * 0.9}
                                     for e, loss in enumerate(losses)])
    FigureCanvasAgg(figure).draw()
    loss_ax = figure.axes[0]
    labels = [tick.label1.get_text() for tick in loss_ax.yaxis.get_major_ticks() + loss_ax.yaxis.get_minor_ticks()
              if tick.label1.get_visible() and tick.label1.get_text()]
    low, high = loss_ax.get_ylim()
    shown = [float(label) for label in labels]  # each a plain number
    assert len([value for value in shown if low <= value <= high]) >= 2, labels


def test_learning_curves_point_at_the_best_validation_epoch():
    history = [_row(0, 0.95), _row(1, 0.99), _row(2, 0.98)]
    acc_ax = learning_curves_figure(history).axes[1]
    (note,) = acc_ax.texts
    assert note.get_text() == "best val 99.00%" and tuple(note.xy) == (1, 0.99)


def test_the_best_validation_note_covers_no_curve():
    """Beside the best point it covered the validation curve leading up to it (100% at epoch 2 of 4)."""
    import numpy as np
    from matplotlib.text import Text

    history = [{**_row(epoch, val), "train/acc": train} for epoch, (val, train) in enumerate(
        [(0.9, 0.8), (0.95, 0.9), (1.0, 0.95), (1.0, 0.97)])]
    figure = learning_curves_figure(history)
    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)
    acc_ax = figure.axes[1]
    (note,) = acc_ax.texts
    box = Text.get_window_extent(note, renderer)  # the words alone: an Annotation's own extent includes its arrow
    for line in acc_ax.lines:
        xs, ys = (np.asarray(values, dtype=float) for values in line.get_data())
        along = np.linspace(0, 1, 50)  # points along each segment, not only the markers
        points = np.concatenate([np.stack([x0 + (x1 - x0) * along, y0 + (y1 - y0) * along], axis=1)
                                 for x0, x1, y0, y1 in zip(xs[:-1], xs[1:], ys[:-1], ys[1:])])
        assert not any(box.contains(*point) for point in acc_ax.transData.transform(points)), line.get_label()


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
    # Keys whose last parts coincide keep as much more as tells them apart (adam and sgd rows once read the same).
    rows = [{**rows[0], "job": f"{n}_x", "varied": f"model.optimizer.name={name} model.scheduler.name=onecycle seed=1"}
            for n, name in enumerate(("adam", "sgd"))]
    labels = [label.get_text() for label in sweep_figure(rows).axes[0].get_yticklabels()]
    assert labels == ["0: optimizer.name=adam scheduler.name=onecycle seed=1",
                      "1: optimizer.name=sgd scheduler.name=onecycle seed=1"]
    # A label still too long loses its middle, not its distinct end.
    rows = [{**rows[0], "varied": "model.optimizer.lr=0.001 data.augment.degrees=10 data.augment.translate=0.1 "
                                  "data.augment.scale=[0.9,1.1] callbacks.ema.lr=5 seed=1"}]
    (label,) = [label.get_text() for label in sweep_figure(rows).axes[0].get_yticklabels()]
    assert label == "0: optimizer.lr=0.001 degrees=1… scale=[0.9,1.1] ema.lr=5 seed=1" and len(label) == 64
    assert short_label("IMG_20261124_135501.png", 16) == "IMG_202…5501.png"


def test_confusion_matrix_colours_are_shares_of_each_true_digits_images():
    confusion = torch.zeros(10, 10, dtype=torch.long)
    confusion[1, 1], confusion[1, 7], confusion[7, 7] = 2, 2, 6  # half the 1s read as 7; column 7 holds 8 images
    (image,) = confusion_matrix_figure(confusion, "test").axes[0].images
    expected = torch.zeros(10, 10)
    expected[1, 7] = 0.5  # the diagonal is left white: the errors stand out
    assert image.get_array().tolist() == expected.tolist()


def test_the_mistakes_kept_for_the_picture_are_the_most_confident_ones_first():
    """Collected over several test batches: misclassified.png shows the `num_mistakes` mistakes made with the most
    confidence (not those with the highest loss: an image split between two wrong digits has more loss, less confidence)."""
    figures = DiagnosticFigures(output_dir="unused", num_mistakes=3)
    # (image number, true digit, logits for the digits 1 and 2; 0 for the others). The pixels hold the number.
    batches = [((0, 0, [1.0, 0.0]), (1, 0, [4.0, 0.0]), (2, 1, [8.0, 0.0])),  # image 2: read right, however sure
               ((3, 0, [3.0, 0.0]), (4, 0, [5.0, 5.0]), (5, 0, [6.0, 0.0]))]  # image 4: 49% sure, the second-highest loss
    for batch in batches:
        numbers, labels, wrong = zip(*batch)
        logits = torch.zeros(3, 10)
        logits[:, 1:3] = torch.tensor(wrong)
        images = torch.tensor(numbers, dtype=torch.float).reshape(3, 1, 1, 1).expand(3, 1, 28, 28)
        figures.on_test_batch_end(None, None, logits, (images, torch.tensor(labels)), batch_idx=0)
    images, kept_labels, probs, confidence = figures._mistakes
    assert images[:, 0, 0, 0].tolist() == [5.0, 1.0, 3.0] and kept_labels.tolist() == [0, 0, 0]
    assert confidence.tolist() == probs.max(1).values.tolist() == sorted(confidence.tolist(), reverse=True)


def test_with_several_processes_the_picture_takes_the_most_confident_mistakes_of_all():
    """Each DDP process tests its share of the images; the figure drawn by process 0 must pick from every share."""
    def mistakes(confidences: list[float], marker: float) -> tuple[torch.Tensor, ...]:
        n = len(confidences)
        probs = torch.zeros(n, 10)
        probs[:, 3] = torch.tensor(confidences)
        return torch.full((n, 1, 28, 28), marker), torch.full((n,), 5), probs, torch.tensor(confidences)

    figures = DiagnosticFigures(output_dir="unused", num_mistakes=3)
    figures._mistakes = mistakes([0.9, 0.5], marker=0.0)  # this process's two, padded to three for the collective
    others = iter(mistakes([0.95, 0.8, 0.6], marker=1.0))  # the other process's three (no padding needed)
    # all_gather stacks every process's equally shaped tensor.
    module = SimpleNamespace(device=torch.device("cpu"), all_gather=lambda tensor: torch.stack([tensor, next(others)]))
    images, labels, probs, confidence = figures._gathered_mistakes(module)
    assert confidence.tolist() == pytest.approx([0.95, 0.9, 0.8])
    assert images[:, 0, 0, 0].tolist() == [1.0, 0.0, 1.0] and labels.tolist() == [5, 5, 5]  # from both shares


def test_flagged_digits_have_red_captions_and_frames():
    sheet = digit_sheet(torch.zeros(2, 28, 28), ["a", "b"], [False, True])
    plain, flagged = sheet.axes
    assert same_color(flagged.title.get_color(), "tab:red") and not same_color(plain.title.get_color(), "tab:red")
    assert [same_color(patch.get_edgecolor(), "tab:red") for patch in flagged.patches] == [True] and not plain.patches


def test_validation_figures_come_every_n_epochs_and_at_the_last():
    figures = DiagnosticFigures(output_dir="unused", every_n_epochs=2)
    due = [figures._val_figures_due(SimpleNamespace(current_epoch=epoch, max_epochs=5, sanity_checking=False))
           for epoch in range(5)]
    assert due == [False, True, False, True, True]  # after epochs 2, 4 and the last, 5 (counted from 1)
    assert not figures._val_figures_due(SimpleNamespace(current_epoch=1, max_epochs=5, sanity_checking=True))


def test_the_validation_sample_sheet_flags_and_captions_the_mistakes_alone(monkeypatch):
    import src.callbacks.figures

    sheets = []
    monkeypatch.setattr(src.callbacks.figures, "digit_sheet",
                        lambda images, captions, flagged, title: sheets.append((captions, flagged, title)))
    figures = DiagnosticFigures(output_dir="unused")
    monkeypatch.setattr(figures, "_log", lambda *args: None)
    figures._val_samples = (torch.zeros(3, 1, 28, 28), torch.tensor([1, 2, 3]), torch.tensor([1, 5, 3]))
    trainer = SimpleNamespace(sanity_checking=False, current_epoch=1, max_epochs=2, is_global_zero=True, global_step=8)
    figures.on_validation_end(trainer, SimpleNamespace(confusion={}))
    assert sheets == [(["1", "5 (true 2)", "3"], [False, True, False],
                       "validation samples, epoch 1: prediction (true label if wrong)")]


def test_sweep_dots_show_each_jobs_accuracies_and_a_failed_job_says_why():
    rows = [{"job": "0_model=cnn", "varied": "model=cnn", "status": "ok", "val/acc_best": 0.99, "test/acc": 0.98, "error": ""},
            {"job": "1_model=mlp", "varied": "model=mlp", "status": "failed", "val/acc_best": None, "test/acc": None,
             "error": "CUDA out of memory"}]
    ax = sweep_figure(rows).axes[0]
    val_dots, test_dots = ax.lines  # blue, then orange; none for the failed job
    assert list(val_dots.get_xdata()) == [0.99] and list(test_dots.get_xdata()) == [0.98]
    assert list(val_dots.get_ydata()) < list(test_dots.get_ydata()) < [1]  # in the first job's row
    assert not ax.containers  # no bars, whose length from a cut axis would mislead
    bottom, top = ax.get_ylim()
    assert bottom > top  # the first job on top
    interrupted = {**rows[0], "status": "interrupted"}  # its metrics are an earlier attempt's: no dot
    assert not any(len(line.get_xdata()) for line in sweep_figure([interrupted]).axes[0].lines)
    assert {"99.00%", "98.00%"} <= {text.get_text() for text in ax.texts}
    assert "failed: CUDA out of memory" in [text.get_text() for text in ax.texts]
    long_error = {**rows[1], "error": "ValueError: model.optimizer.lr=0 is invalid: it must be a positive number."}
    (cut,) = [text.get_text() for text in sweep_figure([long_error]).axes[0].texts]
    assert cut == "failed: ValueError: model.optimizer.lr=0 is invalid: it must be a p…"  # marked as cut


def test_sweep_accuracy_ticks_have_the_decimals_their_spacing_needs():
    """Rounded to 4 digits, ticks 0.025% apart read 99.8%, 99.83%, 99.85%: unevenly spaced."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    rows = [{"job": "0_seed=1", "varied": "seed=1", "status": "ok", "val/acc_best": 0.9999, "test/acc": 1.0, "error": ""}]
    figure = sweep_figure(rows)
    FigureCanvasAgg(figure).draw()
    ax = figure.axes[0]
    low, high = ax.get_xlim()
    ticks = [(tick, label.get_text()) for tick, label in zip(ax.get_xticks(), ax.get_xticklabels()) if low <= tick <= high]
    assert len(ticks) > 2 and all(float(text.rstrip("%")) == pytest.approx(100 * tick) for tick, text in ticks), ticks


def test_the_sweep_legend_covers_no_accuracy_label():
    """A dot at 100% has its label past the end of the axes, where the legend once was."""
    rows = [{"job": f"{n}_seed={n}", "varied": f"seed={n}", "status": "ok", "val/acc_best": 1.0, "test/acc": accuracy,
             "error": ""} for n, accuracy in enumerate((1.0, 0.99, 0.995))]
    figure = sweep_figure(rows)
    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)  # lays the figure out
    (legend,) = figure.legends or [figure.axes[0].get_legend()]
    labels = [text for text in figure.axes[0].texts if text.get_text().endswith("%")]
    assert len(labels) == 6
    assert not any(legend.get_window_extent(renderer).overlaps(label.get_window_extent(renderer)) for label in labels)


def test_confusion_counts_sit_in_their_cells_and_the_axes_say_which_is_which():
    confusion = torch.zeros(10, 10, dtype=torch.long)
    confusion[3, 5] = 1  # one 3 read as a 5
    ax = confusion_matrix_figure(confusion, "test").axes[0]
    assert [(text.get_position(), text.get_text()) for text in ax.texts] == [((5, 3), "1")]  # column: the prediction
    assert ax.get_xlabel() == "predicted digit" and ax.get_ylabel().startswith("true digit")


def test_learning_curve_panels_are_titled_loss_then_accuracy():
    titles = [ax.get_title() for ax in learning_curves_figure([_row(0, 0.9), _row(1, 0.95)]).axes]
    assert titles == ["cross-entropy loss", "accuracy"]


def test_the_lowest_sweep_dot_sits_inside_the_axes():
    rows = [{"job": f"{n}_x", "varied": f"seed={n}", "status": "ok", "val/acc_best": value, "test/acc": value + 0.001,
             "error": ""} for n, value in enumerate((0.95, 0.97))]
    assert sweep_figure(rows).axes[0].get_xlim()[0] < 0.95  # not half cut by the axis' edge


def test_short_labels_are_cut_only_past_their_limit():
    assert short_label("a" * 16, 16) == "a" * 16 and short_label("a" * 17, 16) == "a" * 7 + "…" + "a" * 8


def test_a_digit_sheet_shows_normalized_images_with_their_own_range():
    """Validation samples and the predict preview are normalized (about -0.4 to 2.8): drawn as 0..1 they saturate."""
    sheet = digit_sheet(torch.linspace(-1, 3, 2 * 28 * 28).reshape(2, 28, 28), ["a", "b"])
    assert [ax.images[0].get_clim() for ax in sheet.axes] == [(-1.0, 3.0)] * 2


def test_the_sample_sheet_has_num_samples_images_and_none_with_zero():
    trainer = SimpleNamespace(sanity_checking=False, current_epoch=1, max_epochs=2)
    batch = (torch.zeros(10, 1, 28, 28), torch.arange(10))
    for num_samples, kept in ((4, 4), (0, None)):
        figures = DiagnosticFigures(output_dir="unused", num_samples=num_samples)  # 0: the way to switch it off
        figures.on_validation_batch_end(trainer, None, torch.zeros(10, 10), batch, batch_idx=0)
        assert (figures._val_samples and len(figures._val_samples[0])) == kept


def test_no_mistakes_no_picture_of_them(monkeypatch):
    """A test pass without a mistake (or num_mistakes=0): no empty misclassified.png."""
    figures = DiagnosticFigures(output_dir="unused")
    logged = []
    monkeypatch.setattr(figures, "_log", lambda trainer, tag, *args: logged.append(tag))
    figures.on_test_batch_end(None, None, torch.eye(10)[:3] * 5, (torch.zeros(3, 1, 28, 28), torch.arange(3)), batch_idx=0)
    figures.on_test_end(SimpleNamespace(world_size=1, is_global_zero=True, global_step=1), SimpleNamespace(confusion={}))
    assert logged == []
