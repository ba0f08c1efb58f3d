"""Conversation data for the MLLM stages: LLaVA-style JSON, mixed by weight, on StatefulDataLoader.

A source is a LLaVA-style `.json` list (or `.jsonl`, one object per line) of
`{"id", "image": path | "images": [paths], "conversations": [{"from": "human"|"gpt", "value"}]}`;
each `<image>` in a value takes the next image of the entry, in order. In a human turn it is an
input image (seen through the vision tower); in a gpt turn an output image (written as vision
tokens, its codes from the tokenizer). Several sources mix with weights: a source of weight w
contributes w times its size per epoch (whole repeats, then a seeded subset), so the mixture is
fixed and a StatefulDataLoader resumes it exactly. Bad images are skipped and counted.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
from torch.utils.data import Dataset
from torchdata.stateful_dataloader import StatefulDataLoader

from illume_core import ImageLimits, ImageLoadError, load_image

from .data import ManifestError, make_loader

IMAGE = "<image>"
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


@dataclass(frozen=True)
class Conversation:
    """turns: [(role, value)] with `<image>` placeholders; images: the entry's paths in order."""

    id: str
    turns: tuple[tuple[str, str], ...]
    images: tuple[str, ...]

    def length(self, image_chars: int = 256) -> int:
        """A rough size for grouping batches by length: characters of text, each image counted
        as `image_chars` (a ShapesWorld image is 73 tokens, about 250 characters of text)."""
        return sum(len(v.replace(IMAGE, "")) for _, v in self.turns) + image_chars * len(
            self.images
        )


def _entries(path: Path) -> list[tuple[int, object]]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        out = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    out.append((number, json.loads(line)))
                except json.JSONDecodeError as err:
                    raise ManifestError(
                        f"{path}, line {number}: not valid JSON ({err.msg})"
                    ) from None
        return out
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ManifestError(f"{path}, line {err.lineno}: not valid JSON ({err.msg})") from None
    if not isinstance(data, list):
        raise ManifestError(f"{path}: expected a JSON list of conversations")
    return [(i + 1, entry) for i, entry in enumerate(data)]


def read_conversations(path: str | os.PathLike) -> list[Conversation]:
    """Conversations of a LLaVA-style file; image paths resolved against the file's folder."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: no such conversation file")
    out = []
    for number, entry in _entries(path):
        where = f"{path}, {'line' if path.suffix == '.jsonl' else 'entry'} {number}"
        if not isinstance(entry, dict) or not isinstance(entry.get("conversations"), list):
            raise ManifestError(f'{where}: expected an object with a "conversations" list')
        images = entry.get("images", [entry["image"]] if "image" in entry else [])
        turns = []
        for turn in entry["conversations"]:
            if (
                not isinstance(turn, dict)
                or turn.get("from") not in ROLES
                or not isinstance(turn.get("value"), str)
            ):
                raise ManifestError(
                    f'{where}: every turn needs "from" (human/gpt) and a string "value"'
                )
            turns.append((ROLES[turn["from"]], turn["value"]))
        placeholders = sum(value.count(IMAGE) for _, value in turns)
        if placeholders != len(images):
            raise ManifestError(
                f"{where}: {placeholders} <image> placeholders but {len(images)} images"
            )
        out.append(
            Conversation(
                str(entry.get("id", number)),
                tuple(turns),
                tuple(str(path.parent / p) for p in images),
            )
        )
    return out


class ConversationDataset(Dataset):
    """Items {"turns", "inputs": {placeholder index: PIL image}, "outputs": {index: path}, "index"},
    or {"error", "index"} when an image cannot be loaded."""

    def __init__(self, conversations: list[Conversation], limits: ImageLimits | None = None):
        self.conversations = conversations
        self.limits = limits or ImageLimits()

    def __len__(self) -> int:
        return len(self.conversations)

    def __getitem__(self, index: int) -> dict:
        conv = self.conversations[index]
        inputs, outputs, k = {}, {}, 0
        for role, value in conv.turns:
            for _ in range(value.count(IMAGE)):
                if role == "user":
                    try:
                        inputs[k] = load_image(conv.images[k], limits=self.limits)
                    except ImageLoadError as err:
                        return {"error": str(err), "index": index}
                else:
                    if not Path(conv.images[k]).is_file():
                        return {"error": f"{conv.images[k]}: no such file", "index": index}
                    outputs[k] = conv.images[k]
                k += 1
        return {
            "turns": conv.turns,
            "inputs": inputs,
            "outputs": outputs,
            "index": index,
            "id": conv.id,
        }


def collate_conversations(items: list[dict]) -> dict:
    good = [item for item in items if "turns" in item]
    return {
        "items": good,
        "skipped": len(items) - len(good),
        "errors": [item["error"] for item in items if "error" in item],
        "ok": ["turns" in item for item in items],
    }


def mix(sizes: list[int], weights: list[float], seed: int) -> list[tuple[int, int]]:
    """(source, index) pairs: each source `weight` times over (whole repeats + a seeded subset)."""
    rng = np.random.default_rng(seed)
    out = []
    for source, (size, weight) in enumerate(zip(sizes, weights, strict=True)):
        if weight < 0:
            raise ValueError(f"source weights must be >= 0, got {weight}")
        whole, part = int(weight), weight - int(weight)
        indices = list(range(size)) * whole + sorted(
            rng.permutation(size)[: round(part * size)].tolist()
        )
        out += [(source, i) for i in indices]
    return out


class ConversationDataModule(L.LightningDataModule):
    """Args:
    train: conversation files (.json / .jsonl, LLaVA style).
    weights: one per train file (default 1 each): how many times over it is used per epoch.
    val: conversation files for validation.
    batch_size, num_workers, seed: the loader's.
    group_by_length: batch conversations of similar length together (LengthGroupedSampler), so
        long multi-turn ones do not pad short ones; the order stays a function of the seed.
    """

    def __init__(
        self,
        train: list[str],
        weights: list[float] | None = None,
        val: list[str] | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        group_by_length: bool = False,
    ):
        super().__init__()
        if weights is not None and len(weights) != len(train):
            raise ValueError(
                f"{len(weights)} weights for {len(train)} train files: give one per file"
            )
        self.save_hyperparameters()
        self.train_set: list[Conversation] = []
        self.val_set: list[Conversation] = []

    def setup(self, stage: str | None = None) -> None:
        if self.train_set:
            return
        sources = [read_conversations(p) for p in self.hparams.train]
        weights = self.hparams.weights or [1.0] * len(sources)
        order = mix([len(s) for s in sources], list(weights), self.hparams.seed)
        self.train_set = [sources[s][i] for s, i in order]
        self.val_set = [c for p in (self.hparams.val or []) for c in read_conversations(p)]

    def texts(self) -> list[str]:
        """Every turn's text (placeholders removed): what a ShapesWorld word tokenizer learns from."""
        self.setup()
        return [v.replace(IMAGE, " ") for c in [*self.train_set, *self.val_set] for _, v in c.turns]

    def _loader(self, conversations, shuffle: bool) -> StatefulDataLoader:
        return make_loader(
            ConversationDataset(conversations), collate_conversations, self.hparams.batch_size,
            shuffle, self.hparams.num_workers, self.hparams.seed, self.trainer,
            [c.length() for c in conversations] if self.hparams.group_by_length else None,
        )  # fmt: skip

    def train_dataloader(self) -> StatefulDataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self):
        return self._loader(self.val_set, shuffle=False) if self.val_set else []
