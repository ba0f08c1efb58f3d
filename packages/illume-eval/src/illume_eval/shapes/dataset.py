"""Writes ShapesWorld datasets in the formats the trainer reads for real data too.

Layout of `write_dataset(out, ...)`, one folder per split (train, validation, heldout):

    info.json                     seed, image size, counts, held-out combinations
    <split>/images/000000.png     the scenes
    <split>/scenes.jsonl          {"id", "image", "caption", "scene", "spec", "generation"}  (spec: GenEval format)
    <split>/captions.jsonl        {"image", "text", "scene", "spec", "generation"}  captions (encoder,
                                  tokenizer, detokenizer; self-enhancement draws those with
                                  "generation": true)
    <split>/t2i.json              LLaVA-style conversations, text -> image    ("<image>" in the answer;
                                  in train, only scenes without a held-out composition)
    <split>/i2t.json              LLaVA-style conversations, image -> caption (stage 1 captioning)
    <split>/qa.json               LLaVA-style conversations, image + one question -> its answer
    <split>/qa.jsonl              {"id", "image", "question", "answer", "type", "negative_type"}
    <split>/edits/000000.png      edit targets
    <split>/edits.jsonl           {"id", "source", "instruction", "target", "kind", ...scenes}
    <split>/edits.json            LLaVA-style conversations, image + instruction -> image
    <split>/assessments.json      LLaVA-style conversations, image + assessment instruction for a
                                  caption (its own or another scene's) -> the exact assessment
                                  JSON, with the caption's "spec"
    <split>/pope_<type>.jsonl     POPE question files (random, popular, adversarial)
    <split>/geneval_metadata.jsonl  GenEval prompt metadata

What each split may hold is splits.py's rule: the training split shows held-out compositions
(about 12% of its scenes, marked "generation": false), never as a generation target (text to image,
edit target); validation's unseen prompts have specs no training scene has.

Paths inside manifests are relative to the manifest's folder. Item i of a split is a pure function
of (seed, split, i), so datasets are reproducible and any prefix of a larger one is the smaller one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from illume_core import atomic_write_json, atomic_write_text, read_json

from .edits import sample_edit
from .prompts import sample_prompt
from .qa import POPE_TYPES, scene_questions
from .splits import HELDOUT_PAIRS, HELDOUT_RELATIONS, SPLITS, generation_allowed
from .world import DEFAULT_SIZE, render

FORMAT_VERSION = 5  # 2: assessments.json; 3: qa.json one question per conversation; 4: edits
# ask instruction first; 5: splits by meaning (reserved validation specs, held-out compositions in
# training scenes but not in generation data)

_T2I_INSTRUCTIONS = (
    "Generate an image of {c}.",
    "Draw {c}.",
    "Please create an image showing {c}.",
    "Can you draw an image of {c}?",
)


_I2T_INSTRUCTIONS = (
    "Describe the image.",
    "What does the image show?",
    "Write a short caption for the image.",
)


def item_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLITS.index(split), index])


def t2i_instruction(caption: str, rng: np.random.Generator) -> str:
    return _T2I_INSTRUCTIONS[int(rng.integers(len(_T2I_INSTRUCTIONS)))].format(c=caption)


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def _save_png(path: Path, array: np.ndarray) -> None:
    # Written in place, not through atomic_write: a dataset is complete once its info.json is
    # written (last, atomically, after os.sync), and an incomplete one is rewritten whole by
    # ensure_dataset, so a torn image never outlives a crash. A temp file, fsync and rename per
    # image took half of the 20,000-scene dataset's minute.
    Image.fromarray(array).save(path, format="PNG")


def write_split(
    out: str | os.PathLike,
    split: str,
    n: int,
    seed: int,
    size: int = DEFAULT_SIZE,
    on_item: Callable[[], None] | None = None,
) -> dict[str, int]:
    """Writes one split of n scenes (with their QA, edits and prompt metadata); returns counts."""
    # here, not at the top: illume_eval.assessment imports this package
    from ..assessment import ASSESSMENT_INSTRUCTION, oracle_assessment

    folder = Path(out) / split
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "edits").mkdir(parents=True, exist_ok=True)
    scenes, captions, t2i, i2t, qa_conv, qa_flat, edits, edit_conv, metadata, assess = (
        [],
        [],
        [],
        [],
        [],
        [],
        [],
        [],
        [],
        [],
    )
    pope: dict[str, list[dict]] = {k: [] for k in POPE_TYPES}
    for i in range(n):
        rng = item_rng(seed, split, i)
        scene, spec = sample_prompt(rng, split)
        image = f"images/{i:06d}.png"
        _save_png(folder / image, render(scene, size))
        item_id = f"{split}-{i:06d}"
        # A training scene that shows a held-out composition is for reading, never for drawing.
        generation = split != "train" or generation_allowed(scene)
        scenes.append(
            {
                "id": item_id,
                "image": image,
                "caption": spec.prompt,
                "scene": scene.to_dict(),
                "spec": spec.to_geneval(),
                "generation": generation,
            }
        )
        captions.append(
            {
                "image": image,
                "text": spec.prompt,
                "scene": scene.to_dict(),
                "spec": spec.to_geneval(),
                "generation": generation,
            }
        )
        metadata.append(spec.to_geneval())
        instruction = t2i_instruction(spec.prompt, rng)  # drawn always: the rng stream stays one
        if generation:
            t2i.append(
                {
                    "id": item_id,
                    "image": image,
                    "conversations": [
                        {"from": "human", "value": instruction},
                        {"from": "gpt", "value": "<image>"},
                    ],
                }
            )
        # One conversation per question, as evaluation asks them. A multi-turn conversation of an
        # image's questions leaks its answers: the "yes" probes and the position answer name the
        # objects, so a model learns to answer later turns from the text history, and a stage 3
        # trained on it answered single questions by name at chance (colour 0.43, existence 0.50;
        # benchmarks/RESULTS.md).
        for j, q in enumerate(scene_questions(scene, rng)):
            qa_flat.append({"id": f"{item_id}-q{j}", "image": image, **q.to_dict()})
            qa_conv.append(
                {
                    "id": f"{item_id}-q{j}",
                    "image": image,
                    "conversations": [
                        {"from": "human", "value": "<image>\n" + q.question},
                        {"from": "gpt", "value": q.answer},
                    ],
                }
            )
            if q.negative_type:
                pope[q.negative_type].append(
                    {
                        "question_id": f"{item_id}-q{j}",
                        "image": image,
                        "text": q.question,
                        "label": q.answer,
                    }
                )
        edit = sample_edit(scene, rng, split)
        if edit is not None:
            target = f"edits/{i:06d}.png"
            _save_png(folder / target, render(edit.target, size))
            edits.append(
                {
                    "id": item_id,
                    "source": image,
                    "instruction": edit.instruction,
                    "target": target,
                    **edit.to_dict(),
                }
            )
            edit_conv.append(
                {
                    "id": item_id,
                    "images": [image, target],
                    "conversations": [
                        {"from": "human", "value": edit.instruction + "\n<image>"},
                        {"from": "gpt", "value": "<image>"},
                    ],
                }
            )
        # a generator of its own, so that adding captioning left every other item as it was
        describe = np.random.default_rng([seed, SPLITS.index(split), i, 1])
        i2t.append(
            {
                "id": item_id,
                "image": image,
                "conversations": [
                    {
                        "from": "human",
                        "value": "<image>\n" + str(describe.choice(_I2T_INSTRUCTIONS)),
                    },
                    {"from": "gpt", "value": spec.prompt},
                ],
            }
        )
        # The image judged against its own caption (every aspect right) or another scene's (some
        # aspects wrong), with the exact assessment: self-assessment's format and words, for the
        # text tokenizer and for teaching an assessor. A generator of its own, as above.
        judge = np.random.default_rng([seed, SPLITS.index(split), i, 3])
        asked = spec if judge.random() < 0.3 else sample_prompt(judge, split)[1]
        verdict = oracle_assessment(asked, objects=scene.objects)
        assess.append(
            {
                "id": item_id,
                "image": image,
                "spec": asked.to_geneval(),  # what the caption asks for, as in scenes.jsonl
                "conversations": [
                    {
                        "from": "human",
                        "value": "<image>\n" + ASSESSMENT_INSTRUCTION.format(prompt=asked.prompt),
                    },
                    {"from": "gpt", "value": verdict.to_json()},
                ],
            }
        )
        if on_item:
            on_item()
    atomic_write_text(folder / "scenes.jsonl", _jsonl(scenes))
    atomic_write_text(folder / "captions.jsonl", _jsonl(captions))
    atomic_write_text(folder / "qa.jsonl", _jsonl(qa_flat))
    atomic_write_text(folder / "edits.jsonl", _jsonl(edits))
    atomic_write_text(folder / "geneval_metadata.jsonl", _jsonl(metadata))
    for kind, rows in pope.items():
        atomic_write_text(folder / f"pope_{kind}.jsonl", _jsonl(rows))
    atomic_write_json(folder / "t2i.json", t2i)
    atomic_write_json(folder / "i2t.json", i2t)
    atomic_write_json(folder / "qa.json", qa_conv)
    atomic_write_json(folder / "edits.json", edit_conv)
    atomic_write_json(folder / "assessments.json", assess)
    return {"scenes": n, "questions": len(qa_flat), "edits": len(edits)}


def write_dataset(
    out: str | os.PathLike,
    n: int,
    seed: int = 0,
    size: int = DEFAULT_SIZE,
    n_eval: int | None = None,
    progress: bool = True,
) -> dict:
    """Writes train (n scenes), validation and heldout (n_eval each, default max(100, n // 10))."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    n_eval = max(100, n // 10) if n_eval is None else n_eval
    sizes = {"train": n, "validation": n_eval, "heldout": n_eval}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # the marker goes first and comes back last: a crash in between leaves no dataset that
    # ensure_dataset would take for finished (the images are written in place)
    (out / "info.json").unlink(missing_ok=True)
    counts = {}
    if progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
        ) as bar:
            for split, count in sizes.items():
                task = bar.add_task(f"ShapesWorld {split}", total=count)
                counts[split] = write_split(
                    out, split, count, seed, size, lambda t=task: bar.advance(t)
                )
    else:
        counts = {
            split: write_split(out, split, count, seed, size) for split, count in sizes.items()
        }
    info = {
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "image_size": size,
        "counts": counts,
        "heldout": {
            "color_shape_pairs": sorted(f"{c} {s}" for c, s in HELDOUT_PAIRS),
            "relations": [" ".join(r) for r in HELDOUT_RELATIONS],
        },
    }
    if hasattr(os, "sync"):  # every image on disk before the marker that says they are all there
        os.sync()
    atomic_write_json(out / "info.json", info)
    return info


def ensure_dataset(
    out: str | os.PathLike,
    n: int,
    seed: int = 0,
    size: int = DEFAULT_SIZE,
    n_eval: int | None = None,
    progress: bool = True,
) -> dict:
    """The dataset at `out`, written unless one of this format, seed, size and these counts is
    already there. An older format is rewritten; from format 5 on (splits by meaning) its items
    differ, so stages trained on the old one must not be resumed on it (`illume.demo` refuses)."""
    info_path = Path(out) / "info.json"
    if info_path.is_file():
        info = read_json(info_path)
        n_eval_ = max(100, n // 10) if n_eval is None else n_eval
        counts = {k: v.get("scenes") for k, v in info.get("counts", {}).items()}
        if (
            info.get("format_version") == FORMAT_VERSION
            and info.get("seed") == seed
            and info.get("image_size") == size
            and counts == {"train": n, "validation": n_eval_, "heldout": n_eval_}
        ):
            return info
    return write_dataset(out, n, seed, size, n_eval, progress)
