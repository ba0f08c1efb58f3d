"""Checkpoints you can trust: written atomically, loaded safely, resumed exactly.

- `AtomicCheckpointIO` writes each checkpoint to a temporary file and renames it into place, so a
  crash mid-write leaves the previous `last.ckpt` intact; it loads with `weights_only=True`.
- `ResumeState` puts the random number generators (torch, numpy, python) into every checkpoint
  and restores them on resume; with the StatefulDataLoader's position (which Lightning saves),
  the model, optimizer, scheduler, and the next batch of a resumed run match the uninterrupted one.

Recipes use both: `trainer.plugins: [illume_trainer.checkpointing.AtomicCheckpointIO]` and
`trainer.callbacks: [illume_trainer.checkpointing.ResumeState, ModelCheckpoint(save_last=true)]`.
"""

from __future__ import annotations

import os
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from illume_core import atomic_write


def _allow_lightning_types() -> None:
    """Lightning's own plain containers, allowed through the weights_only unpickler."""
    from lightning.fabric.utilities.data import AttributeDict

    torch.serialization.add_safe_globals([AttributeDict])


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save to a temporary sibling, fsync, rename; torch.load with weights_only=True."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))

    def load_checkpoint(
        self, path, map_location=None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no checkpoint at {path}")
        _allow_lightning_types()
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


class ResumeState(L.Callback):
    """Saves and restores the RNG states of torch, numpy and python with every checkpoint."""

    def state_dict(self) -> dict[str, Any]:
        from lightning.fabric.utilities.seed import _collect_rng_states

        states = _collect_rng_states(include_cuda=torch.cuda.is_available())
        # numpy's and python's states as plain lists, so that weights_only loading accepts them
        kind, keys, pos, has_gauss, cached = states["numpy"]
        states["numpy"] = [kind, torch.from_numpy(keys.copy()), pos, has_gauss, cached]
        version, internal, gauss = states["python"]
        states["python"] = [version, list(internal), gauss]
        return states

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        import numpy as np
        from lightning.fabric.utilities.seed import _set_rng_states

        states = dict(state_dict)
        kind, keys, pos, has_gauss, cached = states["numpy"]
        states["numpy"] = (kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached)
        version, internal, gauss = states["python"]
        states["python"] = (version, tuple(internal), gauss)
        _set_rng_states(states)
