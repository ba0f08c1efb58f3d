"""`IllumeProcessor`: text tokenizer + image processor + chat template + the image-token layout.

Conversations are lists of `illume_core.Message`s whose content interleaves text, input images
(PIL, shown to the model through the vision tower) and output images (code grids `[h, w]`, written
by the model as vision tokens). A Jinja chat template lays them out (`CHAT_TEMPLATES`: "vicuna"
for the 7B recipes, "shapes" for ShapesWorld, "chatml" for the Qwen2 family), saved with the
processor and its tokenizer as `chat_template.jinja`. Vicuna's:

    <s>{system} USER: <image>x N\n{question} ASSISTANT: {answer}</s>USER: ... ASSISTANT:
    <start_of_image><image_c> .. <end_of_line> .. <end_of_image></s>

Training labels are -100 everywhere except what the template marks `{% generation %}`: the
assistant answers and their end-of-turn token.

It is a transformers `ProcessorMixin`, registered for `IllumeConfig`, so
`AutoProcessor.from_pretrained(mllm_dir)` returns it; `processor(text=..., images=...)` and
`processor.apply_chat_template(...)` work as for any transformers processor.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from itertools import pairwise
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from transformers import AutoProcessor, BatchFeature, ProcessorMixin
from transformers.utils.chat_template_utils import render_jinja_template

from illume_core import Config, Message, read_json

from .modeling import IllumeConfig
from .vocab import VisionVocab, vocab_of

IGNORE = -100
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
CHAT_FORMATS = ("vicuna", "shapes", "chatml")


@cache
def shipped_chat_template(name: str) -> str:
    """The Jinja text of a shipped chat template (`CHAT_FORMATS`)."""
    if name not in CHAT_FORMATS:
        raise ValueError(f"no chat template {name!r}; shipped: {', '.join(CHAT_FORMATS)}")
    return resources.files(__package__).joinpath(f"chat_templates/{name}.jinja").read_text()


def chat_template_words(chat_template: str) -> str:
    """What a chat template writes around the messages of a question and its answer (their text
    and the special tokens left out, e.g. "USER:ASSISTANT:"): a tokenizer trained for the template
    should know these words whole, or every conversation spends tokens spelling them."""
    (text,), _ = render_jinja_template(
        [[{"role": "user", "content": ""}, {"role": "assistant", "content": ""}]],
        chat_template=chat_template, bos_token="", eos_token="", pad_token="", unk_token="",
    )  # fmt: skip
    return text


@dataclass
class ProcessorConfig(Config):
    """How conversations become token ids."""

    codebook_size: int = 1024
    image_grid: tuple[int, int] = (8, 8)
    """(h, w) of generated code grids."""
    image_seq_length: int = 64
    """N, understanding slots per input image (the vision tower's patch count)."""
    system_prompt: str = VICUNA_SYSTEM
    """Every conversation's system message (one the caller gives is replaced: the model was
    trained with this one); empty: none."""
    chat_format: str = "vicuna"
    """The shipped chat template (`CHAT_FORMATS`) a new processor is built with; a saved one uses
    its own `chat_template.jinja`."""
    t2i_template: str = "Generate an image of {caption}."
    """How `generate_image(prompt)` asks for an image (ShapesWorld trains on this phrasing among others)."""
    edit_source_codes: bool = False
    """Show each input image of a drawing request (an edit) twice: as adapter features, then as
    its vision-token codes (`with_source_codes`), so the cells an edit leaves alone can be copied
    token for token instead of redrawn from features. Not in the paper, whose edits see features
    only; questions about an image never carry its codes."""

    presets: ClassVar[dict] = {"shapes": {"system_prompt": "", "chat_format": "shapes"}}

    def __post_init__(self):
        if self.chat_format not in CHAT_FORMATS:
            raise ValueError(
                f"chat_format {self.chat_format!r} is not shipped; choose one of {', '.join(CHAT_FORMATS)}"
            )


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


# A content part the template writes as it is given, then read back as the part it stands for:
# text is tokenized as text and code grids as vision tokens, whatever the template does around them.
_SLOT = re.compile("\ue000(\\d+)\ue001")
_SLOT_CHARS = ("\ue000", "\ue001")


def _slot(k: int) -> str:
    return f"\ue000{k}\ue001"


def _encode_pieces(tokenizer, pieces: list[tuple[str, bool, bool]]) -> list[list[int]]:
    """Ids of pieces of a rendered chat, (text, as_text, first) each. `as_text`: added tokens
    spelled in the piece stay characters. A piece but the first is encoded after a newline that
    is then dropped, so a SentencePiece tokenizer adds no word-start space a whole-string encoding
    would not have (transformers' trick in `encode_marked_chat`).

    A fast tokenizer's backend encodes each piece directly: a conversation is a dozen short
    pieces, and the wrapper's batch call (with its thread pool) costs more than they do."""
    backend = getattr(tokenizer, "backend_tokenizer", None)

    def encode(text: str, as_text: bool) -> list[int]:
        if backend is None:
            return tokenizer(text, add_special_tokens=False, split_special_tokens=as_text)[
                "input_ids"
            ]
        backend.encode_special_tokens = as_text
        return backend.encode(text, add_special_tokens=False).ids

    saved = backend.encode_special_tokens if backend is not None else None
    try:
        newline = {t: encode("\n", t) for t in (True, False)}
        out = []
        for text, as_text, first in pieces:
            if first:
                out.append(encode(text, as_text))
                continue
            ids = encode("\n" + text, as_text)
            cut = newline[as_text]
            # the newline merged with the piece: encode the piece alone
            out.append(ids[len(cut) :] if ids[: len(cut)] == cut else encode(text, as_text))
        return out
    finally:
        if backend is not None:
            backend.encode_special_tokens = saved


def encode_chat(
    tokenizer,
    template: str,
    messages: Sequence[Message],
    system_prompt: str = "",
    add_generation_prompt: bool = False,
    image_token: int | None = None,
    image_slots: int = 1,
    codes_ids: Callable[[torch.Tensor], list[int]] | None = None,
) -> tuple[list[int], list[int], list[Image.Image]]:
    """A conversation laid out by a Jinja chat template -> (ids, labels, input images).

    Text parts are tokenized as text, never as control tokens: a "<image>" or "</s>" a user typed
    stays characters. Only the template writes control tokens: each `image_token` it writes
    becomes `image_slots` of them (one per adapter output), and output code grids [h, w] become
    `codes_ids(grid)`. Labels: the ids inside the template's `{% generation %}` blocks; -100
    elsewhere."""
    parts: list[Any] = []  # what each slot stands for: text, or a code grid [h, w]
    images: list[Image.Image] = []

    def slot(value) -> str:
        parts.append(value)
        return _slot(len(parts) - 1)

    chat = []
    if system_prompt:
        chat.append({"role": "system", "content": [{"type": "text", "text": slot(system_prompt)}]})
    for message in messages:
        if message.role == "system":
            continue  # the system prompt is the processor's: the model was trained with it
        content = []
        for part in message.parts:
            if isinstance(part, str):
                if any(c in part for c in _SLOT_CHARS):
                    part = part.replace(_SLOT_CHARS[0], "").replace(_SLOT_CHARS[1], "")
                content.append({"type": "text", "text": slot(part)})
            elif isinstance(part, Image.Image):
                if message.role != "user":
                    raise ValueError(
                        "input images belong in user turns; assistant images are codes"
                    )
                images.append(part)
                content.append({"type": "image"})
            elif _is_codes(part):
                content.append({"type": "output_image", "text": slot(torch.as_tensor(part))})
            else:
                raise TypeError(
                    f"message parts are str, PIL images or code grids, got {type(part).__name__}"
                )
        chat.append({"role": message.role, "content": content})
    if add_generation_prompt and (not messages or messages[-1].role != "user"):
        raise ValueError("a generation prompt needs the conversation to end with a user turn")
    (rendered,), (spans,) = render_jinja_template(
        [chat], chat_template=template, return_assistant_tokens_mask=True,
        add_generation_prompt=add_generation_prompt, **tokenizer.special_tokens_map,
    )  # fmt: skip

    # cut the rendered chat where a slot or a generation block starts or ends; a template piece
    # goes to the tokenizer whole (it splits off the added tokens in it, as it would alone)
    cuts = {0, len(rendered)} | {i for span in spans for i in span}
    for m in _SLOT.finditer(rendered):
        cuts |= {m.start(), m.end()}
    pieces, values = [], []  # what each piece is: text to tokenize, or a code grid
    for start, stop in pairwise(sorted(cuts)):
        piece = rendered[start:stop]
        slot_match = _SLOT.fullmatch(piece)
        value = parts[int(slot_match.group(1))] if slot_match else piece
        if isinstance(value, str) and not value:
            continue
        learn = any(a <= start and stop <= b for a, b in spans)
        values.append((value, bool(slot_match), learn))
        if isinstance(value, str):
            pieces.append((value, bool(slot_match), not pieces))
    encoded = iter(_encode_pieces(tokenizer, pieces))
    ids: list[int] = []
    labels: list[int] = []
    shown = 0
    for value, from_slot, learn in values:
        if not isinstance(value, str):
            if codes_ids is None:
                raise ValueError("this tokenizer has no vision vocabulary to write code grids in")
            new = codes_ids(value)
        else:
            new = next(encoded)
            if not from_slot and image_token is not None and image_token in new:
                shown += new.count(image_token)
                expanded: list[int] = []
                for token in new:
                    expanded += [token] * image_slots if token == image_token else [token]
                new = expanded
        ids += new
        labels += new if learn else [IGNORE] * len(new)
    if shown != len(images):
        raise ValueError(
            f"the chat template placed {shown} image tokens for {len(images)} input images"
        )
    return ids, labels, images


def as_messages(conversation) -> list[Message]:
    """`Message`s, or transformers' chat dicts ({"role", "content": str or a list of
    {"type": "text", "text"} / {"type": "image", "image": PIL image}}), as `Message`s."""
    messages = []
    for message in conversation:
        if isinstance(message, Message):
            messages.append(message)
            continue
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ValueError(f"a chat message is a dict with role and content, got {message!r}")
        content = message["content"]
        if isinstance(content, str):
            messages.append(Message(message["role"], content))
            continue
        parts = []
        for item in content:
            kind = item.get("type") if isinstance(item, dict) else None
            if kind == "text":
                parts.append(item["text"])
            elif kind == "image" and isinstance(item.get("image"), Image.Image):
                parts.append(item["image"])
            elif kind == "image":
                raise ValueError(
                    'an image part needs the image itself, {"type": "image", "image": <PIL image>} '
                    "(the processor opens no URLs or paths)"
                )
            else:
                raise ValueError(f"content parts are text or image dicts, got {item!r}")
        messages.append(Message(message["role"], parts))
    return messages


class IllumeProcessor(ProcessorMixin):
    """Builds model inputs from conversations and reads generated image tokens back as codes."""

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        chat_template: str | None = None,
        config: ProcessorConfig | dict | None = None,
        **kwargs,
    ):
        if isinstance(config, dict):
            config = ProcessorConfig.from_dict(config)
        self.config = config or ProcessorConfig()
        if chat_template is None:
            chat_template = shipped_chat_template(self.config.chat_format)
        super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)
        # the tokenizer carries the template too: its own apply_chat_template lays text out alike
        tokenizer.chat_template = chat_template
        self.vocab: VisionVocab = vocab_of(tokenizer, self.config.codebook_size)
        if tokenizer.eos_token_id is None or tokenizer.pad_token_id is None:
            raise ValueError("the text tokenizer needs eos and pad tokens")

    # -- persistence ------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "config": self.config.to_dict()}

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> list[str]:
        """The tokenizer, image processor, `chat_template.jinja` and `processor_config.json`
        (with the ProcessorConfig), loadable by `AutoProcessor.from_pretrained`."""
        return super().save_pretrained(os.fspath(save_directory), **kwargs)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, **kwargs) -> IllumeProcessor:
        directory = Path(directory)
        if (
            not (directory / "processor_config.json").is_file()
            and (directory / "illume_processor.json").is_file()
        ):
            return cls._from_legacy(directory)
        return super().from_pretrained(directory, **kwargs)

    @classmethod
    def _from_legacy(cls, directory: Path) -> IllumeProcessor:
        """A directory saved before the chat templates: its USER:/ASSISTANT: pieces, tokenized
        apart, are the "shapes" template's, whatever its system prompt."""
        from transformers import AutoImageProcessor, AutoTokenizer

        values = read_json(directory / "illume_processor.json")
        prefixes = (
            values.pop("user_prefix", "USER:"),
            values.pop("assistant_prefix", "ASSISTANT:"),
        )
        if prefixes != ("USER:", "ASSISTANT:"):
            raise ValueError(
                f"{directory}/illume_processor.json has turn prefixes {prefixes}, which no shipped "
                "chat template writes: save a chat_template.jinja that does"
            )
        return cls(
            AutoImageProcessor.from_pretrained(directory),
            AutoTokenizer.from_pretrained(directory),
            chat_template=shipped_chat_template("shapes"),
            config=ProcessorConfig.from_dict(values, chat_format="shapes"),
        )

    # -- the transformers processor interface ------------------------------------------------------

    def __call__(
        self,
        text: str | Sequence[str] | None = None,
        images: Image.Image | Sequence[Image.Image] | None = None,
        return_tensors: str = "pt",
        padding_side: str = "left",
        add_special_tokens: bool = False,
        **kwargs,
    ) -> BatchFeature:
        """Prompts already laid out (`apply_chat_template(..., tokenize=False)`) -> input_ids,
        attention_mask [B, T] and pixel_values [I, 3, H, W], each `<image>` in the text expanded
        to the N slots its image's features fill, as every transformers VLM processor does. The
        text is trusted as a layout: to keep what users typed from becoming control tokens, give
        their conversations to `apply_chat_template(..., tokenize=True)` instead.
        `add_special_tokens` is off: the chat templates write BOS themselves."""
        if kwargs:
            raise TypeError(f"IllumeProcessor takes no {', '.join(sorted(kwargs))}")
        if return_tensors != "pt":
            raise ValueError("IllumeProcessor returns PyTorch tensors only (return_tensors='pt')")
        texts = [text] if isinstance(text, str) else list(text or [])
        images = [images] if isinstance(images, Image.Image) else list(images or [])
        if not texts:
            raise ValueError("give the processor text (a prompt laid out by apply_chat_template)")
        examples, shown = [], 0
        for prompt in texts:
            ids: list[int] = []
            for token in self.tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"]:
                if token == self.vocab.image:
                    shown += 1
                    ids += [token] * self.config.image_seq_length
                else:
                    ids.append(token)
            examples.append(Example(ids, [IGNORE] * len(ids)))
        if shown != len(images):
            raise ValueError(f"the text has {shown} <image> placeholders for {len(images)} images")
        batch = self.collate(examples, padding_side=padding_side)
        batch.pop("labels")
        batch["pixel_values"] = self.pixel_values(images) if images else None
        return BatchFeature({k: v for k, v in batch.items() if v is not None})

    def apply_chat_template(
        self,
        conversation,
        add_generation_prompt: bool = False,
        tokenize: bool = False,
        return_dict: bool = False,
        return_tensors: str | None = "pt",
        return_assistant_tokens_mask: bool = False,
        padding_side: str = "left",
        **kwargs,
    ):
        """One conversation or a list of them (`Message`s, or transformers' message dicts whose
        content holds {"type": "text", "text": ...} and {"type": "image", "image": PIL image}) laid
        out by the chat template. `tokenize=False`: the text, input images as `<image>` and drawn
        images spelled as their vision tokens. `tokenize=True`: input_ids [B, T] (with
        `return_dict`, a BatchFeature with attention_mask, pixel_values and, asked for,
        assistant_masks), text tokenized as text: what users typed never becomes a control token."""
        if kwargs:
            raise TypeError(f"apply_chat_template takes no {', '.join(sorted(kwargs))}")
        batched = bool(conversation) and not isinstance(conversation[0], (Message, dict))
        conversations = [as_messages(c) for c in (conversation if batched else [conversation])]
        if not tokenize:
            texts = [self._render(c, add_generation_prompt) for c in conversations]
            return texts if batched else texts[0]
        if return_tensors not in ("pt", None):
            raise ValueError("IllumeProcessor returns PyTorch tensors only (return_tensors='pt')")
        examples = [self.encode_conversation(c, add_generation_prompt) for c in conversations]
        if return_tensors is None and not return_dict:
            ids = [e.input_ids for e in examples]
            return ids if batched else ids[0]
        batch = self.collate(examples, padding_side=padding_side)
        labels = batch.pop("labels")
        if return_assistant_tokens_mask:
            batch["assistant_masks"] = (labels != IGNORE).long()
        if not return_dict:
            return batch["input_ids"]
        return BatchFeature({k: v for k, v in batch.items() if v is not None})

    def _render(self, messages: Sequence[Message], add_generation_prompt: bool) -> str:
        chat = []
        if self.config.system_prompt:
            chat.append({"role": "system", "content": self.config.system_prompt})
        for message in messages:
            if message.role == "system":
                continue
            content = []
            for part in message.parts:
                if isinstance(part, str):
                    content.append({"type": "text", "text": part})
                elif isinstance(part, Image.Image):
                    content.append({"type": "image"})
                else:
                    tokens = self.tokenizer.convert_ids_to_tokens(self.image_output_ids(part))
                    content.append({"type": "output_image", "text": "".join(tokens)})
            chat.append({"role": message.role, "content": content})
        (text,), _ = render_jinja_template(
            [chat], chat_template=self.chat_template, add_generation_prompt=add_generation_prompt,
            **self.tokenizer.special_tokens_map,
        )  # fmt: skip
        return text

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

    def encode_conversation(
        self, messages: Sequence[Message], add_generation_prompt: bool = False
    ) -> Example:
        """Token ids, labels (assistant answers only) and input images of a conversation, laid out
        by the chat template; with `add_generation_prompt`, it ends in an open assistant turn to
        be completed by the model."""
        ids, labels, images = encode_chat(
            self.tokenizer,
            self.chat_template,
            messages,
            self.config.system_prompt,
            add_generation_prompt,
            image_token=self.vocab.image,
            image_slots=self.config.image_seq_length,
            codes_ids=self.image_output_ids,
        )
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


AutoProcessor.register(IllumeConfig, IllumeProcessor, exist_ok=True)
