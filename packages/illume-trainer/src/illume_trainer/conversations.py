"""Conversation data for the MLLM stages: LLaVA-style JSON, mixed by weight, on StatefulDataLoader.

A source is a LLaVA-style `.json` list (or `.jsonl`, one object per line) of
`{"id", "image": path | "images": [paths], "conversations": [{"from": "human"|"gpt", "value"}]}`;
each `<image>` in a value takes the next image of the entry, in order. In a human turn it is an
input image (seen through the vision tower); in a gpt turn an output image (written as vision
tokens, its codes from the tokenizer). Several sources mix with weights: a source of weight w
contributes w times its size per epoch (whole repeats, then a seeded subset), so the mixture is
fixed and a StatefulDataLoader resumes it exactly. Bad images are skipped and counted.

A source can be packed by image (`pack_by_image`): its conversations that ask about the same
input images (all of them at the start of the first turn, as in VQA data with one question per
entry) become one `Pack`, trained as one sequence with the images once and each conversation
masked from the others (`IllumeProcessor.pack`): the same loss as apart, ~3x fewer tokens for
ShapesWorld's ~9 questions an image. Its weight then counts packs.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from torchdata.stateful_dataloader import StatefulDataLoader

from illume_core import (
    MAX_DATA_BYTES,
    ImageLimits,
    ImageLoadError,
    UnsafePathError,
    load_image,
    read_text,
    resolve_inside,
)

from .data import ManifestError, make_loader
from .samples import IMAGE, ROLES, BadSample, ConversationSample, PackSample, Sample


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


@dataclass(frozen=True)
class Pack:
    """Conversations about the same input images, trained as one packed sequence."""

    conversations: tuple[Conversation, ...]

    @property
    def id(self) -> str:
        return self.conversations[0].id

    @property
    def turns(self) -> tuple[tuple[str, str], ...]:
        return tuple(t for c in self.conversations for t in c.turns)

    def length(self, image_chars: int = 256) -> int:
        first = self.conversations[0]
        return first.length(image_chars) + sum(c.length(0) for c in self.conversations[1:])


def _asks_about_its_images(conversation: Conversation) -> bool:
    """Every image is an input at the very start of the first turn (what packing shares)."""
    (role, first), n = conversation.turns[0], len(conversation.images)
    head = first.split(IMAGE)
    return (
        n > 0
        and role == "user"
        and first.count(IMAGE) == n
        and sum(v.count(IMAGE) for _, v in conversation.turns) == n
        and all(not part.strip() for part in head[:-1])
    )


def pack_by_image(
    conversations: list[Conversation], max_pack: int = 16
) -> list[Conversation | Pack]:
    """Groups the conversations that ask about the same images into packs of at most `max_pack`,
    in order of first appearance; the rest, and groups of one, stay as they are."""
    groups: dict[tuple[str, ...], list[Conversation]] = {}
    out: list[Conversation | Pack | tuple[str, ...]] = []
    for c in conversations:
        if _asks_about_its_images(c):
            if c.images not in groups:
                groups[c.images] = []
                out.append(c.images)  # the group's place in the order
            groups[c.images].append(c)
        else:
            out.append(c)
    packed: list[Conversation | Pack] = []
    for entry in out:
        if not isinstance(entry, tuple):
            packed.append(entry)
            continue
        group = groups[entry]
        for start in range(0, len(group), max_pack):
            chunk = tuple(group[start : start + max_pack])
            packed.append(chunk[0] if len(chunk) == 1 else Pack(chunk))
    return packed


def _entries(path: Path) -> list[tuple[int, object]]:
    text = read_text(path, MAX_DATA_BYTES)
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


def read_conversations(
    path: str | os.PathLike, allow_absolute_paths: bool = False
) -> list[Conversation]:
    """Conversations of a LLaVA-style file; image paths resolved inside the file's folder
    (`illume_core.resolve_inside`: a path that leaves it is an error naming the entry; an
    absolute one only with `allow_absolute_paths`)."""
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
        try:
            resolved = tuple(
                str(resolve_inside(path.parent, p, allow_absolute=allow_absolute_paths))
                for p in images
            )
        except (UnsafePathError, TypeError) as err:
            raise ManifestError(f"{where}: {err}") from None
        out.append(Conversation(str(entry.get("id", number)), tuple(turns), resolved))
    return out


class ConversationDataset(Dataset):
    """A ConversationSample per conversation, a PackSample per Pack, a BadSample where an image
    cannot be loaded."""

    def __init__(self, conversations: list[Conversation | Pack], limits: ImageLimits | None = None):
        self.conversations = conversations
        self.limits = limits or ImageLimits()

    def __len__(self) -> int:
        return len(self.conversations)

    def __getitem__(self, index: int) -> Sample:
        entry = self.conversations[index]
        if isinstance(entry, Pack):
            images: dict[str, Image.Image] = {}  # the shared images, loaded once
            samples = [self._sample(c, index, images) for c in entry.conversations]
            bad = next((s for s in samples if isinstance(s, BadSample)), None)
            return bad or PackSample(entry.id, index, tuple(samples))  # type: ignore[arg-type]
        return self._sample(entry, index, {})

    def _sample(
        self, conv: Conversation, index: int, loaded: dict
    ) -> ConversationSample | BadSample:
        inputs, input_paths, outputs, k = {}, {}, {}, 0
        for role, value in conv.turns:
            for _ in range(value.count(IMAGE)):
                if role == "user":
                    try:
                        path = conv.images[k]
                        if path not in loaded:
                            loaded[path] = load_image(path, limits=self.limits)
                        inputs[k], input_paths[k] = loaded[path], path
                    except ImageLoadError as err:
                        return BadSample(index, str(err))
                else:
                    if not Path(conv.images[k]).is_file():
                        return BadSample(index, f"{conv.images[k]}: no such file")
                    outputs[k] = conv.images[k]
                k += 1
        return ConversationSample(conv.id, index, conv.turns, inputs, input_paths, outputs)


def collate_conversations(samples: list[Sample]) -> dict:
    good = [s for s in samples if not isinstance(s, BadSample)]
    return {
        "items": good,
        "skipped": len(samples) - len(good),
        "errors": [s.error for s in samples if isinstance(s, BadSample)],
        "ok": [not isinstance(s, BadSample) for s in samples],
        "shard_lost": [isinstance(s, BadSample) and s.whole_shard for s in samples],
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
    pack_by_image: one flag per train file: pack its conversations about the same images (see
        the module docstring), at most `max_pack` to a sequence.
    allow_absolute_paths: accept absolute image paths in the files (by default a path is relative
        to its file and must stay inside the file's folder).
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
        pack_by_image: list[bool] | None = None,
        max_pack: int = 16,
        allow_absolute_paths: bool = False,
    ):
        super().__init__()
        if weights is not None and len(weights) != len(train):
            raise ValueError(
                f"{len(weights)} weights for {len(train)} train files: give one per file"
            )
        if pack_by_image is not None and len(pack_by_image) != len(train):
            raise ValueError(
                f"{len(pack_by_image)} pack_by_image flags for {len(train)} train files: give one per file"
            )
        if max_pack < 1:
            raise ValueError(f"max_pack must be at least 1, got {max_pack}")
        self.save_hyperparameters()
        self.train_set: list[Conversation | Pack] = []
        self.val_set: list[Conversation] = []
        self.stream = None  # a ShardStream when the training files are shard directories

    @property
    def streaming(self) -> bool:
        """Whether the training files are shard directories (illume_trainer.shards), streamed."""
        from .shards import is_shard_source

        kinds = {is_shard_source(p) for p in self.hparams.train}
        if len(kinds) > 1:
            raise ManifestError(
                "train mixes conversation files and shard directories: pack the files too "
                "(`illume data pack FILE --out DIR`) and list the directories"
            )
        return kinds == {True}

    def setup(self, stage: str | None = None) -> None:
        if self.train_set or self.stream is not None:
            return
        if self.streaming:
            self._setup_stream()
            return
        packing = self.hparams.pack_by_image or [False] * len(self.hparams.train)
        absolute = self.hparams.allow_absolute_paths
        sources = [
            pack_by_image(read_conversations(p, absolute), self.hparams.max_pack)
            if pack
            else read_conversations(p, absolute)
            for p, pack in zip(self.hparams.train, packing, strict=True)
        ]
        weights = self.hparams.weights or [1.0] * len(sources)
        order = mix([len(s) for s in sources], list(weights), self.hparams.seed)
        self.train_set = [sources[s][i] for s, i in order]
        self.val_set = [
            c for p in (self.hparams.val or []) for c in read_conversations(p, absolute)
        ]

    def _setup_stream(self) -> None:
        from .shards import ShardStream

        hp = self.hparams
        if any(hp.pack_by_image or []):
            raise ValueError(
                "pack_by_image is decided when shards are made (`illume data pack "
                "--pack-by-image`): drop it from the data settings of a shard-directory run"
            )
        if hp.group_by_length:
            raise ValueError(
                "group_by_length needs the whole dataset in memory; shards stream: set "
                "group_by_length: false"
            )
        trainer = self.trainer
        self.stream = ShardStream(
            hp.train,
            hp.weights,
            seed=hp.seed,
            rank=trainer.global_rank if trainer is not None else None,
            world=trainer.world_size if trainer is not None else None,
        )
        self.val_set = [
            c for p in (hp.val or []) for c in read_conversations(p, hp.allow_absolute_paths)
        ]

    def code_fingerprints(self) -> dict[str, str]:
        """{shard directory: fingerprint of the tokenizer its codes came from}, for the sources
        packed with codes (illume_trainer.shards.tokenizer_fingerprint)."""
        self.setup()
        if self.stream is None:
            return {}
        return {str(s.root): s.fingerprint for s in self.stream.sources if s.fingerprint}

    def texts(self) -> list[str]:
        """Every turn's text (placeholders removed): what a ShapesWorld word tokenizer learns from."""
        self.setup()
        val = [v.replace(IMAGE, " ") for c in self.val_set for _, v in c.turns]
        if self.stream is not None:
            return [
                turn["value"].replace(IMAGE, " ")
                for source in self.stream.sources
                for entry in source.entries()
                for conversation in entry.get("pack", [entry.get("conversations", [])])
                for turn in conversation
            ] + val
        return [v.replace(IMAGE, " ") for c in self.train_set for _, v in c.turns] + val

    def _loader(self, conversations, shuffle: bool) -> StatefulDataLoader:
        return make_loader(
            ConversationDataset(conversations),
            collate_conversations,
            self.hparams.batch_size,
            shuffle,
            self.hparams.num_workers,
            self.hparams.seed,
            self.trainer,
            [c.length() for c in conversations] if self.hparams.group_by_length else None,
        )

    def train_dataloader(self) -> StatefulDataLoader:
        if self.stream is not None:
            from .shards import ShardLoader

            workers = self.hparams.num_workers
            return ShardLoader(
                self.stream,
                batch_size=self.hparams.batch_size,
                num_workers=workers,
                collate_fn=collate_conversations,
                persistent_workers=workers > 0,
            )
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self):
        return self._loader(self.val_set, shuffle=False) if self.val_set else []
