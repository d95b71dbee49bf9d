"""RNG states as tensors and plain lists, so they fit in a weights_only checkpoint and a resumed run
draws the same dropout masks and augmentations as an uninterrupted one."""

from __future__ import annotations

import random

import numpy as np
import torch


def capture_rng_states() -> dict:
    kind, keys, position, has_gauss, cached_gauss = np.random.get_state()
    version, python_state, gauss_next = random.getstate()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached_gauss": float(cached_gauss)},
        "python": {"version": version, "state": list(python_state), "gauss_next": gauss_next},
    }
    # Only a CUDA in use (a CPU run's has drawn nothing): reading its state would start it, which ddp_fork (in a
    # notebook) refuses afterwards. Restoring queues the states until CUDA starts.
    if torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    if torch.backends.mps.is_available():  # an Apple GPU's dropout and augmentation draw from its own generator
        states["mps"] = torch.mps.get_rng_state()
    return states


def restore_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    numpy_state = states["numpy"]
    np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["position"],
                         numpy_state["has_gauss"], numpy_state["cached_gauss"]))
    python_state = states["python"]
    random.setstate((python_state["version"], tuple(python_state["state"]), python_state["gauss_next"]))
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])
    if "mps" in states and torch.backends.mps.is_available():
        torch.mps.set_rng_state(states["mps"])


def unseeded_run_seed(resumed_checkpoint: dict | None) -> int:
    """The seed of a `seed=null` run; see seed_drawn_once. Lightning's seed_everything hands rank 0's to DDP's other
    processes."""
    saved = None
    if resumed_checkpoint:
        saved = resumed_checkpoint.get("run_seed")
        if saved is None:  # saved before checkpoints recorded it: the shuffle seed, which follows it by default
            saved = (resumed_checkpoint.get("datamodule_hyper_parameters") or {}).get("shuffle_seed")
    return seed_drawn_once(saved, shared_by="PL_GLOBAL_SEED")


def unseeded_shuffle_seed(resumed_checkpoint: dict | None) -> int:
    """`data.shuffle_seed=null` in a run with a seed: drawn once per run as a seed=null run's is (the DataModule would
    draw one in each process, so DDP's ranks took shards of different orders, and a resume refused its new draw)."""
    saved = (resumed_checkpoint.get("datamodule_hyper_parameters") or {}).get("shuffle_seed") if resumed_checkpoint else None
    return seed_drawn_once(saved, shared_by="MNIST_SHUFFLE_SEED")


def seed_drawn_once(saved: int | None, shared_by: str) -> int:
    """A seed fixed once per run, so that DDP's processes shuffle alike and a resume continues the same order: the
    resumed checkpoint's (`saved`), rank 0's draw (which DDP's other processes, started with its environment, find in
    the variable `shared_by`), or a new draw."""
    import os
    import secrets

    from src.utils.run import is_rank_zero

    if saved is not None:
        return int(saved)
    if not is_rank_zero() and shared_by in os.environ:
        return int(os.environ[shared_by])
    seed = secrets.randbits(31)
    os.environ[shared_by] = str(seed)
    return seed
