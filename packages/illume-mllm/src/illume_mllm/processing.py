"""`IllumeProcessor`: text tokenizer + image processor + chat template + the image-token layout.

Conversations are lists of `illume_core.Message`s whose content interleaves text, input images
(PIL, shown to the model through the vision tower) and output images (code grids `[h, w]`, written
by the model as vision tokens). Rendered Vicuna-v1 style:

    {system} USER: <image>x N  question ASSISTANT: answer</s>USER: ... ASSISTANT: <start_of_image>
    <image_c> .. <end_of_line> .. <end_of_image></s>

Training labels are -100 everywhere except the assistant answers (and their `</s>`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from PIL import Image

from illume_core import Config, Message

from .vocab import VisionVocab, vocab_of

IGNORE = -100
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


@dataclass
class ProcessorConfig(Config):
    """How conversations become token ids."""

    codebook_size: int = 1024
    image_grid: tuple[int, int] = (8, 8)
    """(h, w) of generated code grids."""
    image_seq_length: int = 64
    """N, understanding slots per input image (the vision tower's patch count)."""
    system_prompt: str = VICUNA_SYSTEM
    t2i_template: str = "Generate an image of {caption}."
    """How `generate_image(prompt)` asks for an image (ShapesWorld trains on this phrasing among others)."""
    user_prefix: str = "USER:"
    assistant_prefix: str = "ASSISTANT:"
    edit_source_codes: bool = False
    """Show each input image of a drawing request (an edit) twice: as adapter features, then as
    its vision-token codes (`with_source_codes`), so the cells an edit leaves alone can be copied
    token for token instead of redrawn from features. Not in the paper, whose edits see features
    only; questions about an image never carry its codes."""

    presets: ClassVar[dict] = {"shapes": {"system_prompt": ""}}


@dataclass
class Example:
    """One tokenized conversation: ids and labels [T], and its input images in order.

    A packed example (`IllumeProcessor.pack`) also has `segments` [T]: 0 for the shared prefix,
    k for the tokens of its k-th conversation, which see the prefix and their own earlier tokens
    only; and `position_ids` [T], each conversation's positions continuing from the prefix."""

    input_ids: list[int]
    labels: list[int]
    images: list[Image.Image] = field(default_factory=list)
    segments: list[int] | None = None
    position_ids: list[int] | None = None


def _is_codes(part) -> bool:
    return isinstance(part, (torch.Tensor, np.ndarray)) and not isinstance(part, Image.Image)


class IllumeProcessor:
    """Builds model inputs from conversations and reads generated image tokens back as codes."""

    def __init__(self, tokenizer, image_processor, config: ProcessorConfig):
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.config = config
        self.vocab: VisionVocab = vocab_of(tokenizer, config.codebook_size)
        if tokenizer.eos_token_id is None or tokenizer.pad_token_id is None:
            raise ValueError("the text tokenizer needs eos and pad tokens")

    # -- persistence ------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(directory)
        self.image_processor.save_pretrained(directory)
        self.config.save(directory / "illume_processor.json")

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> IllumeProcessor:
        from transformers import AutoImageProcessor, AutoTokenizer

        directory = Path(directory)
        return cls(
            AutoTokenizer.from_pretrained(directory),
            AutoImageProcessor.from_pretrained(directory),
            ProcessorConfig.load(directory / "illume_processor.json"),
        )

    # -- pieces -----------------------------------------------------------------------------------

    def text_ids(self, text: str) -> list[int]:
        """Token ids of text, as text: a control token's spelling in it ("<image>", "</s>",
        "<start_of_image>") is tokenized as ordinary characters, never as the control token, so
        user text cannot open an image, end a turn or claim an image slot. Control tokens are
        inserted by the conversation template alone."""
        if not text:
            return []
        return self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)[
            "input_ids"
        ]

    def image_output_ids(self, codes) -> list[int]:
        """codes [h, w] -> <start_of_image> (row codes <end_of_line>) x h <end_of_image>."""
        codes = torch.as_tensor(codes)
        h, w = self.config.image_grid
        if codes.shape != (h, w):
            raise ValueError(f"output image codes must be [{h}, {w}], got {list(codes.shape)}")
        if codes.min() < 0 or codes.max() >= self.config.codebook_size:
            raise ValueError(f"codes must lie in [0, {self.config.codebook_size})")
        v = self.vocab
        ids = [v.start_of_image]
        for row in (codes + v.offset).tolist():
            ids += [*row, v.end_of_line]
        return [*ids, v.end_of_image]

    def codes_from_ids(self, ids: Sequence[int]) -> torch.Tensor:
        """The first generated image in `ids` -> codes [h, w]; an error if it is malformed."""
        ids = list(ids)
        v, (h, w) = self.vocab, self.config.image_grid
        if v.start_of_image in ids:
            ids = ids[ids.index(v.start_of_image) + 1 :]
        rows, row = [], []
        for token in ids:
            if token == v.end_of_image or len(rows) == h:
                break
            if token == v.end_of_line:
                rows.append(row)
                row = []
            elif token in v.vision_ids:
                row.append(token - v.offset)
            else:
                raise ValueError(f"token {token} inside an image is not a vision token")
        if len(rows) != h or any(len(r) != w for r in rows):
            raise ValueError(f"generated image is not {h}x{w}: rows of {[len(r) for r in rows]}")
        return torch.tensor(rows, dtype=torch.long)

    def with_source_codes(self, message: Message, codes: Sequence) -> Message:
        """A drawing request's user turn with each input image followed by its codes [h, w]
        (`codes` in the order of the turn's images), when `edit_source_codes` is on; else as is."""
        if not self.config.edit_source_codes:
            return message
        images = [p for p in message.parts if isinstance(p, Image.Image)]
        if len(codes) != len(images):
            raise ValueError(f"{len(images)} input images but {len(codes)} code grids")
        parts, k = [], 0
        for part in message.parts:
            parts.append(part)
            if isinstance(part, Image.Image):
                parts.append(torch.as_tensor(codes[k]))
                k += 1
        return Message(message.role, parts)

    def pixel_values(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return self.image_processor(images=list(images), return_tensors="pt")["pixel_values"]

    # -- conversations ----------------------------------------------------------------------------

    def _turn_ids(self, message: Message, images: list[Image.Image]) -> list[int]:
        ids: list[int] = []
        for part in message.parts:
            if isinstance(part, str):
                ids += self.text_ids(part)
            elif isinstance(part, Image.Image):
                if message.role != "user":
                    raise ValueError(
                        "input images belong in user turns; assistant images are codes"
                    )
                images.append(part)
                ids += [self.vocab.image] * self.config.image_seq_length
            elif _is_codes(part):
                ids += self.image_output_ids(part)
            else:
                raise TypeError(
                    f"message parts are str, PIL images or code grids, got {type(part).__name__}"
                )
        return ids

    def encode_conversation(
        self, messages: Sequence[Message], add_generation_prompt: bool = False
    ) -> Example:
        """Token ids, labels (assistant answers only) and input images of a conversation; with
        `add_generation_prompt`, it ends in an open assistant turn to be completed by the model."""
        cfg = self.config
        images: list[Image.Image] = []
        ids: list[int] = []
        labels: list[int] = []

        def add(new: list[int], learn: bool) -> None:
            ids.extend(new)
            labels.extend(new if learn else [IGNORE] * len(new))

        if self.tokenizer.bos_token_id is not None:
            add([self.tokenizer.bos_token_id], False)
        add(self.text_ids(cfg.system_prompt), False)
        for message in messages:
            if message.role == "system":
                continue  # the system prompt is the processor's
            if message.role == "user":
                add(self.text_ids(cfg.user_prefix) + self._turn_ids(message, images), False)
                add(self.text_ids(cfg.assistant_prefix), False)
            else:
                add([*self._turn_ids(message, images), self.tokenizer.eos_token_id], True)
        if add_generation_prompt and (not messages or messages[-1].role != "user"):
            raise ValueError("a generation prompt needs the conversation to end with a user turn")
        return Example(ids, labels, images)

    def pack(self, examples: Sequence[Example]) -> Example:
        """Several conversations about the same input images -> one sequence: their common prefix
        (up to the first answer token; it must hold every image) once, then each conversation's
        rest. `collate` turns the segments into an attention mask under which every rest sees the
        prefix and itself only, with the positions it would have alone: the loss and gradients are
        those of the conversations one by one (tested), for the prefix's compute once. Nine
        ShapesWorld questions about one image take about 200 tokens packed against 780 apart."""
        if not examples:
            raise ValueError("pack needs at least one example")
        first = examples[0]
        prefix = len(first.input_ids)
        for e in examples:
            answered = [i for i, label in enumerate(e.labels) if label != IGNORE]
            prefix = min(prefix, answered[0] if answered else len(e.labels))
            same = 0
            while same < prefix and e.input_ids[same] == first.input_ids[same]:
                same += 1
            prefix = same
        for e in examples:
            if e.input_ids[prefix:].count(self.vocab.image) or len(e.images) != len(first.images):
                raise ValueError(
                    "packed conversations must share their input images, all of them before the "
                    "first answer: pack only conversations that ask about the same images"
                )
            if any(
                a is not b and a.tobytes() != b.tobytes() for a, b in zip(e.images, first.images)
            ):
                raise ValueError("packed conversations must share the same input images")
        ids, labels = first.input_ids[:prefix], first.labels[:prefix]
        segments, positions = [0] * prefix, list(range(prefix))
        for k, e in enumerate(examples, 1):
            rest = len(e.input_ids) - prefix
            ids += e.input_ids[prefix:]
            labels += e.labels[prefix:]
            segments += [k] * rest
            positions += range(prefix, prefix + rest)
        return Example(ids, labels, list(first.images), segments, positions)

    def t2i_messages(self, caption: str) -> list[Message]:
        """The conditional text-to-image prompt; an empty caption gives the unconditional one."""
        text = self.config.t2i_template.format(caption=caption) if caption else ""
        return [Message("user", text)]

    def collate(self, examples: Sequence[Example], padding_side: str = "right") -> dict:
        """Pads a batch: input_ids, attention_mask, labels [B, T], pixel_values [I, 3, H, W] or None.
        With a packed example in the batch (right padding only), attention_mask is instead the
        additive mask [B, 1, T, T] of the packing rule, and position_ids [B, T] come too."""
        if any(e.segments is not None for e in examples):
            return self._collate_packed(examples, padding_side)
        width = max(len(e.input_ids) for e in examples)
        pad = self.tokenizer.pad_token_id
        rows, masks, labels = [], [], []
        for e in examples:
            n = width - len(e.input_ids)
            fill, ones = [pad] * n, [1] * len(e.input_ids)
            if padding_side == "right":
                rows.append(e.input_ids + fill)
                masks.append(ones + [0] * n)
                labels.append(e.labels + [IGNORE] * n)
            else:
                rows.append(fill + e.input_ids)
                masks.append([0] * n + ones)
                labels.append([IGNORE] * n + e.labels)
        images = [im for e in examples for im in e.images]
        return {
            "input_ids": torch.tensor(rows, dtype=torch.long),
            "attention_mask": torch.tensor(masks, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "pixel_values": self.pixel_values(images) if images else None,
        }

    def _collate_packed(self, examples: Sequence[Example], padding_side: str) -> dict:
        if padding_side != "right":
            raise ValueError("packed examples are for training: collate them with right padding")
        plain = self.collate([Example(e.input_ids, e.labels, e.images) for e in examples])
        batch, width = plain["input_ids"].shape
        segments = torch.zeros(batch, width, dtype=torch.long)
        positions = torch.arange(width).repeat(batch, 1)
        for b, e in enumerate(examples):
            if e.segments is not None:
                segments[b, : len(e.segments)] = torch.tensor(e.segments)
                positions[b, : len(e.position_ids)] = torch.tensor(e.position_ids)
        real = plain["attention_mask"].bool()  # [B, T]
        seg_q, seg_k = segments[:, :, None], segments[:, None, :]  # [B, T, 1], [B, 1, T]
        allowed = (
            torch.ones(width, width, dtype=torch.bool).tril()
            & ((seg_k == 0) | (seg_k == seg_q))
            & real[:, None, :]
        )  # [B, T, T]
        allowed |= torch.eye(width, dtype=torch.bool)  # a padding query sees itself: no NaN rows
        mask = torch.zeros(batch, 1, width, width)
        mask.masked_fill_(~allowed[:, None], torch.finfo(mask.dtype).min)
        return plain | {"attention_mask": mask, "position_ids": positions}
