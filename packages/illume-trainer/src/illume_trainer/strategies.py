"""Scale-out strategies a recipe can name: Lightning's own, configured for ILLUME's models.

Recipes pick DDP (`strategy: ddp`) for stages whose trainable part is small, and
`IllumeFSDPStrategy` (Lightning's FSDPStrategy, i.e. FSDP1) where the LLM trains: each transformer
block named in `wrap` becomes one FSDP unit (parameters sharded, gathered per block), and the
same blocks are activation-checkpointed. Classes are given by import path so YAML can name them.
"""

from __future__ import annotations

import importlib

from lightning.pytorch.strategies import FSDPStrategy

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

    @property
    def wrap_policy(self):
        """The torch ModuleWrapPolicy FSDP applies."""
        return self.kwargs["auto_wrap_policy"]
