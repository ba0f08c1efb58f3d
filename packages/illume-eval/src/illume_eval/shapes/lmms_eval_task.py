"""ShapesWorld questions as an lmms-eval task, so any model lmms-eval runs (ours through the
`illume` model plug-in, others through theirs) is scored on them by lmms-eval itself, offline:

    write_task("data/shapes/validation", "tasks/shapes_qa", per_type=20)
    python -m lmms_eval --model illume --model_args pretrained=illume-demo/pipeline \
        --tasks shapes_qa --include_path tasks/shapes_qa --output_path out/

The folder holds `shapes_qa.yaml` (lmms-eval's task format: a local JSON-lines dataset, no hub),
`utils.py` (the task's functions, which import this module), `questions.jsonl` and the images.
Answers are scored as illume-eval scores them (`normalize_answer`): accuracy overall and by
question type, each type a metric of its own.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import defaultdict
from pathlib import Path

from illume_core import atomic_directory, load_image, read_jsonl, resolve_inside

from .qa import QA_TYPES, normalize_answer

TASK = "shapes_qa"
#: What `write_task` records its folder as (illume_core.atomic_directory).
TASK_KIND = "lmms-eval-task"
POST_PROMPT = ""  # ShapesWorld's questions are answered in a word or phrase already


def task_questions(split_dir: str | os.PathLike, per_type: int, unseen: bool = True) -> list[dict]:
    """The questions of a split the task asks, chosen as the demo's QA figure chooses them
    (`qa_quality(per_type=...)`): the first `per_type` of each type, three times as many existence
    probes; with `unseen` (and a train split beside it), none asked of a layout training asked it
    of (`TrainingOverlap.question_seen`)."""
    from .audit import TrainingOverlap, split_scenes

    split_dir = Path(split_dir)
    keep = None
    if unseen and (split_dir.parent / "train" / "qa.jsonl").is_file():
        overlap, scenes = TrainingOverlap(split_dir.parent / "train"), split_scenes(split_dir)
        keep = lambda row: not overlap.question_seen(scenes[row["image"]], row)  # noqa: E731
    taken: dict[str, int] = defaultdict(int)
    rows = []
    for row in read_jsonl(split_dir / "qa.jsonl"):
        quota = per_type * (3 if row["type"] == "existence" else 1)
        if taken[row["type"]] < quota and (keep is None or keep(row)):
            taken[row["type"]] += 1
            rows.append(row)
    return rows


def write_task(
    split_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    per_type: int = 20,
    unseen: bool = True,
) -> Path:
    """`task_questions` of a ShapesWorld split as an lmms-eval task folder (written whole)."""
    split_dir = Path(split_dir)
    rows = task_questions(split_dir, per_type, unseen)
    out_dir = Path(out_dir)
    with atomic_directory(out_dir, TASK_KIND) as tmp:
        (tmp / "images").mkdir()
        for row in rows:
            source = resolve_inside(split_dir, row["image"])
            target = tmp / "images" / source.name
            if not target.exists():
                shutil.copyfile(source, target)
        lines = [
            json.dumps({"id": r["id"], "image": f"images/{Path(r['image']).name}",
                        "question": r["question"], "answer": r["answer"], "type": r["type"],
                        "negative_type": r.get("negative_type")})
            for r in rows
        ]  # fmt: skip
        (tmp / "questions.jsonl").write_text("\n".join(lines) + "\n")
        (tmp / "utils.py").write_text(UTILS)
        (tmp / f"{TASK}.yaml").write_text(_task_yaml(out_dir.resolve()))
    return out_dir


#: The folder's utils.py: lmms-eval imports the task's functions from it (`!function utils.NAME`).
UTILS = """\
from pathlib import Path

from illume_eval.shapes import lmms_eval_task as task

FOLDER = Path(__file__).resolve().parent
doc_to_text = task.doc_to_text
process_results = task.process_results
aggregate_accuracy = task.aggregate_accuracy


def doc_to_visual(doc):
    return task.doc_to_visual(doc, FOLDER)
"""


def _task_yaml(folder: Path) -> str:
    metrics = ["accuracy", *[f"{t}_accuracy" for t in QA_TYPES]]
    lines = [
        f"task: {TASK}",
        "dataset_path: json",
        "dataset_kwargs:",
        f"  data_files: {{test: {json.dumps(str(folder / 'questions.jsonl'))}}}",
        "test_split: test",
        "output_type: generate_until",
        "doc_to_visual: !function utils.doc_to_visual",
        "doc_to_text: !function utils.doc_to_text",
        'doc_to_target: "answer"',
        "generation_kwargs:",
        "  max_new_tokens: 16",
        "  temperature: 0",
        "  do_sample: false",
        "process_results: !function utils.process_results",
        "metric_list:",
    ]
    for metric in metrics:
        lines += [
            f"  - metric: {metric}",
            "    aggregation: !function utils.aggregate_accuracy",
            "    higher_is_better: true",
        ]
    lines += ["metadata:", "  version: 1.0"]
    return "\n".join(lines) + "\n"


# -- the task's functions (utils.py of the folder imports them) ----------------------------------


def doc_to_visual(doc: dict, folder: str | os.PathLike) -> list:
    """The doc's image, from the task folder (a path that leaves it is refused)."""
    return [load_image(resolve_inside(folder, doc["image"]))]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    kwargs = lmms_eval_specific_kwargs or {}
    return f"{kwargs.get('pre_prompt', '')}{doc['question']}{kwargs.get('post_prompt', '')}"


def process_results(doc: dict, results: list[str]) -> dict:
    """One answer -> this doc's accuracy, overall and under its question type's metric."""
    right = float(normalize_answer(results[0]) == normalize_answer(doc["answer"]))
    return {"accuracy": right, f"{doc['type']}_accuracy": right}


def aggregate_accuracy(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")
