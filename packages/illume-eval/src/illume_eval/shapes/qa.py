"""Understanding questions about a scene, with exact answers, and POPE-style existence probes.

Question types: `color`, `count`, `existence` (POPE yes/no; negatives `random`, `popular`,
`adversarial`), `spatial` (yes/no), `position` (what is in a cell). POPE's negatives, as they
translate to ShapesWorld: random = any absent colour-shape; popular = the absent colour-shapes that
are most frequent in the training split; adversarial = absent colour-shapes one attribute away from
a present object (same shape, other colour; or same colour, other shape), the closest confusions.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np

from .prompts import NUMBER_WORDS, sample_prompt
from .world import CELL_NAMES, COLOR_NAMES, SHAPES, Scene, relation_holds

QA_TYPES = ("color", "count", "existence", "spatial", "position")
POPE_TYPES = ("random", "popular", "adversarial")


@dataclass(frozen=True)
class Question:
    """One question with its exact answer. `negative_type` is set for POPE probes."""

    question: str
    answer: str
    type: str
    negative_type: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


_COLOR_Q = (
    "What color is the {s}?",
    "Which color does the {s} have?",
    "What is the color of the {s}?",
)
_COUNT_Q = (
    "How many {p} are there?",
    "How many {p} are in the image?",
    "Count the {p} in the image.",
)
_EXIST_Q = (
    "Is there a {c} {s} in the image?",
    "Does the image contain a {c} {s}?",
    "Can you see a {c} {s}?",
)
_SPATIAL_Q = (
    "Is the {a} {r} the {b}?",
    "Is the {a} located {r} the {b}?",
    "Does the {a} appear {r} the {b}?",
)
_POSITION_Q = (
    "What is in the {cell} of the image?",
    "What is at the {cell}?",
    "Which object is in the {cell} cell?",
)


def answer_phrase(scene: Scene, cell: tuple[int, int]) -> str:
    obj = scene.at(cell)
    return f"a {obj.color} {obj.shape}" if obj else "nothing"


@lru_cache(maxsize=1)
def popularity() -> tuple[tuple[str, str], ...]:
    """Colour-shape pairs from most to least frequent in a fixed sample of the training split."""
    rng = np.random.default_rng(20241209)
    counts: Counter[tuple[str, str]] = Counter()
    for _ in range(2000):
        scene, _ = sample_prompt(rng, "train")
        counts.update((o.color, o.shape) for o in scene.objects)
    pairs = [(c, s) for s in SHAPES for c in COLOR_NAMES]
    return tuple(sorted(pairs, key=lambda p: (-counts[p], p)))


def pope_negative(scene: Scene, kind: str, rng: np.random.Generator) -> tuple[str, str] | None:
    """An absent (colour, shape) for a POPE 'no' probe of the given kind."""
    present = {(o.color, o.shape) for o in scene.objects}
    absent = [(c, s) for s in SHAPES for c in COLOR_NAMES if (c, s) not in present]
    if kind == "random":
        options = absent
    elif kind == "popular":
        options = [p for p in popularity() if p in absent][:3]
    elif kind == "adversarial":
        options = [(c, s) for (c, s) in absent if any(c == pc or s == ps for pc, ps in present)]
    else:
        raise ValueError(f"unknown POPE negative type {kind!r}; expected one of {POPE_TYPES}")
    return _pick(rng, options) if options else None


def pope_questions(scene: Scene, rng: np.random.Generator) -> list[Question]:
    """For each negative type: one 'yes' probe (a present object) and one 'no' probe (balanced)."""
    out = []
    if not scene.objects:
        return out
    for kind in POPE_TYPES:
        obj = _pick(rng, scene.objects)
        out.append(
            Question(
                _pick(rng, _EXIST_Q).format(c=obj.color, s=obj.shape), "yes", "existence", kind
            )
        )
        negative = pope_negative(scene, kind, rng)
        if negative:
            out.append(
                Question(
                    _pick(rng, _EXIST_Q).format(c=negative[0], s=negative[1]),
                    "no",
                    "existence",
                    kind,
                )
            )
    return out


def scene_questions(scene: Scene, rng: np.random.Generator) -> list[Question]:
    """One question of each type that the scene supports, plus its POPE probes."""
    out: list[Question] = []
    shape_counts = Counter(o.shape for o in scene.objects)
    unique_shapes = [s for s, n in shape_counts.items() if n == 1]
    if unique_shapes:
        shape = _pick(rng, unique_shapes)
        color = next(o.color for o in scene.objects if o.shape == shape)
        out.append(Question(_pick(rng, _COLOR_Q).format(s=shape), color, "color"))
    if rng.random() < 0.25:
        n = len(scene.objects)
        out.append(Question(_pick(rng, _COUNT_Q).format(p="objects"), NUMBER_WORDS[n], "count"))
    else:
        shape = _pick(rng, SHAPES)
        out.append(
            Question(
                _pick(rng, _COUNT_Q).format(p=shape + "s"),
                NUMBER_WORDS[shape_counts[shape]],
                "count",
            )
        )
    named = Counter((o.color, o.shape) for o in scene.objects)
    unique = [o for o in scene.objects if named[(o.color, o.shape)] == 1]
    if len(unique) >= 2:
        a_index, b_index = rng.choice(len(unique), size=2, replace=False)
        a, b = unique[int(a_index)], unique[int(b_index)]
        relation = _pick(rng, ("left of", "right of", "above", "below"))
        phrase = {"left of": "to the left of", "right of": "to the right of"}.get(
            relation, relation
        )
        answer = "yes" if relation_holds(relation, a, b) else "no"
        out.append(
            Question(_pick(rng, _SPATIAL_Q).format(a=a.name, r=phrase, b=b.name), answer, "spatial")
        )
    cell = _pick(rng, list(CELL_NAMES))
    if scene.objects and rng.random() < 0.7:  # mostly ask about occupied cells
        cell = _pick(rng, scene.objects).cell
    out.append(
        Question(
            _pick(rng, _POSITION_Q).format(cell=CELL_NAMES[cell]),
            answer_phrase(scene, cell),
            "position",
        )
    )
    return out + pope_questions(scene, rng)


_DIGITS = {str(k): v for k, v in NUMBER_WORDS.items()}


def normalize_answer(text: str) -> str:
    """Lower case, punctuation and articles dropped, digits as words; 'Yes.' -> 'yes'."""
    words = re.sub(r"[^a-z0-9 ]", " ", text.lower()).split()
    words = [
        _DIGITS.get(w, w) for w in words if w not in ("a", "an", "the", "there", "is", "it", "are")
    ]
    if words and words[0] in ("yes", "no"):
        return words[0]
    return " ".join(words)
