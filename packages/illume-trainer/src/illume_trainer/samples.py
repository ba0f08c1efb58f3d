"""What the MLLM stages' datasets yield: a conversation, a pack of conversations about the same
images, or a bad entry; shared by the conversation files (illume_trainer.conversations) and the
shard streams (illume_trainer.shards)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

IMAGE = "<image>"
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


@dataclass  # not frozen: Lightning rebuilds dataclasses in a batch to move it
class ConversationSample:
    """One conversation as `ConversationDataset` yields it: its turns with `<image>` placeholders,
    its input images (loaded) with their paths, and its output images' paths, each by the index of
    its placeholder in the conversation. From shards (illume_trainer.shards) there are no paths:
    an output image comes as its precomputed `codes`, or loaded in `output_images` to be
    encoded; `codes` may hold an input image's codes too (an edit's source)."""

    id: str
    index: int
    turns: tuple[tuple[str, str], ...]
    inputs: dict[int, Image.Image]
    input_paths: dict[int, str]
    outputs: dict[int, str]
    output_images: dict[int, Image.Image] = field(default_factory=dict)
    codes: dict[int, np.ndarray | torch.Tensor] = field(default_factory=dict)


@dataclass  # not frozen: Lightning rebuilds dataclasses in a batch to move it
class PackSample:
    """A `Pack`'s conversations, their shared images loaded once."""

    id: str
    index: int
    samples: tuple[ConversationSample, ...]


@dataclass  # not frozen: Lightning rebuilds dataclasses in a batch to move it
class BadSample:
    """An entry whose images cannot be loaded: skipped and counted (illume_trainer.guards).
    `whole_shard`: its shard could not be read at all (illume_trainer.shards)."""

    index: int
    error: str
    whole_shard: bool = False


Sample = ConversationSample | PackSample | BadSample
