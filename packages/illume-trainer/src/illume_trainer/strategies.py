"""Scale-out strategies a recipe can name: Lightning's own, configured for ILLUME's models.

Recipes pick DDP (`strategy: ddp`) for stages whose trainable part is small, and
`IllumeFSDPStrategy` (Lightning's FSDPStrategy, i.e. FSDP1) where the LLM trains: each transformer
block named in `wrap` becomes one FSDP unit (parameters sharded, gathered per block), and the
same blocks are activation-checkpointed. Classes are given by import path so YAML can name them.
"""

from __future__ import annotations

import importlib
import os
import shutil
import uuid
from pathlib import Path

from lightning.pytorch.strategies import FSDPStrategy

from illume_core import replace_with, sweep_stale

#: The blocks of ILLUME at paper scale: Vicuna / Llama decoder layers and SigLIP encoder layers.
ILLUME_BLOCKS = [
    "transformers.models.llama.modeling_llama.LlamaDecoderLayer",
    "transformers.models.siglip.modeling_siglip.SiglipEncoderLayer",
]


def import_class(path: str) -> type:
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"cannot import {path!r} for the FSDP wrapping policy: {error}") from error


class IllumeFSDPStrategy(FSDPStrategy):
    """FSDPStrategy wrapping (and checkpointing) the block classes named in `wrap`.

    Args:
        wrap: import paths of the module classes that each become an FSDP unit.
        activation_checkpointing: recompute those blocks' activations in the backward pass.
        **kwargs: FSDPStrategy's own (sharding_strategy, state_dict_type, cpu_offload, ...).
    """

    def __init__(
        self, wrap: list[str] | None = None, activation_checkpointing: bool = True, **kwargs
    ):
        self.wrap = list(wrap or ILLUME_BLOCKS)
        blocks = {import_class(p) for p in self.wrap}
        super().__init__(
            auto_wrap_policy=blocks,
            activation_checkpointing_policy=blocks if activation_checkpointing else None,
            **kwargs,
        )

    def save_checkpoint(self, checkpoint: dict, filepath, storage_options=None) -> None:
        """A sharded checkpoint (a folder of every rank's shards and rank 0's metadata) is written
        whole into a temporary sibling, then renamed over `filepath` by rank 0 after every rank
        finished: a crash or a failing rank mid-save leaves the previous checkpoint as it was (and
        the next save sweeps the leftovers). Lightning writes sharded checkpoints itself, past the
        recipes' CheckpointIO (AtomicCheckpointIO), so this is where they become atomic."""
        if self._state_dict_type != "sharded":
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        path = Path(self.broadcast(str(filepath)))
        if self.global_rank == 0:
            sweep_stale(path)
        name = f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"  # rank 0's, for all
        tmp = path.with_name(self.broadcast(name))
        try:
            super().save_checkpoint(checkpoint, tmp, storage_options)
        except BaseException:
            if self.global_rank == 0:  # the others may still be writing: sweep_stale ends it
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.barrier("illume_sharded_checkpoint_written")
        if self.global_rank == 0:
            replace_with(tmp, path)
        self.barrier("illume_sharded_checkpoint_in_place")

    @property
    def wrap_policy(self):
        """The torch ModuleWrapPolicy FSDP applies."""
        return self.kwargs["auto_wrap_policy"]
