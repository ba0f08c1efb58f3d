"""What an evaluation item shares with training, and what a lookup table scores on it.

A figure on items the model was trained on measures memory. `TrainingOverlap` indexes a
ShapesWorld dataset's training split as the recipes read it and says, for each validation or
held-out item, whether its text, its spec (`PromptSpec.key`: the meaning, phrasing ignored), its
exact prompt and its object layout occur there as a drawing request; whether a question or an
edit instruction was asked of the same layout (by meaning: the content words, in order); and what
the lookup baseline draws: a training image drawn for the same spec, or nothing. `audit` tabulates
all of it per split and category (`illume shapes audit DATA_DIR`).
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from PIL import Image

from illume_core import MAX_DATA_BYTES, read_json, read_jsonl

from ..metrics import geneval_summary
from .detection import detect
from .prompts import PromptSpec, check_spec
from .qa import POPE_TYPES
from .splits import SEEN_TAGS, UNSEEN_TAGS
from .world import CELL_NAMES, COLOR_NAMES, SHAPES, Scene

#: The text-to-image request evaluation sends (illume-mllm's `ProcessorConfig.t2i_template`).
EVAL_T2I_TEMPLATE = "Generate an image of {caption}."

Layout = tuple[tuple[str, str, int, int], ...]

_CONTENT = (
    set(COLOR_NAMES)
    | set(SHAPES)
    | {w for name in CELL_NAMES.values() for w in name.split()}
    | {"left", "right", "above", "below", "objects", "nothing"}
)


def layout(scene: Scene) -> Layout:
    """The objects of a scene as (shape, colour, row, col), sorted: what 'the same scene' means
    here (the jitter of position and size ignored)."""
    return tuple(scene.summary())


def content_words(text: str) -> tuple[str, ...]:
    """The words of a question or instruction that carry its meaning (colours, shapes, cells,
    relations), in order and singular: 'What colour is the circle?' and 'Which color does the
    circle have?' give the same ('circle',)."""
    words = re.findall(r"[a-z]+", text.lower())
    singular = [w[:-1] if w.endswith("s") and w[:-1] in SHAPES else w for w in words]
    return tuple(w for w in singular if w in _CONTENT)


def split_scenes(split_dir: str | os.PathLike) -> dict[str, Scene]:
    """Image path (relative to the split) -> its scene, from the split's scenes.jsonl."""
    return {
        r["image"]: Scene.from_dict(r["scene"])
        for r in read_jsonl(Path(split_dir) / "scenes.jsonl")
    }


class TrainingOverlap:
    """The training split of a ShapesWorld dataset, indexed for overlap checks and the lookup
    baseline. Drawing requests are the items of `t2i.json` (what the MLLM stages and
    self-enhancement draw); questions and edits those of `qa.jsonl` and `edits.jsonl`."""

    def __init__(self, train_dir: str | os.PathLike):
        train_dir = Path(train_dir)
        self.train_dir = train_dir
        scenes = {r["image"]: r for r in read_jsonl(train_dir / "scenes.jsonl")}
        conversations = read_json(train_dir / "t2i.json", MAX_DATA_BYTES)
        self.drawn_for: dict[str, list[str]] = defaultdict(list)  # spec key -> images
        self.texts: set[str] = set()
        self.prompts: set[str] = set()
        self.layouts: set[tuple[str, Layout]] = set()
        for conversation in conversations:
            row = scenes[conversation["image"]]
            spec = PromptSpec.from_geneval(row["spec"])
            key = spec.key()
            self.drawn_for[key].append(row["image"])
            self.texts.add(spec.prompt)
            self.prompts.add(conversation["conversations"][0]["value"])
            self.layouts.add((key, layout(Scene.from_dict(row["scene"]))))
        by_image = {image: Scene.from_dict(r["scene"]) for image, r in scenes.items()}
        self.questions: set[tuple[Layout, str]] = set()
        self.question_keys: set[tuple[Layout, str, tuple[str, ...]]] = set()
        for q in read_jsonl(train_dir / "qa.jsonl"):
            where = layout(by_image[q["image"]])
            self.questions.add((where, q["question"]))
            self.question_keys.add((where, q["type"], content_words(q["question"])))
        self.instructions: set[tuple[Layout, str]] = set()
        self.instruction_keys: set[tuple[Layout, str, tuple[str, ...]]] = set()
        for e in read_jsonl(train_dir / "edits.jsonl"):
            where = layout(Scene.from_dict(e["source_scene"]))
            self.instructions.add((where, e["instruction"]))
            self.instruction_keys.add((where, e["kind"], content_words(e["instruction"])))

    # -- text to image
    def t2i_overlap(self, spec: PromptSpec, scene: Scene | None = None) -> dict[str, bool]:
        """Whether training asked to draw: the same caption ("text"), the same spec in any
        phrasing ("spec"), the exact request evaluation sends ("prompt"), and the same spec with
        the identical object layout ("layout", needs the item's scene)."""
        key = spec.key()
        return {
            "text": spec.prompt in self.texts,
            "spec": key in self.drawn_for,
            "prompt": EVAL_T2I_TEMPLATE.format(caption=spec.prompt) in self.prompts,
            "layout": scene is not None and (key, layout(scene)) in self.layouts,
        }

    def lookup(self, spec: PromptSpec) -> Path | None:
        """The lookup baseline's drawing: the first training image drawn for this spec, or None."""
        images = self.drawn_for.get(spec.key())
        return self.train_dir / images[0] if images else None

    # -- questions and edits
    def question_seen(self, scene: Scene, row: dict) -> bool:
        """Whether training asked this question (by meaning) of the same layout."""
        return (layout(scene), row["type"], content_words(row["question"])) in self.question_keys

    def question_overlap(self, scene: Scene, row: dict) -> dict[str, bool]:
        return {
            "question": (layout(scene), row["question"]) in self.questions,
            "meaning": self.question_seen(scene, row),
        }

    def edit_seen(self, row: dict) -> bool:
        """Whether training asked this edit (by meaning) of the same source layout."""
        where = layout(Scene.from_dict(row["source_scene"]))
        return (where, row["kind"], content_words(row["instruction"])) in self.instruction_keys

    def edit_overlap(self, row: dict) -> dict[str, bool]:
        where = layout(Scene.from_dict(row["source_scene"]))
        return {
            "instruction": (where, row["instruction"]) in self.instructions,
            "meaning": self.edit_seen(row),
        }


def lookup_scores(overlap: TrainingOverlap, specs: Sequence[PromptSpec]) -> list[bool]:
    """Per prompt: whether the lookup baseline's drawing (a training image drawn for the same
    spec; nothing where none was) passes the exact scorer on the prompt."""
    out = []
    for spec in specs:
        found = overlap.lookup(spec)
        if found is None:
            out.append(False)
            continue
        with Image.open(found) as image:
            out.append(check_spec(spec, detect(image.convert("RGB"))).correct)
    return out


def t2i_subset(split: str, tags: Iterable[str] | None = None) -> tuple[str, ...]:
    """The categories of a split's text-to-image figure: the unseen ones for validation's headline
    (`tags=UNSEEN_TAGS`), the seen ones for its "seen" figure, all for the held-out split."""
    return tuple(tags) if tags is not None else (UNSEEN_TAGS if split == "validation" else ())


def _fractions(flags: list[dict[str, bool]]) -> dict[str, float]:
    n = len(flags)
    keys = flags[0].keys() if flags else ()
    return {"n": n} | {k: sum(f[k] for f in flags) / n for k in keys}


def audit(data_dir: str | os.PathLike, splits: Sequence[str] = ("validation", "heldout")) -> dict:
    """Per split and category: the share of items whose text, spec, exact prompt and layout occur
    in training as a drawing request, and the lookup baseline's score; per question type and POPE
    type: the share asked of the same layout (verbatim, by meaning); per edit kind likewise.
    Validation's text to image is split into its "unseen" categories (the headline) and its
    "seen" ones. {split: {"t2i": ..., "qa": ..., "pope": ..., "edits": ...}}."""
    data_dir = Path(data_dir)
    overlap = TrainingOverlap(data_dir / "train")
    out: dict = {}
    for split in splits:
        folder = data_dir / split
        rows = read_jsonl(folder / "scenes.jsonl")
        groups = (
            {"unseen": UNSEEN_TAGS, "seen": SEEN_TAGS} if split == "validation" else {"all": None}
        )
        t2i: dict = {}
        for group, tags in groups.items():
            chosen = [r for r in rows if tags is None or r["spec"]["tag"] in tags]
            specs = [PromptSpec.from_geneval(r["spec"]) for r in chosen]
            flags = [
                overlap.t2i_overlap(s, Scene.from_dict(r["scene"]))
                for s, r in zip(specs, chosen, strict=True)
            ]
            lookup = lookup_scores(overlap, specs)
            by_tag: dict[str, list[int]] = defaultdict(list)
            for i, s in enumerate(specs):
                by_tag[s.tag].append(i)
            t2i[group] = {
                tag: _fractions([flags[i] for i in idx])
                | {"lookup": sum(lookup[i] for i in idx) / len(idx)}
                for tag, idx in by_tag.items()
            } | {
                "all": _fractions(flags)
                | {"lookup": geneval_summary(zip((s.tag for s in specs), lookup))["overall"]}
            }
        scenes = {r["image"]: Scene.from_dict(r["scene"]) for r in rows}
        questions = read_jsonl(folder / "qa.jsonl")
        qa_flags: dict[str, list[dict[str, bool]]] = defaultdict(list)
        pope_flags: dict[str, list[dict[str, bool]]] = defaultdict(list)
        for q in questions:
            flags = overlap.question_overlap(scenes[q["image"]], q)
            qa_flags[q["type"]].append(flags)
            if q.get("negative_type"):
                pope_flags[q["negative_type"]].append(flags)
        edit_flags: dict[str, list[dict[str, bool]]] = defaultdict(list)
        for e in read_jsonl(folder / "edits.jsonl"):
            edit_flags[e["kind"]].append(overlap.edit_overlap(e))
        out[split] = {
            "t2i": t2i,
            "qa": {t: _fractions(v) for t, v in sorted(qa_flags.items())},
            "pope": {t: _fractions(pope_flags[t]) for t in POPE_TYPES if pope_flags[t]},
            "edits": {k: _fractions(v) for k, v in sorted(edit_flags.items())},
        }
    return out


def audit_table(report: dict) -> str:
    """`audit`'s result as plain-text tables, one block per split."""
    lines = []
    for split, parts in report.items():
        lines.append(
            f"== {split}: text to image (share of prompts seen in training as a drawing request)"
        )
        lines.append(
            f"{'subset':<8}{'category':<15}{'n':>6}{'text':>7}{'spec':>7}{'prompt':>8}{'layout':>8}{'lookup':>8}"
        )
        for group, tags in parts["t2i"].items():
            for tag, f in tags.items():
                lines.append(
                    f"{group:<8}{tag:<15}{f['n']:>6}{f.get('text', 0):>7.3f}{f.get('spec', 0):>7.3f}"
                    f"{f.get('prompt', 0):>8.3f}{f.get('layout', 0):>8.3f}{f['lookup']:>8.3f}"
                )
        for name, label in (("qa", "question type"), ("pope", "POPE type"), ("edits", "edit kind")):
            lines.append(f"== {split}: {label} (share asked of the same layout in training)")
            lines.append(f"{'':<8}{label:<15}{'n':>6}{'verbatim':>10}{'meaning':>9}")
            for kind, f in parts[name].items():
                verbatim = f.get("question", f.get("instruction", 0.0))
                lines.append(f"{'':<8}{kind:<15}{f['n']:>6}{verbatim:>10.3f}{f['meaning']:>9.3f}")
    return "\n".join(lines)
