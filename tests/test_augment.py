"""Batched training augmentation: what it keeps, what it changes, when it runs, and its config errors."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from src.data.augment import BatchAugment
from src.data.augment_settings import DEFAULT_AUGMENT, augment_settings
from src.data.mnist_datamodule import MNISTDataModule
from src.data.synthetic import synthetic_digits
from src.errors import UserInputError
from src.models.mlp import MLP

BACKGROUND = -0.1307 / 0.3081
EVERYTHING_ON = {"enabled": True, "elastic_alpha": 34.0, "erasing_p": 0.5}


def digit_batch(count: int = 64) -> torch.Tensor:
    images, _ = synthetic_digits(count, seed=3)
    return ((torch.from_numpy(images).float() / 255 - 0.1307) / 0.3081).unsqueeze(1)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))])
@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.bfloat16, 0.1)], ids=["float32", "bfloat16"])  # bf16 steps by 1/16 near 10
def test_keeps_shape_dtype_device_and_batch_order(device, dtype, atol):
    # Each image is a flat field whose value is its label: the centre pixel always reads from the
    # interior under small affine/elastic moves, so it still names the label after augmentation.
    labels = torch.arange(40, device=device) % 10
    images = (1.0 + labels.to(dtype)).view(-1, 1, 1, 1).expand(-1, 1, 28, 28).contiguous()
    augmented = BatchAugment({"enabled": True, "elastic_alpha": 34.0}, BACKGROUND)(images)
    assert augmented.shape == images.shape and augmented.dtype == images.dtype and augmented.device == images.device
    assert torch.allclose(augmented[:, 0, 14, 14].float(), 1.0 + labels.float(), atol=atol)
    assert (augmented != images).flatten(1).any(1).all()  # the borders moved in every image


def test_disabled_is_exactly_the_identity():
    images = digit_batch()
    assert BatchAugment(None, BACKGROUND)(images) is images
    assert BatchAugment({**EVERYTHING_ON, "enabled": False}, BACKGROUND)(images) is images


@pytest.mark.parametrize(
    "settings",
    [{"enabled": True}, {"enabled": True, "degrees": 0, "translate": 0, "scale": [1, 1], "elastic_alpha": 10.0},
     {"enabled": True, "degrees": 0, "translate": 0, "scale": [1, 1], "erasing_p": 1.0}],
    ids=["affine", "elastic", "erasing"],
)
def test_enabled_changes_every_image(settings):
    images = digit_batch()
    augmented = BatchAugment(settings, BACKGROUND)(images)
    assert (augmented - images).abs().flatten(1).amax(1).min() > 0.1


def test_erasing_touches_its_share_of_images_with_rectangles_of_its_size():
    torch.manual_seed(0)
    images = torch.ones(2000, 1, 28, 28)  # bright everywhere: every erased pixel shows
    settings = {"enabled": True, "degrees": 0, "translate": 0, "scale": [1, 1], "erasing_p": 0.25,
                "erasing_area": [0.05, 0.1]}
    erased = (BatchAugment(settings, BACKGROUND)(images) == BACKGROUND).flatten(1).float().mean(1)
    touched = erased[erased > 0]
    assert 0.22 < len(touched) / len(images) < 0.28  # erasing_p of the images
    # erasing_area of each image's pixels (the rectangle's sides are whole pixels: a little either way)
    assert 0.03 < touched.min() and touched.max() < 0.13 and 0.065 < touched.mean() < 0.085
    reached = (BatchAugment(settings, BACKGROUND)(images) == BACKGROUND)[:, 0].any(0)  # H×W: erased in some image
    assert reached.any(1).all() and reached.any(0).all()  # every row and column, the last ones too


def dot_positions(settings: dict, count: int = 256) -> torch.Tensor:
    """Where a small round dot 8 pixels right of the centre lands in each of `count` augmented images: N×2 (y, x)
    relative to the centre, from the centroid of its brightness (resampling blurs a dot but keeps its centroid)."""
    centre = (28 - 1) / 2
    rows, cols = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    dot = torch.exp(-((rows - centre) ** 2 + (cols - centre - 8) ** 2) / 2)
    torch.manual_seed(0)
    augmented = BatchAugment({"enabled": True, **settings}, background=0.0)(dot.expand(count, 1, 28, 28).contiguous())
    weights = augmented[:, 0].clamp(min=0)
    mass = weights.sum((1, 2))
    return torch.stack([(weights * rows).sum((1, 2)) / mass - centre, (weights * cols).sum((1, 2)) / mass - centre], 1)


def test_the_augmentation_moves_digits_as_far_as_configured_and_no_further():
    still = {"degrees": 0, "translate": 0.0, "scale": [1.0, 1.0]}
    turned = dot_positions({**still, "degrees": 10})
    angles = torch.rad2deg(torch.atan2(turned[:, 0], turned[:, 1])).abs()
    assert angles.max() <= 10.3 and angles.max() > 8  # up to ±10°, and the range is used
    assert torch.allclose(turned.norm(dim=1), torch.tensor(8.0), atol=0.1)  # turning keeps the distance

    shifted = dot_positions({**still, "translate": 0.1}) - torch.tensor([0.0, 8.0])
    assert shifted.abs().max() <= 2.8 + 0.1 and shifted.abs().max() > 2.4  # up to 10% of 28 pixels along each axis

    zoomed = dot_positions({**still, "scale": [0.9, 1.1]}).norm(dim=1)
    assert zoomed.min() >= 7.2 - 0.1 and zoomed.max() <= 8.8 + 0.1 and zoomed.max() - zoomed.min() > 1.2


def test_an_elastic_field_moves_pixels_by_elastic_alpha_pixels(monkeypatch):
    """A field of constant noise (each draw at its upper end) moves the whole image by elastic_alpha pixels along
    each axis: the output reads the input that far to the right and below."""
    import src.data.augment

    monkeypatch.setattr(src.data.augment, "_uniform", lambda size, low, high, like: torch.full(size, float(high)))
    moved = dot_positions({"degrees": 0, "translate": 0.0, "scale": [1.0, 1.0], "elastic_alpha": 2.0,
                           "elastic_sigma": 1.0}, count=1)
    assert torch.allclose(moved, torch.tensor([[-2.0, 6.0]]), atol=0.05)  # from (0, 8): two pixels up and left


def test_uncovered_and_erased_pixels_get_the_background_value():
    blank = torch.full((16, 1, 28, 28), BACKGROUND)
    strong = {**EVERYTHING_ON, "degrees": 45, "translate": 0.3, "scale": [0.5, 1.5], "erasing_p": 1.0}
    assert torch.equal(BatchAugment(strong, BACKGROUND)(blank), blank)
    # Zooming out a bright image uncovers its edges: they must read as background, not 0.
    white = torch.full((16, 1, 28, 28), 2.0)
    shrunk = BatchAugment({"enabled": True, "degrees": 0, "translate": 0, "scale": [0.5, 0.5]}, BACKGROUND)(white)
    assert torch.allclose(shrunk[:, :, 0, :], torch.tensor(BACKGROUND)) and torch.allclose(shrunk[:, :, 14, 14], torch.tensor(2.0))


@pytest.mark.parametrize("settings", [{"enabled": True}, EVERYTHING_ON], ids=["affine", "everything"])
def test_reproducible_under_a_fixed_seed(settings):
    images, augment = digit_batch(), BatchAugment(settings, BACKGROUND)
    pl.seed_everything(7)
    first = augment(images)
    pl.seed_everything(7)
    assert torch.equal(augment(images), first)
    pl.seed_everything(8)
    assert not torch.equal(augment(images), first)


class BatchRecorder(pl.Callback):
    """Keeps the batches the model's steps receive, i.e. after `on_after_batch_transfer`."""

    def __init__(self) -> None:
        self.batches: dict[str, list] = {"train": [], "val": [], "test": []}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches["train"].append(tuple(t.clone() for t in batch))

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.batches["val"].append(tuple(t.clone() for t in batch))

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.batches["test"].append(tuple(t.clone() for t in batch))


def test_only_training_batches_are_augmented(synthetic_data_dir):
    options = dict(data_dir=str(synthetic_data_dir), download=False, batch_size=32, eval_batch_size=50, val_size=80)
    datamodule = MNISTDataModule(**options, augment=EVERYTHING_ON)
    plain = MNISTDataModule(**options)
    plain.setup()
    recorder = BatchRecorder()
    trainer = pl.Trainer(
        accelerator="cpu", max_epochs=1, limit_train_batches=3, callbacks=[recorder], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    model = MLP(optimizer={"name": "adam", "lr": 1e-3}, hidden_sizes=[16])
    trainer.fit(model, datamodule=datamodule)
    trainer.test(model, datamodule=datamodule)

    expected_train = list(plain.train_dataloader())[:3]
    assert len(recorder.batches["train"]) == 3
    for (images, labels), (plain_images, plain_labels) in zip(recorder.batches["train"], expected_train):
        assert torch.equal(labels, plain_labels) and not torch.equal(images, plain_images)
    # Sanity check (2 batches) + one validation epoch (2 batches), all untouched; test untouched too.
    expected_val = list(plain.val_dataloader())
    assert len(recorder.batches["val"]) == 2 * len(expected_val)
    for (images, labels), (plain_images, plain_labels) in zip(recorder.batches["val"], expected_val * 2):
        assert torch.equal(images, plain_images) and torch.equal(labels, plain_labels)
    for (images, _), (plain_images, _) in zip(recorder.batches["test"], plain.test_dataloader(), strict=True):
        assert torch.equal(images, plain_images)


def fit_recording_train_batches(datamodule: MNISTDataModule, **trainer_options) -> BatchRecorder:
    recorder = BatchRecorder()
    trainer = pl.Trainer(
        accelerator="cpu", limit_train_batches=2, limit_val_batches=0, callbacks=[recorder], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, **trainer_options,
    )
    trainer.fit(MLP(optimizer={"name": "adam", "lr": 1e-3}, hidden_sizes=[16]), datamodule=datamodule)
    return recorder


def test_the_clean_last_epochs_train_on_the_images_as_they_are(synthetic_data_dir):
    datamodule = MNISTDataModule(
        str(synthetic_data_dir), download=False, batch_size=32, val_size=80,
        augment={**EVERYTHING_ON, "clean_last_epochs": 2},
    )
    recorder = fit_recording_train_batches(datamodule, max_epochs=5)
    train_images = datamodule.train_set[0].flatten(1)

    def unchanged(images: torch.Tensor) -> torch.Tensor:
        """Per image: is it exactly one of the training images?"""
        return (images.flatten(1)[:, None] == train_images[None]).all(-1).any(-1)

    per_epoch = [recorder.batches["train"][i : i + 2] for i in range(0, 10, 2)]
    assert len(recorder.batches["train"]) == 10
    for epoch, batches in enumerate(per_epoch):
        clean = [bool(unchanged(images).all()) for images, _ in batches]
        augmented_any = [bool(unchanged(images).any()) for images, _ in batches]
        assert clean == [epoch >= 3] * 2 and augmented_any == [epoch >= 3] * 2, f"epoch {epoch}"


@pytest.mark.parametrize(
    "trainer_options, message",
    [({"max_epochs": 2}, r"clean_last_epochs=2 is invalid with trainer\.max_epochs=2: it must be smaller"),
     ({"max_epochs": None, "max_steps": 4}, r"clean_last_epochs=2 needs trainer\.max_epochs")],
    ids=["as-many-as-max-epochs", "max-steps-only"],
)
def test_clean_last_epochs_without_an_augmented_epoch_is_a_clear_error(synthetic_data_dir, trainer_options, message):
    datamodule = MNISTDataModule(
        str(synthetic_data_dir), download=False, val_size=80, augment={"enabled": True, "clean_last_epochs": 2}
    )
    with pytest.raises(UserInputError, match=message):
        fit_recording_train_batches(datamodule, **trainer_options)


def test_hyperparameters_stay_plain_values(synthetic_data_dir, tmp_path):
    # data_dir as a Path, as a notebook passes it: a pickled PosixPath would make the checkpoint unloadable.
    datamodule = MNISTDataModule(synthetic_data_dir, download=False, augment={"enabled": True, "degrees": 5})
    assert datamodule.hparams.augment == {**DEFAULT_AUGMENT, "enabled": True, "degrees": 5.0}
    torch.save(dict(datamodule.hparams), tmp_path / "hparams.pt")
    saved = torch.load(tmp_path / "hparams.pt", weights_only=True)
    assert saved["augment"]["degrees"] == 5.0 and saved["data_dir"] == str(synthetic_data_dir)


@pytest.mark.parametrize(
    "key, value",
    [("degrees", -1), ("translate", -0.1), ("translate", 1.5), ("scale", [1.1, 0.9]), ("scale", [0, 1]),
     ("scale", 1.0), ("scale", [0.9]), ("elastic_alpha", -1), ("elastic_sigma", 0), ("erasing_p", 1.5),
     ("erasing_p", -0.1), ("erasing_area", [0.1, 1.5]), ("enabled", "yes"), ("degrees", "ten"),
     ("clean_last_epochs", -1), ("clean_last_epochs", 1.5),
     # Not numbers to train with: they passed the bounds and the run stopped as diverged, blaming the learning rate.
     ("degrees", float("nan")), ("elastic_alpha", float("inf")), ("scale", [0.9, float("inf")])],
)
def test_bad_values_are_clear_errors(synthetic_data_dir, key, value):
    with pytest.raises(UserInputError, match=rf"data\.augment\.{key}=.* is invalid: it must be"):
        augment_settings({key: value})
    with pytest.raises(UserInputError, match=rf"data\.augment\.{key}="):
        MNISTDataModule(str(synthetic_data_dir), download=False, augment={key: value})


def test_unknown_key_is_a_clear_error():
    with pytest.raises(UserInputError, match=r"data\.augment has unknown keys \['degree'\].*'degrees'"):
        augment_settings({"degree": 10})


def test_the_whole_group_set_to_false_turns_augmentation_off_and_true_asks_which_settings():
    assert augment_settings(False) == {**augment_settings(None), "enabled": False}
    assert BatchAugment(False, BACKGROUND)(images := digit_batch(4)) is images
    with pytest.raises(UserInputError, match=r"data\.augment=true is invalid: it is a group of settings\. Switch "
                                             r"augmentation with data\.augment\.enabled=true"):
        augment_settings(True)


def test_settings_given_without_the_switch_turn_augmentation_on():
    """augment={"degrees": 15} in a script of one's own was silently off (the class default)."""
    assert augment_settings({"degrees": 15}) == {**augment_settings(None), "enabled": True, "degrees": 15.0}
    assert augment_settings({"degrees": 15, "enabled": False})["enabled"] is False
    assert augment_settings({})["enabled"] is augment_settings(None)["enabled"] is False
