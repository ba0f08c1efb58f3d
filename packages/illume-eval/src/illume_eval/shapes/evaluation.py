"""Figures of a whole pipeline (`illume_core.UnifiedPipeline`: `illume.IllumePipeline` is one) on a
ShapesWorld split, by illume-eval's exact scorers. The demo, the report and the benchmarks all
measure through here.

- text-to-image: GenEval-style accuracy per tag and overall (the split's geneval_metadata.jsonl),
  of a subset of categories (validation's unseen or seen prompts); beside it the lookup baseline
  and the codec ceiling on the same prompts (`t2i_baselines`);
- understanding: QA accuracy per question type, POPE figures per negative type (qa.jsonl);
- editing: target reached and untouched objects preserved (edits.jsonl), and the same figures of
  the edits' own targets through the tokenizer and detokenizer: the ceiling a perfect MLLM reaches;
- where edits miss, code by code: the MLLM's codes against the tokenizer's codes of each edit's
  source and target (copied where the edit leaves the image alone, changed where it does not);
- knowledge apart from sampling: whether the MLLM scores a prompt's own scene above a
  counterfactual one that fails the prompt (scenes.jsonl), by likelihood;
- what understanding sees: the same pairs judged by the model's own captioning (`judge_probe`,
  the judge of `IllumePipeline.generate_image(best_of=...)`).
Each returns its figures and the per-item records a report shows. torch is imported inside the
functions that need it (`pip install illume-eval[torch]`): the rest of illume-eval runs without.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from illume_core import UnifiedPipeline, load_image, read_jsonl

from ..metrics import (
    edit_metrics,
    edit_scores,
    geneval_summary,
    grouped,
    macro_interval,
    mean_interval,
    pope_metrics,
    qa_accuracy,
    wilson_interval,
)
from .audit import TrainingOverlap, lookup_scores
from .detection import detect, summary
from .edits import Edit
from .prompts import PromptSpec, check_spec, counterfactual
from .qa import Question, normalize_answer
from .world import BACKGROUND, GRID, Scene, render_pil

if TYPE_CHECKING:
    import torch


def _jsonl(path: Path, n: int | None) -> list[dict]:
    rows = read_jsonl(path)
    return rows if n is None else rows[:n]


def _generator(seed: int) -> torch.Generator:
    import torch

    return torch.Generator().manual_seed(seed)


def t2i_prompts(
    split_dir: str | os.PathLike, n: int | None = None, tags: Sequence[str] | None = None
) -> list[tuple[int, PromptSpec]]:
    """(index in the split, spec) of the first n prompts of a split, of the categories `tags`
    (all by default): validation's unseen or seen subset (illume_eval.shapes.splits)."""
    rows = _jsonl(Path(split_dir) / "geneval_metadata.jsonl", None)
    chosen = [
        (i, PromptSpec.from_geneval(r))
        for i, r in enumerate(rows)
        if tags is None or r["tag"] in tags
    ]
    return chosen if n is None else chosen[:n]


def t2i_quality(
    pipe: UnifiedPipeline,
    split_dir: str | os.PathLike,
    n: int = 100,
    seed: int = 0,
    batch_size: int = 16,
    best_of: int | None = None,
    images_per_prompt: int = 1,
    tags: Sequence[str] | None = None,
) -> dict:
    """Draws `images_per_prompt` images for each of the first n prompts of a split (of the
    categories `tags`, all by default; GenEval draws 4 a prompt); `best_of`: as
    `generate_image`'s, default the pipeline's sampling. About `batch_size` drawings a batch.
    {"summary": GenEval figures over all drawings, "ci95": the interval of its overall,
    "prompts", "drawings": how many, "records": one per drawing, a prompt's drawings together,
    each with its "prompt" (the index of its prompt in the split)}. The interval treats drawings
    as independent; several drawings of one prompt are not, so with images_per_prompt > 1 it is
    somewhat narrower than the truth."""
    if images_per_prompt < 1:
        raise ValueError(f"images_per_prompt must be at least 1, got {images_per_prompt}")
    prompts = t2i_prompts(split_dir, n, tags)
    generator = _generator(seed)
    records = []
    prompts_a_batch = max(batch_size // images_per_prompt, 1)
    for start in range(0, len(prompts), prompts_a_batch):
        chunk = prompts[start : start + prompts_a_batch]
        images = pipe.generate_image(
            [s.prompt for _, s in chunk],
            num_images=images_per_prompt,
            generator=generator,
            best_of=best_of,
        )
        drawn = [(i, s) for i, s in chunk for _ in range(images_per_prompt)]
        for (prompt, spec), image in zip(drawn, images, strict=True):
            objects = detect(image)
            check = check_spec(spec, objects)
            records.append(
                {
                    "prompt": prompt,
                    "spec": spec,
                    "image": image,
                    "correct": check.correct,
                    "check": check,
                    "objects": objects,
                }
            )
    verdicts = [(r["spec"].tag, r["correct"]) for r in records]
    return {
        "summary": geneval_summary(verdicts),
        "ci95": macro_interval(grouped(verdicts)),
        "prompts": len(prompts),
        "drawings": len(records),
        "records": records,
    }


def _codes(tokenizer, images: Sequence[Image.Image]) -> torch.Tensor:
    """A vision tokenizer's codes [B, h, w] of images (illume_tokenizer.SemanticTokenizer)."""
    import torch

    weight = next(tokenizer.parameters())
    with torch.no_grad():
        pixels = tokenizer.preprocess(list(images)).to(weight.device, weight.dtype)
        codes = tokenizer.encode(pixels).codes
    if tuple(codes.shape[1:]) != (GRID, GRID):
        raise ValueError(
            f"code-level scoring needs one code per cell ({GRID}x{GRID} codes), not "
            f"{tuple(codes.shape[1:])}: score the drawings with t2i_quality instead"
        )
    return codes


def code_contents(
    tokenizer, split_dir: str | os.PathLike, scenes: int = 3000
) -> dict[int, tuple | None]:
    """{code: the (shape, colour) it most often stands for in the first `scenes` scenes of a split
    (training's), None for an empty cell}: a vision tokenizer's codes of their images (one code a
    cell of the 3x3 grid) against the scenes' true objects. What `code_t2i_quality` reads an
    MLLM's codes as."""
    from collections import Counter

    split_dir = Path(split_dir)
    rows = _jsonl(split_dir / "scenes.jsonl", scenes)
    counts: dict[int, Counter] = defaultdict(Counter)
    for start in range(0, len(rows), 200):
        chunk = rows[start : start + 200]
        codes = _codes(tokenizer, [load_image(split_dir / r["image"]) for r in chunk])
        for row, grid in zip(chunk, codes, strict=True):
            cells = {
                (o["row"], o["col"]): (o["shape"], o["color"]) for o in row["scene"]["objects"]
            }
            for (i, j), code in np.ndenumerate(grid.numpy()):
                counts[int(code)][cells.get((i, j))] += 1
    return {code: c.most_common(1)[0][0] for code, c in counts.items()}


def _read_codes(spec: PromptSpec, grid, contents: dict[int, tuple | None]) -> bool:
    cells = [
        _CodeCell(*content, i, j)
        for (i, j), code in np.ndenumerate(np.asarray(grid))
        if (content := contents.get(int(code)))
    ]
    return check_spec(spec, cells).correct


def code_ceiling(
    tokenizer,
    split_dir: str | os.PathLike,
    contents: dict[int, tuple | None],
    n: int | None = None,
    tags: Sequence[str] | None = None,
) -> dict:
    """`code_t2i_quality`'s ceiling: each prompt's own scene image through the tokenizer's codes,
    read as `contents` says: what a perfect MLLM's codes would score. {"summary", "ci95", "n"}."""
    split_dir = Path(split_dir)
    prompts = t2i_prompts(split_dir, n, tags)
    rows = _jsonl(split_dir / "scenes.jsonl", None)  # row i: the scene prompt i was written from
    verdicts = []
    for start in range(0, len(prompts), 200):
        chunk = prompts[start : start + 200]
        codes = _codes(tokenizer, [load_image(split_dir / rows[i]["image"]) for i, _ in chunk])
        verdicts += [
            (s.tag, _read_codes(s, g, contents)) for (_, s), g in zip(chunk, codes, strict=True)
        ]
    return {
        "summary": geneval_summary(verdicts),
        "ci95": macro_interval(grouped(verdicts)),
        "n": len(verdicts),
    }


@dataclass(frozen=True)
class _CodeCell:
    shape: str
    color: str
    row: int
    col: int


def code_t2i_quality(
    pipe,
    split_dir: str | os.PathLike,
    contents: dict[int, tuple | None],
    n: int | None = None,
    seed: int = 0,
    images_per_prompt: int = 2,
    tags: Sequence[str] | None = None,
    batch_size: int = 32,
) -> dict:
    """Text to image at the level of codes: what the MLLM draws, without the detokenizer. The codes
    `pipe.draw_codes` draws (an `illume.IllumePipeline`, at its sampling) for the first n prompts of
    a split (of `tags`) are read cell by cell as `contents` says (`code_contents`), and each
    prompt's spec is checked on those cells by the exact scorer's rules. Seconds where the pixel
    score takes minutes; it loses nothing to the detokenizer, so it reads above `t2i_quality`.
    {"summary": GenEval figures (overall: the mean over tags), "ci95", "drawings", "variety": the
    share of cells whose code differs between a prompt's first drawing and each later one (0: the
    same drawing every time; two independent uniform draws differ in nearly all), "records"}."""
    import torch

    prompts = t2i_prompts(split_dir, n, tags)
    generator = _generator(seed)
    records, variety = [], []
    per_batch = max(batch_size // images_per_prompt, 1)
    for start in range(0, len(prompts), per_batch):
        drawn = [
            (i, s) for i, s in prompts[start : start + per_batch] for _ in range(images_per_prompt)
        ]
        conversations = [pipe.processor.t2i_messages(s.prompt) for _, s in drawn]
        unconditional = [pipe.processor.t2i_messages("")] * len(drawn)
        with torch.no_grad():
            codes = pipe.draw_codes(conversations, unconditional, generator)
        for (prompt, spec), grid in zip(drawn, codes, strict=True):
            records.append({"prompt": prompt, "spec": spec, "codes": grid.tolist(),
                            "correct": _read_codes(spec, grid.numpy(), contents)})  # fmt: skip
        for k in range(0, len(codes), images_per_prompt):
            first = codes[k]
            variety += [
                float((first != c).float().mean()) for c in codes[k + 1 : k + images_per_prompt]
            ]
    verdicts = [(r["spec"].tag, r["correct"]) for r in records]
    return {
        "summary": geneval_summary(verdicts),
        "ci95": macro_interval(grouped(verdicts)),
        "drawings": len(records),
        "variety": sum(variety) / len(variety) if variety else float("nan"),
        "records": records,
    }


def t2i_baselines(
    pipe: UnifiedPipeline,
    overlap: TrainingOverlap,
    split_dir: str | os.PathLike,
    n: int,
    tags=None,
    seed: int = 0,
    batch_size: int = 16,
) -> dict:
    """What the same prompts as `t2i_quality(pipe, split_dir, n, tags=tags)` score without the
    MLLM. "lookup_baseline": a training image drawn for the same spec, or nothing (0 on prompts
    never drawn in training, by construction). "codec_ceiling": each prompt's own scene (the
    split's image) through the tokenizer's codes and the detokenizer, scored on the prompt: a
    drawing figure above it is impossible, one far below it is the MLLM's. Each with its
    GenEval summary and interval; "codec_scene_recovery": the share of those images whose whole
    scene the scorer recovers; "originals", "images", "codec_correct": the prompts' images, their
    reconstructions and the reconstructions' verdicts, in prompt order."""
    split_dir = Path(split_dir)
    prompts = t2i_prompts(split_dir, n, tags)
    specs = [s for _, s in prompts]
    lookup = list(zip((s.tag for s in specs), lookup_scores(overlap, specs), strict=True))
    rows = _jsonl(split_dir / "scenes.jsonl", None)
    generator = _generator(seed)
    originals = [load_image(split_dir / rows[i]["image"]) for i, _ in prompts]
    images = []
    for start in range(0, len(prompts), batch_size):
        images += pipe.reconstruct(originals[start : start + batch_size], generator=generator)
    detected = [detect(image) for image in images]
    codec = [
        (s.tag, check_spec(s, objects).correct) for s, objects in zip(specs, detected, strict=True)
    ]
    recovered = [
        summary(objects) == Scene.from_dict(rows[i]["scene"]).summary()
        for (i, _), objects in zip(prompts, detected, strict=True)
    ]
    return {
        "lookup_baseline": geneval_summary(lookup),
        "lookup_ci95": macro_interval(grouped(lookup)),
        "codec_ceiling": geneval_summary(codec),
        "codec_ci95": macro_interval(grouped(codec)),
        "codec_scene_recovery": sum(recovered) / max(len(recovered), 1),
        "originals": originals,
        "images": images,
        "codec_correct": [correct for _, correct in codec],
    }


def object_layout(records: list[dict], split_dir: str | os.PathLike) -> dict:
    """Where the objects lie, as fractions of all objects by grid row (top to bottom) and column
    (left to right): in `t2i_quality`'s drawings ("drawn") and in the split's own scenes of the
    prompts drawn ("scenes", each once; a record without a "prompt" index is the split's next
    prompt). A raster-order sampler cooled too far puts the drawings' objects off to the last
    rows, where position prompts fail (benchmarks/RESULTS.md)."""
    drawn = {r.get("prompt", i) for i, r in enumerate(records)}
    rows = _jsonl(Path(split_dir) / "scenes.jsonl", max(drawn, default=-1) + 1)
    scenes = [Scene.from_dict(rows[i]["scene"]) for i in sorted(drawn)]

    def fractions(cells: list[tuple[int, int]]) -> dict[str, list[float]]:
        total = max(len(cells), 1)
        return {
            axis: [round(sum(c[k] == i for c in cells) / total, 3) for i in range(GRID)]
            for k, axis in enumerate(("rows", "columns"))
        }

    return {
        "drawn": fractions([(o.row, o.col) for r in records for o in r["objects"]]),
        "scenes": fractions([o.cell for scene in scenes for o in scene.objects]),
    }


def qa_quality(
    pipe: UnifiedPipeline,
    split_dir: str | os.PathLike,
    n: int = 300,
    batch_size: int = 32,
    keep: Callable[[dict], bool] | None = None,
    per_type: int | None = None,
) -> dict:
    """Answers questions of a split: the first n, or, with `per_type`, the first `per_type` of each
    question type and three times as many existence probes (POPE's three negative types); only
    rows `keep` accepts (a qa.jsonl row; e.g. not asked of the same layout in training).
    {"accuracy": per type, macro and overall, "ci95": the macro's interval, "questions": per
    type, "pope": per negative type, "records"}."""
    split_dir = Path(split_dir)
    rows = [r for r in _jsonl(split_dir / "qa.jsonl", None) if keep is None or keep(r)]
    if per_type is None:
        rows = rows[:n]
    else:
        taken: dict[str, int] = defaultdict(int)
        chosen = []
        for r in rows:
            quota = per_type * (3 if r["type"] == "existence" else 1)
            if taken[r["type"]] < quota:
                taken[r["type"]] += 1
                chosen.append(r)
        rows = chosen
    questions = [
        Question(r["question"], r["answer"], r["type"], r.get("negative_type")) for r in rows
    ]
    answers: list[str] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        images = [load_image(split_dir / r["image"]) for r in chunk]
        answers += pipe.answer(images, [r["question"] for r in chunk])
    records = [
        {
            "image": r["image"],
            "question": q.question,
            "answer": a,
            "expected": q.answer,
            "type": q.type,
            "right": normalize_answer(a) == normalize_answer(q.answer),
        }
        for r, q, a in zip(rows, questions, answers, strict=True)
    ]
    verdicts = [(r["type"], r["right"]) for r in records]
    return {
        "accuracy": qa_accuracy(questions, answers),
        "ci95": macro_interval(grouped(verdicts)),
        "questions": {t: len(v) for t, v in sorted(grouped(verdicts).items())},
        "pope": pope_metrics(questions, answers),
        "records": records,
    }


def edit_quality(
    pipe: UnifiedPipeline,
    split_dir: str | os.PathLike,
    n: int = 100,
    seed: int = 0,
    batch_size: int = 16,
    keep: Callable[[dict], bool] | None = None,
) -> dict:
    """Edits the first n source images of a split that `keep` accepts (an edits.jsonl row; all by
    default); {"summary": target reached / preserved, "ci95": their intervals, "edits": how many,
    "records"}."""
    split_dir = Path(split_dir)
    rows = [r for r in _jsonl(split_dir / "edits.jsonl", None) if keep is None or keep(r)][:n]
    edits = [Edit.from_dict(r) for r in rows]
    generator = _generator(seed)
    images = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        sources = [load_image(split_dir / r["source"]) for r in chunk]
        images += pipe.edit(sources, [r["instruction"] for r in chunk], generator=generator)
    records = [{"row": r, "image": im} for r, im in zip(rows, images, strict=True)]
    scores = [edit_scores(e, im) for e, im in zip(edits, images, strict=True)]
    return {
        "summary": edit_metrics(edits, images),
        "ci95": {
            "target_reached": wilson_interval(sum(r for r, _ in scores), len(scores)),
            "preserved": mean_interval([p for _, p in scores]),
        },
        "edits": len(rows),
        "records": records,
    }


def edit_ceiling(
    pipe: UnifiedPipeline,
    split_dir: str | os.PathLike,
    n: int = 100,
    seed: int = 0,
    batch_size: int = 16,
) -> dict:
    """The editing figures of an MLLM that gets every code right: each edit's target image through
    the tokenizer and the detokenizer (`pipe.reconstruct`), scored as `edit_quality` scores an edit;
    "copy" scores each source image so, an MLLM that returns its input unchanged.
    {"summary": the target's figures, "copy": the source's, "records"}."""
    split_dir = Path(split_dir)
    rows = _jsonl(split_dir / "edits.jsonl", n)
    edits = [Edit.from_dict(r) for r in rows]
    drawn: dict[str, list] = {}
    for which in ("target", "source"):
        generator = _generator(seed)
        drawn[which] = []
        for start in range(0, len(rows), batch_size):
            chunk = [load_image(split_dir / r[which]) for r in rows[start : start + batch_size]]
            drawn[which] += pipe.reconstruct(chunk, generator=generator)
    records = [{"row": r, "image": im} for r, im in zip(rows, drawn["target"], strict=True)]
    return {
        "summary": edit_metrics(edits, drawn["target"]),
        "copy": edit_metrics(edits, drawn["source"]),
        "records": records,
    }


def code_agreement(
    drawn: torch.Tensor,
    source: torch.Tensor,
    target: torch.Tensor,
    on_object: torch.Tensor | None = None,
) -> dict:
    """Codes [B, h, w] an MLLM drew for B edits against the tokenizer's codes of their sources and
    targets. "copied": the fraction of cells the edit leaves alone (source == target there) where
    the drawn code is the target's; "changed": the same over the cells it changes; "all_copied":
    the fraction of edits that copy every cell they leave alone; "cells": how many of each;
    "copied_by_distance": "copied" by how far a cell lies from the nearest cell its edit changes
    (1, 2, or 3+ cells, diagonals counting 1; an edit that changes none is all 3+): whether misses
    cluster at the edit's border or fall anywhere in the image. With `on_object` [B, h, w] (the
    cells whose source patch shows part of an object: `object_cells`), "copied_by_content":
    "copied" over the cells left alone that show an object and over those that show background."""
    import torch

    same = source == target
    right = drawn == target

    def rate(mask: torch.Tensor) -> float:
        return float(right[mask].float().mean()) if mask.any() else float("nan")

    changed = (~same).float().unsqueeze(1)  # [B, 1, h, w]
    near = [
        torch.nn.functional.max_pool2d(changed, 2 * d + 1, stride=1, padding=d).squeeze(1).bool()
        for d in (1, 2)
    ]  # within d cells of a changed cell
    by_distance = {"1": same & near[0], "2": same & near[1] & ~near[0], "3+": same & ~near[1]}
    return {
        "copied": rate(same),
        "changed": rate(~same),
        "all_copied": float((right | ~same).flatten(1).all(1).float().mean()),
        "cells": {"copied": int(same.sum()), "changed": int((~same).sum())},
        "copied_by_distance": {k: rate(m) for k, m in by_distance.items()},
    } | (
        {}
        if on_object is None
        else {
            "copied_by_content": {
                "object": rate(same & on_object),
                "background": rate(same & ~on_object),
            }
        }
    )


def object_cells(images: Sequence[Image.Image], grid: tuple[int, int]) -> torch.Tensor:
    """[B, h, w]: the grid cells whose patch of each image holds a pixel other than ShapesWorld's
    plain `BACKGROUND`: the cells that show part of an object."""
    import torch

    h, w = grid
    out = []
    for image in images:
        pixels = np.asarray(image.convert("RGB"))  # [H, W, 3]
        height, width = pixels.shape[:2]
        if height % h or width % w:
            raise ValueError(f"a {width}x{height} image does not tile into a {h}x{w} grid")
        on_object = (pixels != BACKGROUND).any(-1)  # [H, W]
        out.append(on_object.reshape(h, height // h, w, width // w).any(axis=(1, 3)))
    return torch.from_numpy(np.stack(out))


def edit_codes(
    pipe: UnifiedPipeline,
    split_dir: str | os.PathLike,
    n: int = 100,
    seed: int = 0,
    batch_size: int = 16,
) -> dict:
    """Where edits miss, code by code: `code_agreement` of the MLLM's codes for n edits of a split
    (`pipe.edit_codes`, the pipeline's sampling), overall and per edit kind. An MLLM that redraws
    what it should copy loses preservation before the detokenizer does. {"summary", "by_kind"}."""
    import torch

    split_dir = Path(split_dir)
    rows = _jsonl(split_dir / "edits.jsonl", n)
    generator = _generator(seed)
    drawn, source, target, on_object = [], [], [], []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        sources = [load_image(split_dir / r["source"]) for r in chunk]
        targets = [load_image(split_dir / r["target"]) for r in chunk]
        with torch.no_grad():
            drawn.append(
                pipe.edit_codes(sources, [r["instruction"] for r in chunk], generator).cpu()
            )
            source.append(pipe.image_codes(sources).cpu())
            target.append(pipe.image_codes(targets).cpu())
        on_object.append(object_cells(sources, tuple(source[-1].shape[1:])))
    grids = [torch.cat(t) for t in (drawn, source, target, on_object)]
    kinds = [r["kind"] for r in rows]
    by_kind = {
        kind: code_agreement(*(t[[k == kind for k in kinds]] for t in grids))
        for kind in sorted(set(kinds))
    }
    return {"summary": code_agreement(*grids), "by_kind": by_kind}


def _counterfactual_pairs(split_dir: Path, n: int) -> tuple[list, int]:
    """(spec, scene, counterfactual scene) of each of the first n scenes of a split that has one,
    and the split's image size."""
    rows = _jsonl(split_dir / "scenes.jsonl", n)
    pairs = []
    for row in rows:
        spec, scene = PromptSpec.from_geneval(row["spec"]), Scene.from_dict(row["scene"])
        changed = counterfactual(scene, spec)
        if changed is not None:
            pairs.append((spec, scene, changed))
    size = load_image(split_dir / rows[0]["image"]).width if rows else 0
    return pairs, size


def _won_by_tag(wins: list[tuple[str, tuple[bool, ...]]], names: tuple[str, ...]) -> dict:
    by_tag: dict[str, list[tuple[bool, ...]]] = defaultdict(list)
    for tag, won in wins:
        by_tag[tag].append(won)
    return {
        tag: {
            "pairs": len(v),
            **{name: sum(w[i] for w in v) / len(v) for i, name in enumerate(names)},
        }
        for tag, v in by_tag.items()
    }


def likelihood_probe(
    pipe: UnifiedPipeline, split_dir: str | os.PathLike, n: int = 400, batch_size: int = 16
) -> dict:
    """Does the MLLM know what its prompts ask, apart from how it samples? Each of the first n
    scenes of a split that has a counterfactual (illume-eval's `counterfactual`: the scene changed
    in only what its category tests, so that it fails its prompt) is scored against it by
    log p(codes | prompt) ("conditional") and by log p(codes | prompt) - log p(codes | no prompt)
    ("guided", the direction classifier-free guidance amplifies).
    {"summary": per tag {"pairs", "conditional", "guided"}, the fractions of pairs where the
    scene's own codes score higher (0.5: no knowledge), "records"}."""
    pairs, size = _counterfactual_pairs(Path(split_dir), n)  # drawn at the split's own size
    records = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        images = [render_pil(s, size) for _, scene, changed in chunk for s in (scene, changed)]
        codes = pipe.image_codes(images)
        prompts = [spec.prompt for spec, _, _ in chunk for _ in range(2)]
        cond = pipe.image_log_likelihood(prompts, codes)
        uncond = pipe.image_log_likelihood([""] * len(prompts), codes)
        for k, (spec, _, _) in enumerate(chunk):
            own, other = 2 * k, 2 * k + 1
            records.append(
                {
                    "tag": spec.tag,
                    "prompt": spec.prompt,
                    "conditional": (float(cond[own]), float(cond[other])),
                    "unconditional": (float(uncond[own]), float(uncond[other])),
                }
            )
    wins = []
    for r in records:
        (c_own, c_other), (u_own, u_other) = r["conditional"], r["unconditional"]
        wins.append((r["tag"], (c_own > c_other, c_own - u_own > c_other - u_other)))
    return {"summary": _won_by_tag(wins, ("conditional", "guided")), "records": records}


def judge_probe(
    pipe: UnifiedPipeline, split_dir: str | os.PathLike, n: int = 400, batch_size: int = 16
) -> dict:
    """The likelihood probe's pairs, judged by understanding instead (`IllumePipeline.judge`: the
    prompt's likelihood as a caption of each image): can the model see what it cannot draw?
    Drawing with `best_of` gains only where it can. {"summary": per tag {"pairs", "judged"}, the
    fraction of pairs where the scene's own image scores higher, "records"}."""
    pairs, size = _counterfactual_pairs(Path(split_dir), n)
    records = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        images = [render_pil(s, size) for _, scene, changed in chunk for s in (scene, changed)]
        scores = pipe.judge(images, [spec.prompt for spec, _, _ in chunk for _ in range(2)])
        for k, (spec, _, _) in enumerate(chunk):
            own, other = float(scores[2 * k]), float(scores[2 * k + 1])
            records.append({"tag": spec.tag, "prompt": spec.prompt, "judged": (own, other)})
    wins = [(r["tag"], (r["judged"][0] > r["judged"][1],)) for r in records]
    return {"summary": _won_by_tag(wins, ("judged",)), "records": records}
