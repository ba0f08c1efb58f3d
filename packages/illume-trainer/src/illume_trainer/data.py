"""Image data for the vision stages: captions JSONL manifests and image folders, on StatefulDataLoader.

A source is a captions manifest (`.jsonl`, lines `{"image": path, "text": caption, ...}`, paths
relative to the manifest; further keys are kept as the record's `meta`) or a folder of images
(searched recursively; no captions). Bad samples (missing,
corrupt or oversized images) are skipped and counted, never fatal one by one; a malformed manifest
line is an error that names the file and the line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchdata.stateful_dataloader import StatefulDataLoader
from torchdata.stateful_dataloader.sampler import StatefulDistributedSampler

from illume_core import (
    MAX_DATA_BYTES,
    ImageLimits,
    ImageLoadError,
    UnsafePathError,
    load_image,
    read_text,
    resolve_inside,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


class ManifestError(ValueError):
    """A manifest cannot be read; the message names the file and the line."""


@dataclass(frozen=True)
class Record:
    image: str
    text: str = ""
    meta: dict | None = None  # the manifest line's other keys (ShapesWorld: "scene", "spec")


def read_captions(path: str | os.PathLike, allow_absolute_paths: bool = False) -> list[Record]:
    """Records of a captions JSONL manifest; image paths resolved inside the manifest's folder
    (`illume_core.resolve_inside`: a path that leaves it is an error naming the line; an absolute
    one only with `allow_absolute_paths`)."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: no such manifest file")
    records = []
    # one bounded read: a FIFO or a device named as a manifest is refused, never read
    for number, line in enumerate(read_text(path, MAX_DATA_BYTES).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ManifestError(
                f"{path}, line {number}: not valid JSON ({err.msg}, column {err.colno})"
            ) from None
        if not isinstance(row, dict) or not isinstance(row.get("image"), str):
            raise ManifestError(
                f'{path}, line {number}: expected an object with an "image" path, got {line.strip()[:80]}'
            )
        text = row.get("text", "")
        if not isinstance(text, str):
            raise ManifestError(f'{path}, line {number}: "text" must be a string')
        meta = {k: v for k, v in row.items() if k not in ("image", "text")} or None
        try:
            image = resolve_inside(path.parent, row["image"], allow_absolute=allow_absolute_paths)
        except UnsafePathError as err:
            raise ManifestError(f"{path}, line {number}: {err}") from None
        records.append(Record(str(image), text, meta))
    return records


def read_source(source: str | os.PathLike, allow_absolute_paths: bool = False) -> list[Record]:
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ManifestError(f"{path}: the folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return [Record(str(p)) for p in files]
    if path.suffix == ".jsonl":
        return read_captions(path, allow_absolute_paths)
    raise ManifestError(f"{path}: expected a captions .jsonl manifest or a folder of images")


def to_tensor(image: Image.Image, size: int) -> torch.Tensor:
    """RGB PIL image -> [3, size, size] uint8 (bicubic resize when the size differs)."""
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


class ImageTextDataset(Dataset):
    """Items {"pixels": [3, S, S] uint8, "text": str, "meta": dict | None, "index": int}, or
    {"error": str, "index": int} for a bad sample."""

    def __init__(
        self, records: Sequence[Record], image_size: int, limits: ImageLimits | None = None
    ):
        self.records = list(records)
        self.image_size = image_size
        self.limits = limits or ImageLimits()

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        record = self.records[index]
        try:
            image = load_image(record.image, limits=self.limits)
        except ImageLoadError as err:
            return {"error": str(err), "index": index}
        return {
            "pixels": to_tensor(image, self.image_size),
            "text": record.text,
            "meta": record.meta,
            "index": index,
        }


def collate(items: list[dict]) -> dict:
    """Stacks the good items; bad ones are dropped and reported in `skipped` / `errors`."""
    good = [item for item in items if "pixels" in item]
    bad = [item for item in items if "pixels" not in item]
    batch = {
        "pixels": torch.stack([item["pixels"] for item in good])
        if good
        else torch.empty(0, 3, 1, 1, dtype=torch.uint8),
        "text": [item["text"] for item in good],
        "meta": [item["meta"] for item in good],
        "index": torch.tensor([item["index"] for item in good], dtype=torch.long),
        "skipped": len(bad),
        "errors": [item["error"] for item in bad],
        "ok": ["pixels" in item for item in items],  # in loader order, for the bad-sample ceiling
    }
    return batch


class LengthGroupedSampler(StatefulDistributedSampler):
    """The shuffled order of StatefulDistributedSampler, with each run of `batches_per_group`
    global batches sorted by length and the batches of the run then shuffled: a batch holds
    examples of similar length and pads little (LLaVA's length-grouped sampler; a long multi-turn
    conversation no longer pads 31 short ones to its length). Grouped over the *global* batch
    before sharding, so each process gets its share of the same global batches and DDP still
    trains like one process. Resumes like its parent (the `yielded` count)."""

    def __init__(
        self,
        dataset: Dataset,
        lengths: Sequence[int],
        batch_size: int,
        batches_per_group: int = 8,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
    ):
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        if len(lengths) != len(dataset):
            raise ValueError(f"{len(lengths)} lengths for a dataset of {len(dataset)}")
        self.lengths = list(lengths)
        self.global_batch = batch_size * num_replicas
        self.batches_per_group = batches_per_group

    def order(self) -> list[int]:
        """This process's indices for the current epoch (a function of seed and epoch)."""
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.dataset), generator=g).tolist()[: self.total_size]
        full = len(order) // self.global_batch * self.global_batch  # a partial batch stays last
        size = self.global_batch * self.batches_per_group
        grouped = []
        for start in range(0, full, size):
            run = sorted(order[start : min(start + size, full)], key=lambda i: -self.lengths[i])
            batches = [
                run[i : i + self.global_batch] for i in range(0, len(run), self.global_batch)
            ]
            for b in torch.randperm(len(batches), generator=g).tolist():
                grouped += batches[b]
        grouped += order[full:]
        return grouped[self.rank : self.total_size : self.num_replicas]

    def __iter__(self):
        self.yielded, self.next_yielded = self.next_yielded or 0, None
        for index in self.order()[self.yielded :]:
            self.yielded += 1
            yield index


def make_loader(
    dataset: Dataset,
    collate_fn,
    batch_size: int,
    shuffle: bool,
    num_workers: int,
    seed: int,
    trainer=None,
    lengths: Sequence[int] | None = None,
) -> StatefulDataLoader:
    """A StatefulDataLoader whose order is a function of (seed, epoch) and whose position is saved
    in checkpoints, so a resumed run sees exactly the batches the uninterrupted run would have.
    Under DDP each process reads its own shard (torchdata's StatefulDistributedSampler).
    `lengths` (one per example, shuffled loaders only): batches grouped by length."""
    world = trainer.world_size if trainer is not None else 1
    rank = trainer.global_rank if trainer is not None else 0
    # drop_last would give not one step: no error, no output
    if shuffle and len(dataset) < batch_size * world:
        raise ValueError(
            f"the training set has {len(dataset)} items, fewer than one global batch "
            f"({batch_size} x {world} processes), so training would take no step: lower "
            f"--data.batch_size or add data"
        )
    if lengths is not None and shuffle:
        sampler = LengthGroupedSampler(
            dataset, lengths, batch_size, num_replicas=world, rank=rank, seed=seed
        )
    else:
        sampler = StatefulDistributedSampler(
            dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed, drop_last=shuffle
        )
    return StatefulDataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_fn,
        drop_last=shuffle,
        persistent_workers=num_workers > 0,
    )


class ImageDataModule(L.LightningDataModule):
    """Images (and captions) from manifests or folders, batched by a StatefulDataLoader.

    Args:
        train: captions manifests (.jsonl) or image folders.
        val: the same, for validation (optional).
        image_size: side the images are resized to (the encoder's input size).
        batch_size: per process.
        num_workers: loader worker processes.
        seed: shuffling seed (the loader's state is checkpointed, so resume continues the epoch).
        allow_absolute_paths: accept absolute image paths in the manifests (by default a path is
            relative to its manifest and must stay inside the manifest's folder).
    """

    def __init__(
        self,
        train: list[str],
        val: list[str] | None = None,
        image_size: int = 32,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        allow_absolute_paths: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.train_records: list[Record] = []
        self.val_records: list[Record] = []

    def setup(self, stage: str | None = None) -> None:
        if not self.train_records:
            absolute = self.hparams.allow_absolute_paths
            self.train_records = [r for s in self.hparams.train for r in read_source(s, absolute)]
            self.val_records = [
                r for s in (self.hparams.val or []) for r in read_source(s, absolute)
            ]

    def texts(self) -> list[str]:
        self.setup()
        return [r.text for r in self.train_records if r.text]

    def _loader(self, records: list[Record], shuffle: bool) -> StatefulDataLoader:
        return make_loader(
            ImageTextDataset(records, self.hparams.image_size),
            collate,
            self.hparams.batch_size,
            shuffle,
            self.hparams.num_workers,
            self.hparams.seed,
            self.trainer,
        )

    def train_dataloader(self) -> StatefulDataLoader:
        return self._loader(self.train_records, shuffle=True)

    def val_dataloader(self):
        return self._loader(self.val_records, shuffle=False) if self.val_records else []
