"""Step 1 of self-enhancement (ILLUME Fig. 5): the current model draws an image for each prompt,
through `IllumePipeline.generate_image` at the pipeline's sampling.

    corpus = draw_corpus(pipe, prompts, "runs/self_enhance/corpus", batch_size=16, seed=0)

Each item is saved as `images/<id>.png` (written atomically) and one line of `corpus.jsonl` with
its prompt, seed and sampling settings, appended and flushed after its image. A rerun (after a
crash) reads the finished items back and draws only the rest; an image without its line is drawn
again. Batches are drawn with one generator seeded from (seed, the batch's first prompt index), so
a rerun with the same arguments draws the same images.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from illume_core import (
    MAX_DATA_BYTES,
    UnsafePathError,
    atomic_write_bytes,
    read_text,
    resolve_inside,
)
from illume_trainer.data import read_captions

CORPUS = "corpus.jsonl"


@dataclass(frozen=True)
class Prompt:
    """A text-to-image prompt; `truth` is its ground-truth image (the answer of Fig. C's second
    turn) and `spec` its GenEval-style spec when known (ShapesWorld; the oracle assessor needs it)."""

    id: str
    text: str
    truth: str
    spec: dict | None = None


@dataclass(frozen=True)
class CorpusItem:
    id: str
    prompt: str
    image: str
    """Path of the drawn image, relative to the corpus directory."""
    truth: str
    seed: int
    sampling: dict = field(default_factory=dict)
    spec: dict | None = None


def prompts_from_captions(
    path: str | os.PathLike, limit: int | None = None, seed: int = 0
) -> list[Prompt]:
    """Prompts from a captions JSONL manifest (image = the ground truth, as an absolute path: the
    SFT data that names it lives in another folder), a seeded subset of `limit`. Rows marked
    `"generation": false` (ShapesWorld's scenes of held-out compositions, there to be read, never
    drawn) are left out."""
    records = read_captions(path)
    # ids keep the row's place in the manifest, so a corpus resumes whatever is filtered
    drawable = [i for i, r in enumerate(records) if (r.meta or {}).get("generation", True)]
    order = drawable
    if limit is not None and limit < len(drawable):
        chosen = torch.randperm(len(drawable), generator=torch.Generator().manual_seed(seed))
        order = sorted(drawable[j] for j in chosen[:limit].tolist())
    return [
        Prompt(
            f"{Path(path).stem}-{i:06d}",
            records[i].text,
            os.path.abspath(records[i].image),
            (records[i].meta or {}).get("spec"),
        )
        for i in order
    ]


def append_log(path: Path):
    """`path` opened for appending lines; a line torn by a crash is ended first, so that the next
    line stands alone (readers skip the torn one)."""
    if path.is_file() and path.stat().st_size:
        with open(path, "rb") as handle:
            handle.seek(-1, os.SEEK_END)
            torn = handle.read(1) != b"\n"
        if torn:
            with open(path, "a", encoding="utf-8") as handle:
                handle.write("\n")
    return open(path, "a", encoding="utf-8")


def read_corpus(directory: str | os.PathLike) -> list[CorpusItem]:
    """The finished items of a corpus directory (lines whose image exists; a torn last line is ignored)."""
    directory = Path(directory)
    path = directory / CORPUS
    if not path.is_file():
        return []
    items = []
    for line in read_text(path, MAX_DATA_BYTES).splitlines():
        try:
            item = CorpusItem(**json.loads(line))
        except (json.JSONDecodeError, TypeError):
            continue  # a line cut short by a crash: its item is drawn again
        try:  # a line naming a file outside the corpus is not one of its items: drawn again
            image = resolve_inside(directory, item.image)
        except UnsafePathError:
            continue
        if image.is_file():
            items.append(item)
    return items


def draw_corpus(
    pipe,
    prompts: Sequence[Prompt],
    directory: str | os.PathLike,
    batch_size: int = 16,
    seed: int = 0,
    progress: bool = True,
) -> list[CorpusItem]:
    """Draws an image per prompt into `directory` (see the module docstring); returns all items."""
    from rich.progress import Progress

    directory = Path(directory)
    (directory / "images").mkdir(parents=True, exist_ok=True)
    sampling = asdict(pipe.sampling)  # recorded with each item
    done = {item.id: item for item in read_corpus(directory)}
    todo = [(i, p) for i, p in enumerate(prompts) if p.id not in done]
    with (
        Progress(disable=not progress, transient=True) as bar,
        append_log(directory / CORPUS) as log,
    ):
        task = bar.add_task(f"self-generation ({len(done)} already drawn)", total=len(todo))
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            batch_seed = seed * 1_000_003 + batch[0][0]
            images = pipe.generate_image([p.text for _, p in batch], seed=batch_seed)
            for (_, prompt), image in zip(batch, images, strict=True):
                relative = f"images/{prompt.id}.png"
                buffer = io.BytesIO()
                image.save(buffer, format="PNG")
                atomic_write_bytes(directory / relative, buffer.getvalue())
                item = CorpusItem(
                    prompt.id,
                    prompt.text,
                    relative,
                    prompt.truth,
                    batch_seed,
                    sampling,
                    prompt.spec,
                )
                log.write(json.dumps(asdict(item)) + "\n")
                log.flush()
                os.fsync(log.fileno())
                done[item.id] = item
            bar.advance(task, len(batch))
    return [done[p.id] for p in prompts]
