"""Interop with the official benchmark formats, so our scorer and theirs read the same files.

GenEval: prompts as `evaluation_metadata.jsonl` (one JSON object per line: tag, include, exclude,
prompt); samples as `<outdir>/<index:05d>/metadata.jsonl` + `<outdir>/<index:05d>/samples/<k:04d>.png`,
which is what GenEval's `generation/diffusers_generate.py` writes and `evaluation/evaluate_images.py`
reads. POPE: question files of `{"question_id", "image", "text", "label"}` lines and answer files of
`{"question_id", "text"}` lines.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from illume_core import atomic_write, atomic_write_text, load_image, read_jsonl

from .metrics import geneval_summary, pope_metrics, score_t2i
from .shapes.prompts import PromptSpec
from .shapes.qa import Question


def write_geneval_metadata(specs: Sequence[PromptSpec], path: str | os.PathLike) -> Path:
    text = "".join(json.dumps(s.to_geneval()) + "\n" for s in specs)
    return atomic_write_text(path, text)


def read_geneval_metadata(path: str | os.PathLike) -> list[PromptSpec]:
    return [PromptSpec.from_geneval(row) for row in read_jsonl(path)]


def write_geneval_samples(
    outdir: str | os.PathLike, specs: Sequence[PromptSpec], images: Sequence[Sequence[Image.Image]]
) -> Path:
    """Writes images per prompt in GenEval's sample-folder layout."""
    outdir = Path(outdir)
    for index, (spec, group) in enumerate(zip(specs, images, strict=True)):
        folder = outdir / f"{index:05d}"
        (folder / "samples").mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "metadata.jsonl", json.dumps(spec.to_geneval()) + "\n")
        for k, image in enumerate(group):
            atomic_write(
                folder / "samples" / f"{k:04d}.png",
                lambda tmp, im=image: im.save(tmp, format="PNG"),
            )
    return outdir


def read_geneval_samples(outdir: str | os.PathLike) -> list[tuple[PromptSpec, list[Path]]]:
    """(spec, sample paths) per prompt folder of a GenEval-style sample folder."""
    outdir = Path(outdir)
    if not outdir.is_dir():
        raise FileNotFoundError(f"{outdir} is not a folder of GenEval samples")
    out = []
    for folder in sorted(p for p in outdir.iterdir() if p.is_dir() and p.name.isdigit()):
        meta = folder / "metadata.jsonl"
        if not meta.is_file():
            raise ValueError(f"{folder} has no metadata.jsonl; is this a GenEval sample folder?")
        (row,) = read_jsonl(meta)[:1]
        out.append((PromptSpec.from_geneval(row), sorted((folder / "samples").glob("*.png"))))
    return out


def score_geneval_folder(
    outdir: str | os.PathLike, strict: bool = True
) -> tuple[list[dict], dict[str, float]]:
    """Scores a GenEval-style sample folder with the ShapesWorld scorer.

    Returns GenEval-like result rows (filename, tag, prompt, correct, reason) and the summary.
    """
    rows = []
    for spec, paths in read_geneval_samples(outdir):
        images = [load_image(p) for p in paths]
        for path, result in zip(paths, score_t2i([spec] * len(images), images, strict=strict)):
            failed = [a for a, ok in result.check.aspects.items() if not ok]
            rows.append(
                {
                    "filename": str(path),
                    "tag": spec.tag,
                    "prompt": spec.prompt,
                    "correct": result.check.correct,
                    "reason": " ".join(result.check.analyses[a] for a in failed),
                    "detected": [o.name + f" @ {o.row},{o.col}" for o in result.detected],
                }
            )
    return rows, geneval_summary((r["tag"], r["correct"]) for r in rows)


def write_pope_questions(rows: Sequence[dict], path: str | os.PathLike) -> Path:
    """POPE question file: rows of {"question_id", "image", "text", "label"}."""
    for row in rows:
        missing = {"question_id", "image", "text", "label"} - set(row)
        if missing:
            raise ValueError(f"POPE question row {row} lacks {sorted(missing)}")
    return atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def score_pope_files(
    question_file: str | os.PathLike, answer_file: str | os.PathLike
) -> dict[str, float]:
    """POPE metrics of an answer file ({"question_id", "text"} lines) against a question file."""
    questions = read_jsonl(question_file)
    answers = {
        row["question_id"]: row.get("text", row.get("answer", ""))
        for row in read_jsonl(answer_file)
    }
    missing = [q["question_id"] for q in questions if q["question_id"] not in answers]
    if missing:
        raise ValueError(
            f"{answer_file} has no answer for {len(missing)} question(s), e.g. {missing[0]!r}"
        )
    qs = [Question(q["text"], q["label"], "existence", "pope") for q in questions]
    return pope_metrics(qs, [answers[q["question_id"]] for q in questions])["pope"]
