"""The one transform from the MLLM stages' dataset samples to the model's inputs.

A `ConversationSample` (illume_trainer.conversations) becomes Messages, then the processor's
`Example`: input images stay images (the model sees their features), output images become the
frozen vision tokenizer's codes, the text of a drawing request is dropped with probability
`p_uncond` (CFG's unconditional branch; an edit keeps its source image), an edit's source image
also comes as its codes when the processor says so, and a `PackSample` is packed. Images reach the
tokenizer through its own image processor (`SemanticTokenizer.preprocess`), the path serving uses.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
from PIL import Image

from illume_core import Message, load_image
from illume_mllm import Example, IllumeProcessor
from illume_tokenizer import SemanticTokenizer

from ..conversations import IMAGE, ConversationSample, PackSample


class ConversationTransform:
    """Args:
    processor: the MLLM's processor (its chat template, vision vocabulary and packing).
    vision_tokenizer: the frozen tokenizer whose codes are the output images.
    p_uncond: probability of dropping a drawing request's text while training.
    rng: the random source of that drop (the stage's, saved in its checkpoints).
    pack: whether packed samples are allowed (they are weighted by their tokens).
    """

    def __init__(
        self,
        processor: IllumeProcessor,
        vision_tokenizer: SemanticTokenizer,
        p_uncond: float,
        rng: random.Random,
        pack: bool = True,
    ):
        self.processor, self.vision_tokenizer = processor, vision_tokenizer
        self.p_uncond, self.rng, self.pack = p_uncond, rng, pack
        self._codes: dict[str, torch.Tensor] = {}  # the tokenizer is frozen: a path's codes stay

    def codes_of(self, paths: Sequence[str]) -> list[torch.Tensor]:
        """The vision tokenizer's codes [h, w] of images, by path (cached)."""
        todo = [p for p in dict.fromkeys(paths) if p not in self._codes]
        if todo:
            codes = self.encode([load_image(p) for p in todo])
            self._codes.update(zip(todo, codes, strict=True))
        return [self._codes[p] for p in paths]

    def messages(self, sample: ConversationSample, training: bool) -> list[Message]:
        """A sample -> Messages with PIL input images and code-grid output images."""
        turns = list(sample.turns)
        draws = len(turns) == 2 and turns[1][1].strip() == IMAGE
        if training and draws and self.rng.random() < self.p_uncond:
            # the text dropped, the input images kept: the unconditional prompt of CFG
            turns[0] = (turns[0][0], IMAGE * turns[0][1].count(IMAGE))
        outputs = self._output_codes(sample)
        messages, k = [], 0
        for role, value in turns:
            parts: list[str | Image.Image | torch.Tensor] = []
            for i, text in enumerate(value.split(IMAGE)):
                if i > 0:
                    parts.append(sample.inputs[k] if role == "user" else outputs[k])
                    k += 1
                if text.strip():
                    parts.append(text.strip())
            messages.append(Message(role, parts))
        if draws and sample.inputs and self.processor.config.edit_source_codes:  # an edit
            messages[0] = self.processor.with_source_codes(messages[0], self._input_codes(sample))
        return messages

    def _output_codes(self, sample: ConversationSample) -> dict[int, torch.Tensor]:
        """Each output image's codes: packed with it (shards), else from its path or its loaded
        image through the tokenizer."""
        # by placeholder index (an input's are never looked up here); packed ones come as numpy
        out = {k: torch.as_tensor(c) for k, c in sample.codes.items()}
        paths = {k: p for k, p in sample.outputs.items() if k not in out}
        out |= dict(zip(paths, self.codes_of(list(paths.values())), strict=True))
        images = {k: i for k, i in sample.output_images.items() if k not in out}
        out |= dict(zip(images, self.encode(list(images.values())), strict=True))
        return out

    def _input_codes(self, sample: ConversationSample) -> list[torch.Tensor]:
        """The input images' codes in order (an edit's source): packed, from paths, or encoded."""
        out = []
        for k in sorted(sample.inputs):
            if k in sample.codes:
                out.append(torch.as_tensor(sample.codes[k]))
            elif k in sample.input_paths:
                out += self.codes_of([sample.input_paths[k]])
            else:
                out += self.encode([sample.inputs[k]])
        return out

    @torch.no_grad()
    def encode(self, images: Sequence[Image.Image]) -> list[torch.Tensor]:
        """The tokenizer's codes [h, w] of images in memory (not cached: they have no path)."""
        if not images:
            return []
        tokenizer = self.vision_tokenizer
        device = next(tokenizer.parameters()).device
        return list(tokenizer.encode(tokenizer.preprocess(list(images)).to(device)).codes.cpu())

    def __call__(self, sample: ConversationSample | PackSample, training: bool) -> Example:
        """A sample (a conversation, or a pack of them about the same images) -> Example."""
        if isinstance(sample, PackSample):
            if not self.pack:
                raise ValueError(
                    "packed conversations (pack_by_image) are weighted by their tokens: use "
                    "loss_weighting: token, or do not pack"
                )
            return self.processor.pack([self(s, training) for s in sample.samples])
        return self.processor.encode_conversation(self.messages(sample, training))
