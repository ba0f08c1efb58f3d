"""ShapesWorld in words: the text a ShapesWorld language model is pretrained on.

ILLUME starts from a pretrained language model (Vicuna) that already knows how people talk about
what they see: objects, colours, counts, where things are, how to follow an instruction.
ShapesWorld's stand-in is a small Llama pretrained on ShapesWorld text, the analogue of that
knowledge: the conversations of a split (drawing requests, captions, questions, edit
instructions, assessments) with every image written out as its layout in words, cell by cell in
raster order ("top left: a red circle; top middle: empty; ..."). The language model never sees an
image, a vision code or a pixel; the MLLM stages still learn to see and draw.

What it may know is bounded by the split it reads: a training split holds no prompt that
validation reserves as unseen (splits by meaning) and no drawing request or edit target showing a
held-out composition (those scenes appear only where the MLLM reads them: captions, questions,
edit sources), so the demo's headline figures stay on what nothing was trained on.

    from illume_eval.shapes.language import ensure_language_corpus
    ensure_language_corpus("data/shapes")   # writes {train,validation}/language/*.json once
"""

from __future__ import annotations

import os
from pathlib import Path

from illume_core import atomic_write_json, atomic_write_text, read_json, read_jsonl

from .prompts import spec_holds
from .splits import UNSEEN_TAGS
from .world import CELL_NAMES, CELLS, COLORS, SHAPES, Scene, ShapeObject

#: The conversation files of a split that the language model reads, in their words.
SOURCES = ("t2i.json", "i2t.json", "qa.json", "edits.json", "assessments.json")
IMAGE = "<image>"
CORPUS = "language"
#: Bumped when the corpus's text changes: an older file is rewritten.
CORPUS_VERSION = 1


def layout_text(scene: Scene) -> str:
    """A scene as text, one entry per cell in raster order (the order of a drawing's codes)."""
    cells = []
    for cell in CELLS:
        obj = scene.at(cell)
        cells.append(f"{CELL_NAMES[cell]}: {'a ' + obj.name if obj else 'empty'}")
    return "Layout: " + "; ".join(cells) + "."


def split_scenes(split_dir: str | os.PathLike) -> dict[str, Scene]:
    """Image path (relative to the split) -> the scene it shows: the split's images and its edit
    targets."""
    folder = Path(split_dir)
    scenes = {
        row["image"]: Scene.from_dict(row["scene"]) for row in read_jsonl(folder / "scenes.jsonl")
    }
    for row in read_jsonl(folder / "edits.jsonl"):
        scenes[row["target"]] = Scene.from_dict(row["target_scene"])
    return scenes


def in_words(conversation: dict, scenes: dict[str, Scene]) -> dict:
    """A LLaVA-style conversation with each `<image>` replaced by the layout of its image, in
    order; text-only (no "image" / "images" keys)."""
    images = conversation.get("images", [conversation["image"]] if "image" in conversation else [])
    layouts = iter([layout_text(scenes[path]) for path in images])
    turns = []
    for turn in conversation["conversations"]:
        parts = turn["value"].split(IMAGE)
        value = parts[0] + "".join(next(layouts) + part for part in parts[1:])
        turns.append({"from": turn["from"], "value": value})
    return {"id": conversation.get("id"), "conversations": turns}


def language_corpus(split_dir: str | os.PathLike) -> dict[str, list[dict]]:
    """Source name ("t2i", "qa", ...) -> its conversations in words (see the module docstring)."""
    folder = Path(split_dir)
    scenes = split_scenes(folder)
    return {
        name.removesuffix(".json"): [in_words(c, scenes) for c in read_json(folder / name)]
        for name in SOURCES
    }


def ensure_language_corpus(
    data_dir: str | os.PathLike, splits: tuple[str, ...] = ("train", "validation")
) -> list[Path]:
    """Writes `SPLIT/language/SOURCE.json` (one file per source, so a recipe can weight them)
    for each split unless this version's are there and newer than the split; returns the
    folders."""
    written = []
    for split in splits:
        folder = Path(data_dir) / split
        out = folder / CORPUS
        stamp = out / "VERSION"
        fresh = (
            stamp.is_file()
            and stamp.read_text().strip() == str(CORPUS_VERSION)
            and stamp.stat().st_mtime >= (folder / "scenes.jsonl").stat().st_mtime
        )
        if not fresh:
            out.mkdir(exist_ok=True)
            for name, conversations in language_corpus(folder).items():
                atomic_write_json(out / f"{name}.json", conversations)
            atomic_write_text(stamp, f"{CORPUS_VERSION}\n")  # last: present means complete
        written.append(out)
    return written


_CELL_BY_NAME = {name: cell for cell, name in CELL_NAMES.items()}


def parse_layout(text: str) -> list[ShapeObject] | None:
    """The objects of a layout written as `layout_text` writes it; None when it is not one (a cell
    missing, named twice or unknown, an object that is not "a COLOUR SHAPE")."""
    body = text.strip().removeprefix("Layout:").strip().removesuffix(".")
    objects, seen = [], set()
    for entry in body.split(";"):
        name, _, what = entry.strip().partition(":")
        cell = _CELL_BY_NAME.get(name.strip())
        if cell is None or cell in seen:
            return None
        seen.add(cell)
        words = what.split()
        if words == ["empty"]:
            continue
        if len(words) != 3 or words[0] != "a" or words[1] not in COLORS or words[2] not in SHAPES:
            return None
        objects.append(ShapeObject(words[2], words[1], *cell))
    return objects if len(seen) == len(CELLS) else None


def layout_quality(
    llm_dir: str | os.PathLike,
    split_dir: str | os.PathLike,
    n: int = 60,
    tags: tuple[str, ...] | None = UNSEEN_TAGS,
    template: str = "Generate an image of {caption}.",
    user_prefix: str = "USER:",
    assistant_prefix: str = "ASSISTANT:",
    batch_size: int = 32,
) -> dict:
    """What a ShapesWorld language model knows, in words: asked to draw each of the first n prompts
    of a split (the categories `tags`; default validation's unseen ones, the demo's headline) in
    the MLLM's phrasing and chat layout, it writes a layout greedily, scored by the exact rule
    drawings are scored by (`spec_holds`). {"accuracy", "n", "ci95", "by_tag", "records"}."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..metrics import wilson_interval
    from .evaluation import t2i_prompts

    tokenizer = AutoTokenizer.from_pretrained(llm_dir)
    model = AutoModelForCausalLM.from_pretrained(llm_dir, dtype=torch.float32).eval()

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    prompts = t2i_prompts(split_dir, n, tags)
    records = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        rows = [
            [tokenizer.bos_token_id, *ids(user_prefix), *ids(template.format(caption=s.prompt)),
             *ids(assistant_prefix)]
            for _, s in chunk
        ]  # fmt: skip
        width = max(len(r) for r in rows)  # left padding: every row's answer starts at `width`
        input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        with torch.no_grad():
            out = model.generate(
                input_ids=input_ids, attention_mask=mask, max_new_tokens=96, do_sample=False,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
            )  # fmt: skip
        for (index, spec), row in zip(chunk, out[:, width:], strict=True):
            text = tokenizer.decode(row, skip_special_tokens=True)
            objects = parse_layout(text)
            correct = objects is not None and spec_holds(spec, objects)
            records.append({"prompt": index, "tag": spec.tag, "text": text, "correct": correct})
    hits = sum(r["correct"] for r in records)
    by_tag: dict[str, list[bool]] = {}
    for r in records:
        by_tag.setdefault(r["tag"], []).append(r["correct"])
    return {
        "accuracy": hits / max(len(records), 1),
        "n": len(records),
        "ci95": wilson_interval(hits, len(records)),
        "by_tag": {t: sum(v) / len(v) for t, v in by_tag.items()},
        "records": records,
    }
