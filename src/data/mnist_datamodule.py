"""MNIST as whole normalized tensors: train/val carved from the 60k train set, test = the official 10k.

The tensors can live on the GPU (`device`): batches are then cut by indexing there, with no host->device
copy per step. Training batches can be augmented on their device (`augment`, see src/data/augment.py).
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytorch_lightning as pl
import torch

from src.data.augment import BatchAugment
from src.data.augment_settings import augment_settings
from src.data.batches import EpochBatches, TensorBatchLoader, validation_split
from src.data.data_settings import check_data_settings
from src.data.mnist_files import MNISTDataError, ensure_mnist_files, labels_record, load_split
from src.errors import UserInputError
from src.utils.command_words import counted
from src.utils.rng import seed_drawn_once
from src.utils.setting_checks import save_plain_hyperparameters


class MNISTDataModule(pl.LightningDataModule):
    """Train/validation batches from the 60k train set, test (and predict) batches from the official 10k, as
    normalized float32 N×1×28×28 images and int64 labels. Outside a Trainer: call prepare_data() and setup("fit"),
    then iterate train_dataloader() once per epoch (each pass, of one loader or a new one, is the next epoch's
    shuffle); augmentation is applied by the Trainer to training batches, in a loop of one's own call
    `batch_augment(images)` on them."""

    def __init__(
        self,
        data_dir: str | Path,
        download: bool = True,
        batch_size: int = 256,
        eval_batch_size: int = 1000,
        val_size: int = 5000,
        split_seed: int = 0,
        shuffle_seed: int | None = 0,
        mean: float = 0.1307,
        std: float = 0.3081,
        drop_last: bool = False,
        device: str = "auto",
        augment: dict | bool | None = None,  # None/False: off; a dict of settings: on, unless it says enabled=False
    ) -> None:
        super().__init__()
        check_data_settings(data_dir, download, batch_size, eval_batch_size, val_size, split_seed, shuffle_seed,
                            mean, std, drop_last, device)
        if shuffle_seed is None:  # built outside src.train (which draws it first): drawn once per run, as there
            shuffle_seed = seed_drawn_once(None, shared_by="MNIST_SHUFFLE_SEED")
        # Rebinding the argument before save_hyperparameters stores the validated plain dict, defaults filled in.
        augment = augment_settings(augment)
        save_plain_hyperparameters(self, inspect.currentframe())
        self.data_dir = Path(data_dir)
        self.batch_augment = BatchAugment(augment, background=-mean / std)
        self.train_set: tuple[torch.Tensor, torch.Tensor] | None = None
        self.val_set: tuple[torch.Tensor, torch.Tensor] | None = None
        self.test_set: tuple[torch.Tensor, torch.Tensor] | None = None
        self._train_loader: TensorBatchLoader | None = None
        self._train_position: dict | None = None  # from a checkpoint, for the next train loader built
        self._train_file: dict | None = None  # what the train file holds, recorded in checkpoints

    def prepare_data(self) -> None:
        ensure_mnist_files(self.data_dir, download=self.hparams.download)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 N×28×28 -> float32 N×1×28×28, scaled to [0, 1] then standardized."""
        # In place on one new tensor: the same arithmetic, bitwise, without a 200 MB temporary per operation.
        scaled = images.to(torch.float32, copy=True).div_(255.0)
        return scaled.sub_(self.hparams.mean).div_(self.hparams.std).unsqueeze(1)

    def setup(self, stage: str | None = None) -> None:
        if stage == "fit" and self.trainer is not None:
            self._check_clean_epochs()  # before the data is read, so a bad setting fails at once
        if stage in (None, "fit", "validate") and self.train_set is None:
            self._setup_train_val()
        # The test files are read when fitting too: a broken one must fail now, not after hours of training.
        if self.test_set is None:
            images, labels = load_split(self.data_dir, "test")
            self.test_set = (self.normalize(images), labels)
        # Moved once here (a no-op when already there), so no step copies a batch to the device.
        device = self.data_device()
        for name in ("train_set", "val_set", "test_set"):
            tensors = getattr(self, name)
            if tensors is not None:
                setattr(self, name, tuple(t.to(device) for t in tensors))

    def data_device(self) -> torch.device:
        """Where the tensors live: `device`, with `auto` meaning the trainer's root device (CPU without a trainer)."""
        setting = self.hparams.device
        root = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        if setting == "auto" or (setting == "cuda" and root.type == "cuda"):
            return root  # plain `cuda` follows the trainer, so each DDP rank uses its own GPU
        if setting.startswith("cuda:") and self.trainer is not None and self.trainer.world_size > 1:
            raise UserInputError(
                f"data.device={setting} would put the data of all {self.trainer.world_size} processes on that one GPU. "
                "Use data.device=auto (or cuda): each process then keeps its data on its own GPU."
            )
        return torch.device(setting)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        # Training batches only: validation, test, the sanity check, predict and the model summary's example
        # input (a bare tensor, not an (images, labels) pair) see the images as they are.
        if self.trainer is not None and self.trainer.training and isinstance(batch, (tuple, list)):
            if self._in_clean_epochs():
                return batch
            images, labels = batch
            return self.batch_augment(images), labels
        return batch

    def _in_clean_epochs(self) -> bool:
        """The last `augment.clean_last_epochs` epochs train on the images as they are (like the test set)."""
        clean = self.hparams.augment["clean_last_epochs"]
        return clean > 0 and self.trainer.current_epoch >= self.trainer.max_epochs - clean

    def _check_clean_epochs(self) -> None:
        clean, max_epochs = self.hparams.augment["clean_last_epochs"], self.trainer.max_epochs
        if clean == 0 or not self.hparams.augment["enabled"]:
            return
        if max_epochs is None or max_epochs < 0:
            raise UserInputError(
                f"data.augment.clean_last_epochs={clean} needs trainer.max_epochs (it counts back from the last "
                "epoch): set trainer.max_epochs, or data.augment.clean_last_epochs=0."
            )
        if clean >= max_epochs:
            raise UserInputError(
                f"data.augment.clean_last_epochs={clean} is invalid with trainer.max_epochs={max_epochs}: it must be "
                "smaller, or no epoch is augmented (to train without augmentation, set data.augment.enabled=false)."
            )

    def _setup_train_val(self) -> None:
        images, labels = load_split(self.data_dir, "train")
        val_size = self.hparams.val_size
        if len(images) < 3:  # no data.val_size helps
            raise MNISTDataError(f"The train file holds only {counted(len(images), 'image')}: too few to validate on one "
                                 "and train on two. It is not the MNIST train file: download or copy it again.")
        if val_size > len(images) - 2:  # a batch of one image cannot train batch norm
            raise UserInputError(
                f"data.val_size={val_size} is invalid: the train file has only {len(images)} images and training "
                "needs at least 2 of them. Use a smaller data.val_size."
            )
        world_size = self._rank_and_world()[1]
        if val_size < world_size:
            raise UserInputError(
                f"data.val_size={val_size} is invalid with {world_size} processes: each validates its own share, "
                f"so it must be at least {world_size}."
            )
        train_size, batch_size = len(images) - val_size, self.hparams.batch_size
        if train_size // world_size < 2:  # as above, for each process's share
            raise UserInputError(
                f"data.val_size={val_size} is invalid with {world_size} processes: it leaves {train_size} training "
                f"images, and each process trains on its own share, which needs at least 2. Use a smaller data.val_size."
            )
        if self.hparams.drop_last and train_size // world_size < batch_size:
            per_process = f" ({train_size // world_size} per process)" if world_size > 1 else ""
            raise UserInputError(
                f"data.batch_size={batch_size} with data.drop_last=true leaves no training batch: the training split "
                f"has {train_size} images{per_process}. Use a smaller data.batch_size, or data.drop_last=false."
            )
        self._train_file = labels_record(labels)
        val_idx, train_idx = validation_split(len(images), val_size, self.hparams.split_seed)
        # Split the bytes, then normalize: indexing a quarter of the data, and no third copy of the images.
        self.train_set = (self.normalize(images[train_idx]), labels[train_idx])
        self.val_set = (self.normalize(images[val_idx]), labels[val_idx])

    def _rank_and_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _loader(self, tensors, batch_size: int, shuffle: bool) -> TensorBatchLoader:
        if tensors is None:
            raise RuntimeError("MNISTDataModule: its data is not read yet. Call prepare_data() and setup('fit') (or "
                               "setup('test') for the test set) first; a Trainer does both.")
        rank, world_size = self._rank_and_world()
        sampler = EpochBatches(
            num_samples=len(tensors[0]),
            batch_size=batch_size,
            shuffle=shuffle,
            seed=self.hparams.shuffle_seed,
            rank=rank,
            world_size=world_size,
            drop_last=shuffle and self.hparams.drop_last,
        )
        return TensorBatchLoader(tensors, sampler)

    def train_dataloader(self) -> TensorBatchLoader:
        previous = self._train_loader
        self._train_loader = self._loader(self.train_set, self.hparams.batch_size, shuffle=True)
        if previous is not None:  # a loop of one's own asking for a loader each epoch: the next epoch's shuffle
            self._train_loader.continue_after(previous)
        if self._train_position is not None:
            self._train_loader.load_state_dict(self._train_position)
            self._train_position = None
        return self._train_loader

    # The position in the training epoch travels in the datamodule's checkpoint state, not only in the
    # loader's: Lightning restores loader states only into a loader built after its loops are restored,
    # and `estimated_stepping_batches` (OneCycle's total steps) builds it before that (Lightning issue #20550).
    # What the train file holds, too: a resume checks it (src/utils/resume_check.py), as one on other data would go on
    # with the checkpoint's best validation accuracy, on the other validation set, and test its checkpoint.
    def state_dict(self) -> dict:
        state = {"train_file": self._train_file} if self._train_file else {}
        if self._train_loader is not None:
            state["train_position"] = self._train_loader.state_dict()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        self._train_position = state_dict.get("train_position")

    def val_dataloader(self) -> TensorBatchLoader:
        return self._loader(self.val_set, self.hparams.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> TensorBatchLoader:
        return self._loader(self.test_set, self.hparams.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> TensorBatchLoader:
        """The test set, for trainer.predict: its predictions line up with the test labels."""
        return self.test_dataloader()

