"""Small synthetic data sets in MNIST's own IDX format, so the real loading code runs on them (tests, the
benchmark's --quick mode). The label decides where a bright square sits: learnable in a few steps."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from src.data.idx import write_idx


def synthetic_digits(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images where the label decides where a bright 8×8 square sits: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 10
    rng.shuffle(labels)
    images = rng.integers(0, 40, size=(count, 28, 28)).astype(np.uint8)
    for image, label in zip(images, labels):
        row, col = 2 + 12 * (label // 5), 1 + 5 * (label % 5)
        image[row : row + 8, col : col + 8] = 255
    return images, labels.astype(np.uint8)


def write_synthetic_mnist(data_dir: Path, train_count: int = 400, test_count: int = 100, gz: bool = True) -> Path:
    """A data_dir with MNIST/raw/ holding the four files; returns data_dir."""
    suffix = ".gz" if gz else ""
    raw = data_dir / "MNIST" / "raw"
    for split, count, seed in (("train", train_count, 0), ("t10k", test_count, 1)):
        images, labels = synthetic_digits(count, seed)
        write_idx(raw / f"{split}-images-idx3-ubyte{suffix}", images)
        write_idx(raw / f"{split}-labels-idx1-ubyte{suffix}", labels)
    return data_dir
