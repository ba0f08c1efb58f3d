"""MLLM training data throughput: conversation files against packed shards, and memory at 1M entries.

What an MLLM stage's data path costs per sample, one loader worker (the rate scales with workers
until the cores run out), three ways:

- **json**: a LLaVA-style file read whole (`ConversationDataModule`'s map-style loader), input
  images decoded by the worker, each output image loaded and encoded by the vision tokenizer in
  the training process (what the stage's transform does on a sample's first visit);
- **shards**: the same packed without codes (`illume data pack`), streamed (`ShardStream`), output
  images decoded by the worker and encoded by the tokenizer;
- **shards+codes**: packed with the tokenizer's codes: nothing left to encode.

At ShapesWorld size (36 px PNGs, the shapes-cells tokenizer over the shipped encoder, untrained
quantizer: codes cost the same compute trained or not) and at 384 px (the paper's input size,
synthetic JPEGs; the same small tokenizer, which resizes them, so the encode column measures
decoding and resizing, not SigLIP-so400m). Then the resident memory of streaming 1,000,000
text-only entries (a Parquet source, LLaVA columns) against reading them as one JSON file.

Prints a table, then one JSON object on its last line.

Rates are the best of three passes over the data.

Run: .venv/bin/python benchmarks/data_throughput.py [--samples 4000] [--entries 1000000]
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw


def rss_mb() -> float:
    """Resident memory now (MB), from /proc (ru_maxrss is the peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def tokenizer_dir(root: Path) -> Path:
    from illume_eval.shapes.foundations import foundation
    from illume_tokenizer import SemanticTokenizer, TokenizerConfig, VisionEncoder

    torch.manual_seed(0)
    tokenizer = SemanticTokenizer(
        TokenizerConfig.from_name("shapes-cells"),
        VisionEncoder.from_pretrained(foundation("encoder"), feature_layer=-2),
    )
    tokenizer.save_pretrained(root / "tokenizer")
    return root / "tokenizer"


def synthetic_llava(root: Path, n: int, size: int) -> Path:
    """n conversations, two thirds drawing requests (an output image), a third questions (an input
    image), over random coloured shapes at `size` px (PNG at ShapesWorld size, JPEG at 384)."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    suffix, entries = (".png" if size < 100 else ".jpg"), []
    for i in range(n):
        image = Image.new("RGB", (size, size), (255, 255, 255))
        draw = ImageDraw.Draw(image)
        for _ in range(3):
            x, y = rng.integers(0, size * 3 // 4, 2)
            w = int(rng.integers(size // 8, size // 4))
            draw.ellipse(
                [int(x), int(y), int(x) + w, int(y) + w],
                fill=tuple(rng.integers(0, 256, 3).tolist()),
            )
        name = f"images/{i:06d}{suffix}"
        image.save(root / name, quality=90) if suffix == ".jpg" else image.save(root / name)
        turns = (
            [
                {"from": "human", "value": "<image>\nHow many shapes are there?"},
                {"from": "gpt", "value": "three"},
            ]
            if i % 3 == 2
            else [
                {"from": "human", "value": "Please draw three coloured circles."},
                {"from": "gpt", "value": "<image>"},
            ]
        )
        entries.append({"id": str(i), "image": name, "conversations": turns})
    (root / "data.json").write_text(json.dumps(entries))
    return root / "data.json"


def rate(make_loader, tokenizer, batches: int, repeats: int = 3) -> float:
    """Samples per second through a loader (best of `repeats` fresh ones), output images encoded
    as the stage would."""
    return max(_rate(make_loader(), tokenizer, batches) for _ in range(repeats))


def _rate(loader, tokenizer, batches: int) -> float:
    from illume_trainer.conversations import PackSample

    it = iter(loader)
    next(it)  # the workers' start-up is not throughput
    count, start = 0, time.perf_counter()
    for _ in range(batches):
        batch = next(it)
        images = []
        for sample in batch["items"]:
            for s in sample.samples if isinstance(sample, PackSample) else [sample]:
                images += [
                    Image.open(p).convert("RGB") for k, p in s.outputs.items() if k not in s.codes
                ]
                images += [im for k, im in s.output_images.items() if k not in s.codes]
        if images:
            with torch.no_grad():
                tokenizer.encode(tokenizer.preprocess(images))
        count += len(batch["items"])
    return count / (time.perf_counter() - start)


def throughput(root: Path, size: int, n: int, tok_dir: Path, batch: int, workers: int) -> dict:
    from illume_tokenizer import SemanticTokenizer
    from illume_trainer.conversations import (
        ConversationDataset,
        collate_conversations,
        read_conversations,
    )
    from illume_trainer.data import make_loader
    from illume_trainer.packing import pack_conversations
    from illume_trainer.shards import ShardLoader, ShardStream

    tokenizer = SemanticTokenizer.from_pretrained(tok_dir).eval()
    source = synthetic_llava(root / f"{size}px", n, size)
    pack_conversations(source, root / f"{size}px-shards", shard_size=250, progress=False)
    started = time.perf_counter()
    pack_conversations(
        source, root / f"{size}px-codes", tokenizer=tok_dir, shard_size=250, progress=False
    )
    pack_seconds = time.perf_counter() - started
    batches = n // batch - 2
    conversations = read_conversations(source)

    def json_loader():
        dataset = ConversationDataset(conversations)
        return make_loader(dataset, collate_conversations, batch, True, workers, 0)

    def shard_loader(path):
        return ShardLoader(
            ShardStream([path]),
            batch_size=batch,
            num_workers=workers,
            collate_fn=collate_conversations,
        )

    out = {
        "json": rate(json_loader, tokenizer, batches),
        "shards": rate(lambda: shard_loader(root / f"{size}px-shards"), tokenizer, batches),
        "shards+codes": rate(lambda: shard_loader(root / f"{size}px-codes"), tokenizer, batches),
        "pack_with_codes_samples_per_s": n / pack_seconds,
    }
    return out


def memory_at_scale(root: Path, entries: int) -> dict:
    """RSS while streaming `entries` text-only conversations from Parquet (LLaVA columns, row
    groups of 10,000), sampled every tenth; then reading the same as one JSON list."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from illume_trainer.conversations import read_conversations
    from illume_trainer.shards import ShardStream

    folder = root / "million"
    folder.mkdir()
    group = 10_000
    writer = None
    for start in range(0, entries, 100_000):
        rows = [
            {
                "id": str(i),
                "conversations": [
                    {"from": "human", "value": f"Describe scene {i}."},
                    {"from": "gpt", "value": f"Scene {i} has {i % 7} circles."},
                ],
            }
            for i in range(start, min(start + 100_000, entries))
        ]
        table = pa.Table.from_pylist(rows)
        writer = writer or pq.ParquetWriter(folder / "train.parquet", table.schema)
        writer.write_table(table, row_group_size=group)
    writer.close()
    gc.collect()
    before = rss_mb()
    it = iter(ShardStream([folder]))
    trace, start = [], time.perf_counter()
    for i in range(entries):
        next(it)
        if (i + 1) % (entries // 10) == 0:
            trace.append(round(rss_mb() - before, 1))
    stream_seconds = time.perf_counter() - start
    del it
    gc.collect()
    rows = pq.read_table(folder / "train.parquet").to_pylist()
    (root / "million.json").write_text(json.dumps(rows))
    del rows
    gc.collect()
    before_json = rss_mb()
    conversations = read_conversations(root / "million.json")
    json_mb = rss_mb() - before_json
    del conversations
    return {
        "entries": entries,
        "stream_rss_growth_mb": trace,
        "stream_samples_per_s": entries / stream_seconds,
        "json_rss_mb": round(json_mb, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=4000, help="conversations per size")
    parser.add_argument(
        "--entries", type=int, default=1_000_000, help="entries of the memory check"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--workers", type=int, default=1, help="loader workers (rates are per worker)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)  # the training process's share; the worker has the other core
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tok = tokenizer_dir(root)
        results = {
            size: throughput(root, size, args.samples, tok, args.batch_size, args.workers)
            for size in (36, 384)
        }
        memory = memory_at_scale(root, args.entries)
    per = max(args.workers, 1)
    print(
        f"machine: {platform.machine()}, {torch.get_num_threads()} torch thread(s), "
        f"{args.workers} loader worker(s), batch {args.batch_size}, {args.samples} conversations"
    )
    print(
        f"{'samples/s per worker':<24}{'json':>10}{'shards':>10}{'shards+codes':>14}{'pack+codes/s':>14}"
    )
    for size, r in results.items():
        print(
            f"{f'{size} px':<24}{r['json'] / per:>10.0f}{r['shards'] / per:>10.0f}"
            f"{r['shards+codes'] / per:>14.0f}{r['pack_with_codes_samples_per_s']:>14.0f}"
        )
    print(
        f"\n{memory['entries']:,} entries streamed from Parquet: RSS growth (MB) at each tenth "
        f"{memory['stream_rss_growth_mb']}, {memory['stream_samples_per_s']:.0f} samples/s; "
        f"the same read as one JSON file: {memory['json_rss_mb']} MB"
    )
    summary = {
        f"{k}_{size}px": round(v / per, 1)
        for size, r in results.items()
        for k, v in r.items()
        if k != "pack_with_codes_samples_per_s"
    }
    summary |= {
        "stream_rss_growth_mb": memory["stream_rss_growth_mb"],
        "json_rss_mb": memory["json_rss_mb"],
        "entries": memory["entries"],
        "workers": args.workers,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
