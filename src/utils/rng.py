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
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
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


def unseeded_run_seed(resumed_checkpoint: dict | None) -> int:
    """The seed of a `seed=null` run, fixed once so that DDP's processes shuffle alike and a resume continues the
    same order: the resumed checkpoint's (its content, as read), rank 0's draw (which DDP's other processes
    inherit), or a new draw."""
    import os
    import secrets

    from src.utils.run import is_rank_zero

    if resumed_checkpoint:
        saved = (resumed_checkpoint.get("datamodule_hyper_parameters") or {}).get("shuffle_seed")
        if saved is not None:
            return int(saved)
    if not is_rank_zero() and "PL_GLOBAL_SEED" in os.environ:
        return int(os.environ["PL_GLOBAL_SEED"])
    return secrets.randbits(31)
