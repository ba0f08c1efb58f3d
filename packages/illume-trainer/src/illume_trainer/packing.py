"""`illume data pack`: a LLaVA-style conversation file and its images written as shards (the layout
`illume_trainer.shards` reads), each image's tokenizer codes precomputed; and a chain's `pack`
stage (`pack_recipe`)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import torch

from illume_core import (
    ImageLimits,
    ImageLoadError,
    atomic_write_json,
    load_image,
    read_bounded,
    read_json,
)

from .conversations import Conversation, Pack, read_conversations
from .conversations import pack_by_image as group_by_image
from .data import ManifestError
from .shards import FORMAT, KINDS, MANIFEST, PARTIAL, tokenizer_fingerprint


def pack_conversations(
    source: str | os.PathLike,
    out: str | os.PathLike,
    tokenizer: str | os.PathLike | None = None,
    shard_size: int = 1000,
    kind: str = "tar",
    pack_by_image: bool = False,
    limits: ImageLimits | None = None,
    progress: bool = True,
    batch_size: int = 64,
    captions_as: str | None = None,
    prompt: str | None = None,
) -> dict:
    """Packs a LLaVA-style conversation file and its images into shards of `shard_size` entries
    (`illume data pack`); or, with `captions_as` ("i2t" or "t2i"), a captions JSONL
    (`{"image", "text"}` lines, illume_trainer.data.read_captions) whose pairs become captioning
    or drawing-request conversations (`captions_conversations`; `prompt`: their instruction).
    With `tokenizer` (a saved vision tokenizer) every image's codes are stored and the tokenizer's
    fingerprint recorded, so a stage with another tokenizer refuses them. Entries whose images
    cannot be read are skipped and counted. Each shard is written to a temporary file and renamed,
    and recorded in manifest.partial.json, so an interrupted run resumes at the first unwritten
    shard; manifest.json is written last. Returns the manifest."""
    from illume_core import atomic_write_bytes

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}")
    limits = limits or ImageLimits()
    out = Path(out)
    if (out / MANIFEST).is_file():
        raise FileExistsError(f"{out} is packed already ({MANIFEST}): choose another --out")
    if out.exists() and any(out.iterdir()) and not (out / PARTIAL).is_file():
        raise FileExistsError(
            f"{out} exists and holds files that are not an unfinished pack: choose an empty --out"
        )
    out.mkdir(parents=True, exist_ok=True)
    if captions_as is not None:
        conversations = captions_conversations(source, captions_as, prompt)
    else:
        conversations = read_conversations(source)
    entries = group_by_image(conversations) if pack_by_image else conversations
    settings = {
        "source": str(Path(source).resolve()),
        "captions_as": captions_as,
        "prompt": prompt,
        "shard_size": shard_size,
        "kind": kind,
        "pack_by_image": pack_by_image,
        "entries": len(entries),
    }
    tok = fingerprint = None
    if tokenizer is not None:
        from illume_tokenizer import SemanticTokenizer

        tok = SemanticTokenizer.from_pretrained(tokenizer).eval()
        fingerprint = tokenizer_fingerprint(tokenizer)
        settings["tokenizer"] = fingerprint
    partial = read_json(out / PARTIAL) if (out / PARTIAL).is_file() else None
    if partial is not None and partial["settings"] != settings:
        raise ManifestError(
            f"{out}: an unfinished pack with other settings ({partial['settings']}); choose "
            "another --out"
        )
    partial = partial or {"settings": settings, "shards": [], "skipped": 0, "skipped_examples": []}
    done = len(partial["shards"])
    total = (len(entries) + shard_size - 1) // shard_size
    bar = _progress(total, done, progress)
    for number in range(done, total):
        chunk = entries[number * shard_size : (number + 1) * shard_size]
        samples, skipped = _pack_chunk(chunk, tok, limits, batch_size)
        partial["skipped"] += len(skipped)
        partial["skipped_examples"] = (partial["skipped_examples"] + skipped)[:20]
        name = f"shard-{number:06d}.{kind}"
        data = _tar_bytes(samples) if kind == "tar" else _parquet_bytes(samples)
        atomic_write_bytes(out / name, data)
        partial["shards"].append(
            {
                "name": name,
                "samples": len(samples),
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        )
        atomic_write_json(out / PARTIAL, partial)
        bar.update(1)
    bar.close()
    manifest = {
        "format": FORMAT,
        "kind": kind,
        "samples": sum(s["samples"] for s in partial["shards"]),
        "bytes": sum(s["bytes"] for s in partial["shards"]),
        "skipped": partial["skipped"],
        "skipped_examples": partial["skipped_examples"],
        "tokenizer": None
        if tok is None
        else {
            "fingerprint": fingerprint,
            "grid": list(tok.grid),
            "codebook_size": tok.codebook_size,
            "path": str(Path(tokenizer).resolve()),
        },
        "shards": partial["shards"],
        "source": settings,
    }
    atomic_write_json(out / MANIFEST, manifest)
    (out / PARTIAL).unlink()
    return manifest


#: The instruction of a caption packed as a conversation, by direction (ShapesWorld's phrasing).
CAPTION_PROMPTS = {"i2t": "What does the image show?", "t2i": "Generate an image of {caption}."}


def captions_conversations(
    path: str | os.PathLike, captions_as: str, prompt: str | None = None
) -> list[Conversation]:
    """A captions JSONL's image-text pairs as conversations, the paper's alignment data in both
    directions: "i2t" asks about the image and answers with the caption, "t2i" asks for the
    caption drawn (`prompt` with `{caption}`) and answers with the image."""
    from .data import read_captions

    if captions_as not in CAPTION_PROMPTS:
        raise ValueError(
            f"captions_as must be one of {sorted(CAPTION_PROMPTS)}, got {captions_as!r}"
        )
    prompt = prompt or CAPTION_PROMPTS[captions_as]
    if captions_as == "t2i" and "{caption}" not in prompt:
        raise ValueError(f"a t2i prompt needs a {{caption}} placeholder, got {prompt!r}")
    out = []
    for number, record in enumerate(read_captions(path), 1):
        if captions_as == "i2t":
            turns = (("user", f"<image>\n{prompt}"), ("assistant", record.text))
        else:
            turns = (("user", prompt.replace("{caption}", record.text)), ("assistant", "<image>"))
        out.append(Conversation(f"{Path(path).stem}-{number}", turns, (record.image,)))
    return out


def _progress(total: int, done: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, unit="shard", desc="packing", disable=not enabled)


def _pack_chunk(chunk, tok, limits: ImageLimits, batch_size: int) -> tuple[list, list[str]]:
    """(samples as (entry JSON, [(suffix, bytes)]), reasons of the skipped entries)."""
    samples, skipped, todo = [], [], []
    for entry in chunk:
        conversations = entry.conversations if isinstance(entry, Pack) else (entry,)
        paths = conversations[0].images
        try:
            blobs = [read_bounded(p, limits.max_bytes) for p in paths]
            images = [load_image(b, limits=limits) for b in blobs]
        except (ImageLoadError, OSError, ValueError) as err:
            skipped.append(f"{entry.id}: {err}")
            continue
        record = {
            "id": entry.id,
            "images": [f"{k}{Path(p).suffix.lower() or '.img'}" for k, p in enumerate(paths)],
        }
        turns = [
            [{"from": "human" if r == "user" else "gpt", "value": v} for r, v in c.turns]
            for c in conversations
        ]
        if isinstance(entry, Pack):
            record["pack"] = turns
        else:
            record["conversations"] = turns[0]
        samples.append((record, list(zip(record["images"], blobs, strict=True))))
        todo.append(images)
    if tok is not None:
        flat = [(i, k, image) for i, images in enumerate(todo) for k, image in enumerate(images)]
        codes: dict[tuple[int, int], list] = {}
        with torch.no_grad():
            for start in range(0, len(flat), batch_size):
                part = flat[start : start + batch_size]
                pixels = tok.preprocess([image for _, _, image in part])
                grid = tok.encode(pixels.to(next(tok.parameters()).dtype)).codes
                for (i, k, _), c in zip(part, grid, strict=True):
                    codes[(i, k)] = c.tolist()
        for i, (record, _) in enumerate(samples):
            record["codes"] = [codes[(i, k)] for k in range(len(record["images"]))]
    return samples, skipped


def _tar_bytes(samples) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for number, (record, blobs) in enumerate(samples):
            key = f"{number:08d}"
            for suffix, data in [("json", json.dumps(record).encode()), *blobs]:
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size, info.mtime = len(data), 0  # same input, same bytes
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _parquet_bytes(samples) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "key": [f"{n:08d}" for n in range(len(samples))],
            "entry": [json.dumps(record) for record, _ in samples],
            "images": [[data for _, data in blobs] for _, blobs in samples],
        }
    )
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=max(len(samples), 1))
    return buffer.getvalue()


def pack_recipe(recipe: dict, progress: bool = True) -> Path:
    """Packs a chain's `pack` stage (recipes/shapes/pack.yaml): each of `data.files` into
    `model.output_dir/<file stem>`, with the codes of `model.tokenizer`. The folder appears when
    every file is packed (written beside it as `<output_dir>.partial`, which a second run
    resumes); returns it."""
    model, data = recipe["model"], recipe["data"]
    out = Path(model["output_dir"])
    if out.is_dir():
        return out
    files = list(data["files"])
    by_image = data.get("pack_by_image") or [False] * len(files)
    if len(by_image) != len(files):
        raise ValueError(f"{len(by_image)} pack_by_image flags for {len(files)} files")
    stems = [Path(f).stem for f in files]
    if len(set(stems)) != len(stems):
        raise ValueError(f"files must have distinct names, got {files}")
    partial = out.with_name(out.name + ".partial")
    for file, stem, grouped in zip(files, stems, by_image, strict=True):
        if not (partial / stem / MANIFEST).is_file():
            pack_conversations(
                file,
                partial / stem,
                tokenizer=model.get("tokenizer"),
                shard_size=int(data.get("shard_size", 1000)),
                kind=data.get("kind", "tar"),
                pack_by_image=bool(grouped),
                progress=progress,
            )
    os.replace(partial, out)
    return out
