"""Training data at scale: conversations packed into shards, streamed by every rank and worker.

The LLaVA-style JSON sources of `illume_trainer.conversations` are held whole in memory and every
rank reads every entry; an output image's codes are computed by the tokenizer as it is read. For
tens of millions of pairs, `illume data pack` (`illume_trainer.packing`) writes a source once as
shards, each output and input image with its tokenizer codes precomputed, and a `ShardStream`
reads them as a stream.

A packed directory:

    manifest.json        {"format": "illume-shards/1", "kind": "tar" | "parquet", "samples",
                          "bytes", "skipped", "skipped_examples", "tokenizer": {"fingerprint",
                          "grid", "codebook_size"} | null, "shards": [{"name", "samples",
                          "bytes", "sha256"}], "source": {...}}
    shard-000000.tar     WebDataset layout: KEY.json (the entry: "id", "conversations" in LLaVA
                         form, or "pack": [conversations] for questions about the same images,
                         "images": member suffixes, "codes": per image [h][w] or null) and
                         KEY.<k>.<ext>, its k-th image as the bytes it was packed from
    shard-000000.parquet the same, one row per sample: key, entry (the JSON), images (binary list)

A directory of Parquet files without a manifest (LLaVA data as the Hugging Face hub stores it:
columns "conversations", "image" or "images" as bytes or {"bytes": ...}, optional "id") streams
too: each row group is a shard, read from the files' metadata.

**Who reads what.** A stream's readers are its ranks x loader workers ("slots"). Each epoch of a
source orders its shards by a seeded permutation and deals them out: reader `slot` of `slots` takes
shards slot, slot + slots, ...; so the readers' shards are disjoint and cover the source once an
epoch, for any world size and worker count (a source needs at least one shard per reader). Inside
a shard the samples come in a seeded order. Several sources mix by weight (a source of weight w is
drawn w times its size for every sample of a source of weight 1, today's mixture in expectation),
each reader with its own seeded draws.

**Resume.** A reader's position is one number, the samples it has yielded: the source draws and
the places in the shards follow from it by arithmetic over the manifests, without reading data.
Ranks step together, so every rank's reader k has yielded as many samples as rank 0's; the
checkpoint Lightning writes from rank 0 therefore restores every rank exactly (the next batch
after a resume is the one the uninterrupted run would have drawn). With another worker count or
world size the exact order cannot be kept: `ShardLoader` then works out, from the saved
positions, what every old reader had consumed in each epoch, and the new readers share out the
rest: every sample of an epoch is still read once and none twice, in another order (said in a
warning).

**Bad data.** An image that cannot be read makes its sample a `BadSample`, as for JSON sources.
A shard that cannot be read at all (truncated, not a tar, a broken entry) yields one `BadSample`
per sample the manifest gives it, marked `whole_shard`, so positions stay arithmetic and the
bad-sample ceiling (illume_trainer.guards) counts each lost sample once; the rest of the source is
untouched.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tarfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info
from torchdata.stateful_dataloader import StatefulDataLoader

from illume_core import (
    ImageLimits,
    ImageLoadError,
    load_image,
    read_json,
    resolve_inside,
)

from .data import ManifestError
from .samples import IMAGE, ROLES, BadSample, ConversationSample, PackSample

log = logging.getLogger(__name__)

FORMAT = "illume-shards/1"
MANIFEST = "manifest.json"
PARTIAL = "manifest.partial.json"
KINDS = ("tar", "parquet")
#: one JSON entry of a shard is at most this big (a conversation and its codes)
MAX_ENTRY_BYTES = 16 << 20


class StaleCodesError(ValueError):
    """The shards' codes were made by another tokenizer than the one training uses."""


# -- the tokenizer's identity -----------------------------------------------------------------------


def tokenizer_fingerprint(directory: str | os.PathLike) -> str:
    """SHA-256 over a saved vision tokenizer's files (config, weights, its encoder; the model
    card left out): codes made by one tokenizer are only valid for a tokenizer with the same
    fingerprint. An encoder stored by reference (an absolute path in config.json) is hashed too."""
    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise ManifestError(f"{directory}: not a saved vision tokenizer (no config.json)")
    digest = hashlib.sha256()

    def add_tree(root: Path) -> None:
        for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != "README.md"):
            digest.update(str(path.relative_to(root)).encode() + b"\0")
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)

    add_tree(directory)
    encoder = read_json(directory / "config.json").get("encoder")
    if isinstance(encoder, str) and Path(encoder).is_absolute() and Path(encoder).is_dir():
        add_tree(Path(encoder))
    return digest.hexdigest()


# -- what a sample is -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardInfo:
    """One shard of a manifest. `row_group`: a manifest-less Parquet shard's row group."""

    name: str
    samples: int
    bytes: int = 0
    sha256: str | None = None
    row_group: int | None = None


@dataclass
class ShardSource:
    """A packed directory (or a directory of Parquet files), as its manifest describes it."""

    root: Path
    kind: str
    shards: tuple[ShardInfo, ...]
    fingerprint: str | None = None
    grid: tuple[int, int] | None = None
    manifest: dict = field(default_factory=dict)

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards)

    @classmethod
    def open(cls, path: str | os.PathLike) -> ShardSource:
        root = Path(path)
        if not root.is_dir():
            raise ManifestError(f"{root}: no such shard directory")
        if (root / MANIFEST).is_file():
            manifest = read_json(root / MANIFEST)
            if manifest.get("format") != FORMAT or manifest.get("kind") not in KINDS:
                raise ManifestError(
                    f"{root / MANIFEST}: not an {FORMAT} manifest of kind tar or parquet "
                    "(write one with `illume data pack`)"
                )
            shards = []
            for entry in manifest.get("shards", []):
                try:
                    resolve_inside(root, entry["name"])  # a manifest never points outside
                except Exception as err:
                    raise ManifestError(f"{root / MANIFEST}: shard {entry!r}: {err}") from None
                shards.append(
                    ShardInfo(
                        entry["name"],
                        int(entry["samples"]),
                        int(entry.get("bytes", 0)),
                        entry.get("sha256"),
                    )
                )
            tokenizer = manifest.get("tokenizer") or {}
            grid = tokenizer.get("grid")
            return cls(
                root,
                manifest["kind"],
                tuple(shards),
                tokenizer.get("fingerprint"),
                tuple(grid) if grid else None,
                manifest,
            )
        files = sorted(root.glob("*.parquet"))
        if not files:
            if (root / PARTIAL).is_file():
                raise ManifestError(
                    f"{root}: packing did not finish (no {MANIFEST}, a {PARTIAL}): run the same "
                    "`illume data pack` again, it resumes"
                )
            raise ManifestError(
                f"{root}: neither a {MANIFEST} (write one with `illume data pack`) nor Parquet files"
            )
        import pyarrow.parquet as pq

        shards = []
        for file in files:
            meta = pq.ParquetFile(file).metadata
            for group in range(meta.num_row_groups):
                rows = meta.row_group(group).num_rows
                if rows:
                    shards.append(ShardInfo(file.name, rows, row_group=group))
        return cls(root, "parquet", tuple(shards))

    def read(self, index: int, limits: ImageLimits) -> ShardReader:
        return ShardReader(self, index, limits)

    def entries(self) -> Iterator[dict]:
        """Every entry's JSON, shard by shard, images unread (the texts a word tokenizer learns)."""
        for i in range(len(self.shards)):
            reader = self.read(i, ImageLimits())
            if reader.error is None:
                yield from reader.entries


class ShardReader:
    """The samples of one shard in stored order; `error` set when the shard cannot be read."""

    def __init__(self, source: ShardSource, index: int, limits: ImageLimits):
        self.source, self.info, self.limits = source, source.shards[index], limits
        self.entries: list[dict] = []
        self.images: list[list[bytes | None]] = []
        self.error: str | None = None
        try:
            if source.kind == "tar":
                self._read_tar()
            else:
                self._read_parquet()
            if len(self.entries) != self.info.samples:
                raise ManifestError(
                    f"{len(self.entries)} samples where the manifest says {self.info.samples}"
                )
        except Exception as err:  # a broken shard costs its own samples, never the run
            self.error = f"shard {source.root / self.info.name}: {err}"
            self.entries, self.images = [], []
            log.warning("%s; its %d samples are skipped", self.error, self.info.samples)

    def _read_tar(self) -> None:
        path = resolve_inside(self.source.root, self.info.name)
        groups: dict[str, dict[str, bytes]] = {}
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, suffix = member.name.partition(".")
                if member.size > max(MAX_ENTRY_BYTES, self.limits.max_bytes):
                    raise ManifestError(f"{member.name}: {member.size} bytes, over the limit")
                data = tar.extractfile(member).read()
                groups.setdefault(key, {})[suffix] = data
        for key in sorted(groups):
            members = groups[key]
            if "json" not in members:
                raise ManifestError(f"sample {key} has no {key}.json")
            entry = json.loads(members["json"])
            self.entries.append(entry)
            self.images.append([members.get(name) for name in entry.get("images", [])])

    def _read_parquet(self) -> None:
        import pyarrow.parquet as pq

        path = resolve_inside(self.source.root, self.info.name)
        table = pq.ParquetFile(path).read_row_group(self.info.row_group or 0)
        columns = table.column_names
        rows = table.to_pylist()
        if "entry" in columns:  # written by `illume data pack`
            for row in rows:
                self.entries.append(json.loads(row["entry"]))
                self.images.append(list(row.get("images") or []))
            return
        for number, row in enumerate(rows):  # LLaVA columns, as hub datasets store them
            turns = row.get("conversations")
            if isinstance(turns, str):
                turns = json.loads(turns)
            images = row.get("images", [row["image"]] if row.get("image") is not None else [])
            images = [i.get("bytes") if isinstance(i, dict) else i for i in images or []]
            entry = {
                "id": str(row.get("id", f"{self.info.name}:{self.info.row_group}:{number}")),
                "conversations": turns,
                "images": [str(k) for k in range(len(images))],
            }
            self.entries.append(entry)
            self.images.append(images)

    def sample(self, i: int, index: int):
        """The i-th sample as a ConversationSample or PackSample (`index`: its place in the
        stream), or a BadSample."""
        if self.error is not None:
            return BadSample(index, self.error, whole_shard=True)
        entry, images = self.entries[i], self.images[i]
        where = f"{self.source.root / self.info.name}, sample {entry.get('id', i)}"
        try:
            # numpy, not torch: a loader worker hands tensors over through shared memory, one
            # file descriptor each, which cost more than reading the shard (36 px: 2,619 against
            # 3,319 samples/s without codes); numpy arrays travel inside the pickle
            codes = [
                None if c is None else np.asarray(c, dtype=np.int64)
                for c in entry.get("codes") or [None] * len(images)
            ]
            loaded: dict[int, object] = {}
            conversations = entry["pack"] if "pack" in entry else [entry["conversations"]]
            samples = []
            for turns in conversations:
                sample = _conversation_sample(turns, images, codes, loaded, self.limits, where)
                sample.id, sample.index = str(entry.get("id", i)), index
                samples.append(sample)
        except (ImageLoadError, ManifestError, KeyError, TypeError, ValueError) as err:
            return BadSample(index, f"{where}: {err}")
        if "pack" in entry:
            return PackSample(samples[0].id, index, tuple(samples))
        return samples[0]


def _conversation_sample(turns, images, codes, loaded, limits, where):
    """LLaVA turns -> a ConversationSample over in-memory images (input images loaded, output
    images as their codes when packed with them, else loaded to be encoded)."""
    parsed = []
    for turn in turns:
        if (
            not isinstance(turn, dict)
            or turn.get("from") not in ROLES
            or not isinstance(turn.get("value"), str)
        ):
            raise ManifestError('every turn needs "from" (human/gpt) and a string "value"')
        parsed.append((ROLES[turn["from"]], turn["value"]))
    placeholders = sum(v.count(IMAGE) for _, v in parsed)
    if placeholders != len(images):
        raise ManifestError(f"{placeholders} <image> placeholders but {len(images)} images")
    inputs, outputs, sample_codes, k = {}, {}, {}, 0
    for role, value in parsed:
        for _ in range(value.count(IMAGE)):
            if codes[k] is not None:
                sample_codes[k] = codes[k]
            if role == "user" or codes[k] is None:
                if images[k] is None:
                    raise ManifestError(f"image {k} missing from the shard")
                if k not in loaded:
                    loaded[k] = load_image(images[k], limits=limits)
                (inputs if role == "user" else outputs)[k] = loaded[k]
            k += 1
    return ConversationSample(
        "", 0, tuple(parsed), inputs, {}, {}, output_images=outputs, codes=sample_codes
    )


# -- the stream ---------------------------------------------------------------------------------------


def _permutation(n: int, *key: int) -> np.ndarray:
    return np.random.default_rng([*key]).permutation(n)


@dataclass(frozen=True)
class Segment:
    """Samples [start, stop) of shard `shard`'s seeded order, in epoch `epoch`."""

    epoch: int
    shard: int
    start: int
    stop: int


class ShardStream(IterableDataset):
    """An endless stream of samples from shard sources mixed by weight (see the module
    docstring). Each loader worker of each rank reads its own shards; `state_dict` is the number
    of samples the reader has yielded.

    Args:
        sources: packed directories (or directories of Parquet files).
        weights: one per source (default 1 each).
        seed: of the shards' deal, the order inside shards and the mixing draws.
        rank, world: this process's rank and the number of processes (default: the initialised
            torch.distributed process group's, else 0 and 1).
        limits: image byte and pixel ceilings.
    """

    def __init__(
        self,
        sources: Sequence[str | os.PathLike | ShardSource],
        weights: Sequence[float] | None = None,
        seed: int = 0,
        rank: int | None = None,
        world: int | None = None,
        limits: ImageLimits | None = None,
    ):
        self.sources = [s if isinstance(s, ShardSource) else ShardSource.open(s) for s in sources]
        if not self.sources:
            raise ValueError("no shard source given")
        weights = list(weights) if weights is not None else [1.0] * len(self.sources)
        if len(weights) != len(self.sources) or any(w < 0 for w in weights) or sum(weights) == 0:
            raise ValueError(f"need one weight >= 0 per source, some > 0; got {weights}")
        mass = np.array([w * s.samples for w, s in zip(weights, self.sources, strict=True)])
        self.p = mass / mass.sum()
        self.seed = seed
        if rank is None or world is None:
            dist = torch.distributed
            ready = dist.is_available() and dist.is_initialized()
            rank = dist.get_rank() if ready else 0
            world = dist.get_world_size() if ready else 1
        self.rank, self.world = rank, world
        self.limits = limits or ImageLimits()
        self.base: dict | None = None  # what readers of another layout consumed (a rebase)
        self._resume_at = 0
        self._yielded = 0

    # -- layout -------------------------------------------------------------------------------------

    def slot(self) -> tuple[int, int]:
        """(this reader, readers in all): rank x workers + worker."""
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        return self.rank * workers + worker, self.world * workers

    def check_readers(self, workers: int) -> None:
        """Refuses a source with fewer shards than readers (some reader would have nothing)."""
        readers = self.world * max(workers, 1)
        for source in self.sources:
            if len(source.shards) < readers:
                raise ManifestError(
                    f"{source.root} has {len(source.shards)} shard(s) for {readers} readers "
                    f"({self.world} process(es) x {max(workers, 1)} loader worker(s)): each reader "
                    "needs its own shards; pack it into more, smaller shards (`illume data pack "
                    "--shard-size`) or use fewer workers"
                )

    def segments(self, source: int, epoch: int, slot: int, slots: int) -> list[Segment]:
        """What reader `slot` of `slots` reads of a source in an epoch, less what a rebase says
        was consumed already."""
        shards = self.sources[source].shards
        order = _permutation(len(shards), self.seed, source, epoch)[slot::slots]
        consumed = {}
        if self.base is not None:
            first = self.base["start"][source]
            if epoch < first:
                return []
            consumed = self.base["consumed"][source].get(epoch, {})
        out = []
        for k in order.tolist():
            start = consumed.get(k, 0)
            if start < shards[k].samples:
                out.append(Segment(epoch, k, start, shards[k].samples))
        return out

    def _first_epoch(self, source: int) -> int:
        return self.base["start"][source] if self.base is not None else 0

    def _epochs(self, source: int, slot: int, slots: int) -> Iterator[tuple[int, list[Segment]]]:
        epoch, empty = self._first_epoch(source), 0
        while True:
            segments = self.segments(source, epoch, slot, slots)
            empty = 0 if segments else empty + 1
            if empty > 2:  # a reader without shards: check_readers refuses that up front
                raise ManifestError(f"{self.sources[source].root}: reader {slot} has no shards")
            yield epoch, segments
            epoch += 1

    def walk(
        self, source: int, position: int, slot: int, slots: int
    ) -> Iterator[tuple[int, int, int]]:
        """(epoch, shard, place in the shard's order) of a reader's samples of a source, from its
        `position`-th on, endlessly; the skipped ones passed over by arithmetic alone."""
        for _, segments in self._epochs(source, slot, slots):
            for segment in segments:
                length = segment.stop - segment.start
                if position >= length:
                    position -= length
                    continue
                for place in range(segment.start + position, segment.stop):
                    yield segment.epoch, segment.shard, place
                position = 0

    def consumed(self, source: int, position: int, slot: int, slots: int) -> tuple[int, dict]:
        """(the epoch a reader is in, {(epoch, shard): samples of the shard's order consumed})
        after it drew `position` samples of a source."""
        out = {}
        for epoch, segments in self._epochs(source, slot, slots):
            for segment in segments:
                length = segment.stop - segment.start
                if position < length:
                    out[(epoch, segment.shard)] = segment.start + position
                    return epoch, out
                out[(epoch, segment.shard)] = segment.stop
                position -= length
        raise AssertionError("unreachable: _epochs is endless")

    DRAWS = 4096  # mixing draws are made in blocks of this many (a block is one numpy call)

    def _blocks(self, slot: int, slots: int) -> Iterator[np.ndarray]:
        key = [self.seed, slot, slots, 0 if self.base is None else self.base["generation"]]
        rng = np.random.default_rng(key)
        while True:
            yield rng.choice(len(self.sources), size=self.DRAWS, p=self.p)

    def draws(self, slot: int, slots: int, start: int = 0) -> Iterator[int]:
        """The reader's endless sequence of sources, one per sample (seeded), from the
        `start`-th on."""
        if len(self.sources) == 1:
            while True:
                yield 0
        blocks = self._blocks(slot, slots)
        for _ in range(start // self.DRAWS):
            next(blocks)
        first = next(blocks)[start % self.DRAWS :]
        yield from first.tolist()
        for block in blocks:
            yield from block.tolist()

    def positions(self, yielded: int, slot: int, slots: int) -> list[int]:
        """Samples drawn from each source by a reader that has yielded `yielded` (arithmetic)."""
        if len(self.sources) == 1:
            return [yielded]
        counts = np.zeros(len(self.sources), dtype=np.int64)
        blocks = self._blocks(slot, slots)
        for _ in range(yielded // self.DRAWS):
            counts += np.bincount(next(blocks), minlength=len(self.sources))
        counts += np.bincount(next(blocks)[: yielded % self.DRAWS], minlength=len(self.sources))
        return counts.tolist()

    # -- iteration and state ------------------------------------------------------------------------

    def __iter__(self):
        slot, slots = self.slot()
        self._yielded = self._resume_at
        counts = self.positions(self._yielded, slot, slots)
        walks = [self.walk(s, c, slot, slots) for s, c in enumerate(counts)]
        held: dict[int, tuple[tuple[int, int], ShardReader, np.ndarray]] = {}
        for source in self.draws(slot, slots, start=self._yielded):
            epoch, shard, place = next(walks[source])
            if source not in held or held[source][0] != (epoch, shard):
                info = self.sources[source].shards[shard]
                order = _permutation(info.samples, self.seed, source, epoch, shard)
                reader = self.sources[source].read(shard, self.limits)
                held[source] = ((epoch, shard), reader, order)
            _, reader, order = held[source]
            sample = reader.sample(int(order[place]), self._yielded)
            self._yielded += 1
            yield sample

    def state_dict(self) -> dict:
        # the worker's place, not the rank's: rank 0's state is every rank's (module docstring)
        slot, slots = self.slot()
        workers = slots // self.world
        return {
            "yielded": self._yielded,
            "worker": slot % workers,
            "workers": workers,
            "world": self.world,
            "base": self.base,
        }

    def load_state_dict(self, state: dict) -> None:
        slot, slots = self.slot()
        workers = slots // self.world
        if (state.get("worker"), state.get("workers"), state.get("world")) != (
            slot % workers,
            workers,
            self.world,
        ):
            raise ManifestError(
                f"stream state of worker {state.get('worker')} of {state.get('workers')} in "
                f"{state.get('world')} process(es), here worker {slot % workers} of {workers} in "
                f"{self.world}: resume through ShardLoader, which re-deals the rest"
            )
        self.base = state.get("base")
        self._resume_at = int(state["yielded"])

    # -- another layout -----------------------------------------------------------------------------

    def rebase(self, yielded: Sequence[int], old_world: int, old_base: dict | None) -> None:
        """Continues from readers of another layout: `yielded[w]`, worker w's count (the same on
        every rank) of `old_world` processes over `old_base`. Records what each old reader had
        consumed in each epoch; the new readers deal out the rest (every sample of an epoch once,
        none twice) with fresh mixing draws."""
        self.base = old_base
        old_slots = old_world * len(yielded)
        start: dict[int, int] = {}
        consumed: dict[int, dict[int, dict[int, int]]] = {s: {} for s in range(len(self.sources))}
        for source, epochs in ((self.base or {}).get("consumed") or {}).items():
            for epoch, shards in epochs.items():
                consumed[source][epoch] = dict(shards)
        for rank in range(old_world):
            for worker, count in enumerate(yielded):
                slot = rank * len(yielded) + worker
                for source, position in enumerate(self.positions(count, slot, old_slots)):
                    epoch, done = self.consumed(source, position, slot, old_slots)
                    start[source] = min(start.get(source, epoch), epoch)
                    for (e, shard), upto in done.items():
                        shards = consumed[source].setdefault(e, {})
                        shards[shard] = max(shards.get(shard, 0), upto)
        generation = (self.base or {}).get("generation", 0) + 1
        self._resume_at = 0
        self.base = {"start": start, "consumed": consumed, "generation": generation}


class ShardLoader(StatefulDataLoader):
    """A StatefulDataLoader over a ShardStream whose state resumes exactly with the same worker
    count and world size, and with any other by re-dealing what is left (module docstring)."""

    #: The batches an endless stream reports as its length. Lightning fetches one batch ahead of
    #: the step from a loader without a length (to see the end coming), so the state it saves
    #: in a checkpoint would be one batch ahead and a resumed run would skip that batch; with a
    #: length it fetches no further than the step. Training ends at max_steps long before this.
    ENDLESS = 2**40

    def __init__(self, dataset: ShardStream, **kwargs):
        super().__init__(dataset, **kwargs)
        dataset.check_readers(self.num_workers)

    def __len__(self) -> int:
        return self.ENDLESS

    def load_state_dict(self, state_dict: dict) -> None:
        states = _reader_states(state_dict)
        if not states:
            return super().load_state_dict(state_dict)
        first = states[0]
        workers = max(self.num_workers, 1)
        same = len(states) == workers and first["world"] == self.dataset.world
        if same:  # each reader restores its own count and rebase record
            return super().load_state_dict(state_dict)
        warnings.warn(
            f"resuming a stream read by {first['world']} process(es) x {len(states)} worker(s) "
            f"with {self.dataset.world} x {workers}: every sample not yet trained on in this epoch "
            "is still read once and none twice, but in another order than the uninterrupted run's "
            "(an exact resume needs the same world size and worker count)",
            stacklevel=2,
        )
        self.dataset.rebase([s["yielded"] for s in states], first["world"], first["base"])


def _reader_states(state_dict: dict) -> list[dict]:
    """The ShardStream states of a StatefulDataLoader state, one per worker, in worker order."""
    snapshot = state_dict.get("_snapshot") or {}
    workers = snapshot.get("_worker_snapshots")
    if workers:
        ordered = [workers[f"worker_{i}"] for i in range(len(workers))]
        states = [w.get("dataset_state") for w in ordered]
    else:
        states = [state_dict.get("dataset_state")]
    return [s for s in states if s]


def is_shard_source(path: str | os.PathLike) -> bool:
    """A packed directory or a directory of Parquet files (a JSON file is not)."""
    return Path(path).is_dir()
