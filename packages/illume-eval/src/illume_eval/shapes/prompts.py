"""Text-to-image prompts: GenEval-format specs, a caption grammar, and the exact check of a spec.

A `PromptSpec` is what a prompt asks for, in the format of GenEval's `evaluation_metadata.jsonl`
(`tag`, `include` [{class, count, color?, position?}], `exclude`, `prompt`), so prompt sets move
between our scorer and the official GenEval tools. ShapesWorld prompts describe the *whole* scene,
so by default a spec is checked strictly: exact counts and no unrequested objects. `strict=False`
gives GenEval's own rule (at least `count`, excludes honoured, other objects ignored).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from .splits import (
    HELDOUT_PAIRS,
    HELDOUT_RELATIONS,
    TRAIN_HELDOUT_KEEP,
    UNSEEN_TAGS,
    generation_allowed,
    reserved_for_validation,
)
from .world import (
    CELLS,
    COLOR_NAMES,
    INVERSE_RELATION,
    RELATIONS,
    SHAPES,
    Scene,
    jittered_object,
    relation_holds,
)

TAGS: tuple[str, ...] = (
    "single_object",
    "two_object",
    "counting",
    "colors",
    "position",
    "color_attr",
)
ASPECTS: tuple[str, ...] = ("Object", "Counting", "Color", "Spatial Relation")
NUMBER_WORDS = {
    0: "zero",
    1: "one",
    2: "two",
    3: "three",
    4: "four",
    5: "five",
    6: "six",
    7: "seven",
    8: "eight",
    9: "nine",
}


class ObjectLike(Protocol):
    shape: str
    color: str
    row: int
    col: int


@dataclass(frozen=True)
class Requirement:
    """`count` objects of `shape` (of `color`, if named); `position` = (relation, index of the reference)."""

    shape: str
    count: int = 1
    color: str | None = None
    position: tuple[str, int] | None = None

    def to_geneval(self) -> dict:
        out: dict = {"class": self.shape, "count": self.count}
        if self.color is not None:
            out["color"] = self.color
        if self.position is not None:
            out["position"] = list(self.position)
        return out

    @classmethod
    def from_geneval(cls, data: dict) -> Requirement:
        position = data.get("position")
        return cls(
            shape=data["class"],
            count=int(data.get("count", 1)),
            color=data.get("color"),
            position=(position[0], int(position[1])) if position else None,
        )

    def matches(self, obj: ObjectLike) -> bool:
        return obj.shape == self.shape and (self.color is None or obj.color == self.color)


@dataclass(frozen=True)
class PromptSpec:
    """What a text-to-image prompt asks for (GenEval metadata format)."""

    tag: str
    include: tuple[Requirement, ...]
    prompt: str = ""
    exclude: tuple[Requirement, ...] = ()

    def to_geneval(self) -> dict:
        out = {
            "tag": self.tag,
            "include": [r.to_geneval() for r in self.include],
            "prompt": self.prompt,
        }
        if self.exclude:
            out["exclude"] = [r.to_geneval() for r in self.exclude]
        return out

    @classmethod
    def from_geneval(cls, data: dict) -> PromptSpec:
        return cls(
            tag=data["tag"],
            include=tuple(Requirement.from_geneval(r) for r in data["include"]),
            prompt=data.get("prompt", ""),
            exclude=tuple(Requirement.from_geneval(r) for r in data.get("exclude", [])),
        )

    def with_prompt(self, prompt: str) -> PromptSpec:
        return PromptSpec(self.tag, self.include, prompt, self.exclude)

    def key(self) -> str:
        """What the prompt asks for, whatever its phrasing: the category and the requirements,
        sorted, a relation written from its left or upper side ("B right of A" is "A left of B").
        Two prompts with one key are one drawing request; a validation prompt is unseen when its
        key occurs in no training data."""

        def name(req: Requirement) -> str:
            return " ".join(p for p in (str(req.count), req.color or "any", req.shape))

        relations = []
        for req in self.include:
            if req.position is not None:
                relation, ref = req.position
                a, b = name(req), name(self.include[ref])
                if relation in ("right of", "below"):
                    a, b, relation = b, a, INVERSE_RELATION[relation]
                relations.append(f"{a} {relation} {b}")
        parts = sorted(name(r) for r in self.include) + sorted(relations)
        parts += sorted(f"not {name(r)}" for r in self.exclude)
        return f"{self.tag}: " + ", ".join(parts)

    def heldout_combinations(self) -> list[str]:
        """The held-out combinations this prompt asks for (see splits.py)."""
        found = [
            f"{r.color} {r.shape}" for r in self.include if (r.color, r.shape) in HELDOUT_PAIRS
        ]
        for req in self.include:
            if req.position is None:
                continue
            relation, ref = req.position
            other = self.include[ref].shape
            for subject, held_relation, held_other in HELDOUT_RELATIONS:
                if (req.shape, relation, other) in (
                    (subject, held_relation, held_other),
                    (held_other, INVERSE_RELATION[held_relation], subject),
                ):
                    found.append(f"{subject} {held_relation} {held_other}")
        return found


# ------------------------------------------------------------------------------------ captions


def _noun(shape: str, count: int) -> str:
    return shape if count == 1 else shape + "s"


def noun_phrase(req: Requirement, article: bool = True) -> str:
    """'a red circle', 'two circles', 'a square'."""
    words = ([req.color] if req.color else []) + [_noun(req.shape, req.count)]
    if req.count == 1:
        return ("a " if article else "") + " ".join(words)
    return f"{NUMBER_WORDS[req.count]} " + " ".join(words)


_SINGLE = ("a {s}", "one {s}", "a single {s}", "an image of a {s}", "there is a {s}")
_COLORS = ("a {c} {s}", "one {c} {s}", "a {s} that is {c}", "a {s} colored {c}", "a single {c} {s}")
_COUNTING = (
    "{n} {things}",
    "exactly {n} {things}",
    "a group of {n} {things}",
    "{n} {things} in total",
)
_TWO = (
    "a {s1} and a {s2}",
    "both a {s1} and a {s2}",
    "a {s1} together with a {s2}",
    "a {s1} as well as a {s2}",
)
_ATTR2 = (
    "a {c1} {s1} and a {c2} {s2}",
    "a {s1} in {c1} and a {s2} in {c2}",
    "a {c1} {s1} together with a {c2} {s2}",
    "a {c1} {s1} as well as a {c2} {s2}",
)
_ATTR3 = (
    "a {c1} {s1}, a {c2} {s2} and a {c3} {s3}",
    "a {s1} in {c1}, a {s2} in {c2} and a {s3} in {c3}",
    "a {c1} {s1}, a {c2} {s2} as well as a {c3} {s3}",
)
_POSITION = {
    "left of": ("{a} to the left of {b}", "{a} on the left of {b}", "{a} left of {b}"),
    "right of": ("{a} to the right of {b}", "{a} on the right of {b}", "{a} right of {b}"),
    "above": ("{a} above {b}", "{a} over {b}", "{a} placed above {b}"),
    "below": ("{a} below {b}", "{a} under {b}", "{a} beneath {b}"),
}
PHRASINGS = {
    "single_object": _SINGLE,
    "colors": _COLORS,
    "counting": _COUNTING,
    "two_object": _TWO,
    "color_attr": _ATTR2 + _ATTR3,
    "position": tuple(t for ts in _POSITION.values() for t in ts),
}


def caption(spec: PromptSpec, rng: np.random.Generator) -> str:
    """A caption for the spec in one of several phrasings, chosen by `rng`."""

    def pick(options: Sequence[str]) -> str:
        return options[int(rng.integers(len(options)))]

    reqs = spec.include
    if spec.tag == "single_object":
        return pick(_SINGLE).format(s=reqs[0].shape)
    if spec.tag == "colors":
        return pick(_COLORS).format(s=reqs[0].shape, c=reqs[0].color)
    if spec.tag == "counting":
        req = reqs[0]
        things = noun_phrase(req).split(" ", 1)[1]
        return pick(_COUNTING).format(n=NUMBER_WORDS[req.count], things=things)
    if spec.tag == "two_object":
        return pick(_TWO).format(s1=reqs[0].shape, s2=reqs[1].shape)
    if spec.tag == "color_attr":
        fields = {f"s{i + 1}": r.shape for i, r in enumerate(reqs)} | {
            f"c{i + 1}": r.color for i, r in enumerate(reqs)
        }
        return pick(_ATTR2 if len(reqs) == 2 else _ATTR3).format(**fields)
    if spec.tag == "position":
        subject = next(r for r in reqs if r.position is not None)
        relation, ref = subject.position  # type: ignore[misc]
        return pick(_POSITION[relation]).format(a=noun_phrase(subject), b=noun_phrase(reqs[ref]))
    raise ValueError(f"unknown tag {spec.tag!r}; expected one of {TAGS}")


# ------------------------------------------------------------------------------------ sampling


def _choice(rng: np.random.Generator, options: Sequence):
    return options[int(rng.integers(len(options)))]


def _cells(rng: np.random.Generator, n: int) -> list[tuple[int, int]]:
    return [CELLS[i] for i in rng.choice(len(CELLS), size=n, replace=False)]


def _scene_for(rng: np.random.Generator, tag: str) -> tuple[Scene, PromptSpec]:
    """A scene and the spec that describes it completely (no split constraint)."""
    shape, color = _choice(rng, SHAPES), _choice(rng, COLOR_NAMES)
    if tag in ("single_object", "colors"):
        (cell,) = _cells(rng, 1)
        scene = Scene((jittered_object(rng, shape, color, cell),))
        return scene, PromptSpec(tag, (Requirement(shape, 1, color if tag == "colors" else None),))
    if tag == "counting":
        n = int(rng.integers(2, 4))
        named = bool(rng.integers(2))
        colors = [color] * n if named else [_choice(rng, COLOR_NAMES) for _ in range(n)]
        scene = Scene(
            tuple(jittered_object(rng, shape, c, cell) for c, cell in zip(colors, _cells(rng, n)))
        )
        req = Requirement(shape, n, color if named else None)
        return scene, PromptSpec(tag, (req,), exclude=(Requirement(shape, n + 1, req.color),))
    if tag in ("two_object", "color_attr"):
        n = 3 if tag == "color_attr" and rng.random() < 1 / 3 else 2
        shapes = [SHAPES[i] for i in rng.choice(len(SHAPES), size=n, replace=False)]
        colors = [_choice(rng, COLOR_NAMES) for _ in range(n)]
        scene = Scene(
            tuple(
                jittered_object(rng, s, c, cell)
                for s, c, cell in zip(shapes, colors, _cells(rng, n))
            )
        )
        named = tag == "color_attr"
        return scene, PromptSpec(
            tag, tuple(Requirement(s, 1, c if named else None) for s, c in zip(shapes, colors))
        )
    if tag == "position":
        relation = _choice(rng, RELATIONS)
        while True:
            ref_shape, sub_shape = _choice(rng, SHAPES), _choice(rng, SHAPES)
            ref_color, sub_color = _choice(rng, COLOR_NAMES), _choice(rng, COLOR_NAMES)
            if (ref_shape, ref_color) != (sub_shape, sub_color):
                break
        while True:
            ref_cell, sub_cell = _cells(rng, 2)
            ref_obj = jittered_object(rng, ref_shape, ref_color, ref_cell)
            sub_obj = jittered_object(rng, sub_shape, sub_color, sub_cell)
            if relation_holds(relation, sub_obj, ref_obj):
                break
        name_colors = ref_shape == sub_shape or bool(rng.integers(2))
        ref = Requirement(ref_shape, 1, ref_color if name_colors else None)
        sub = Requirement(sub_shape, 1, sub_color if name_colors else None, position=(relation, 0))
        return Scene((ref_obj, sub_obj)), PromptSpec(tag, (ref, sub))
    raise ValueError(f"unknown tag {tag!r}; expected one of {TAGS}")


def sample_prompt(
    rng: np.random.Generator, split: str = "train", tag: str | None = None
) -> tuple[Scene, PromptSpec]:
    """A scene and its caption spec, drawn for a split (see splits.py); `tag` fixes the category.

    train: any spec but the reserved validation ones; scenes with a held-out composition are
    kept half as often as they occur. validation: unseen categories draw only reserved specs,
    seen ones any; no held-out composition. heldout: prompts that ask for a held-out composition."""
    if split not in ("train", "validation", "heldout"):
        raise ValueError(f"unknown split {split!r}; expected train, validation or heldout")
    tags = [tag] if tag else list(TAGS)
    if split == "heldout":
        # a single object or two shapes name no colour and no relation: nothing held out to ask
        tags = [t for t in tags if t not in ("single_object", "two_object")]
        if not tags:
            raise ValueError(
                f"the heldout split has no {tag!r} prompts: they cannot name a held-out colour"
            )
    chosen = _choice(rng, tags)  # once: each category equally often, whatever a split rejects
    for _ in range(10_000):
        scene, spec = _scene_for(rng, chosen)
        if split == "heldout":
            if not spec.heldout_combinations():
                continue
        else:
            reserved = reserved_for_validation(spec.tag, spec.key())
            if split == "validation" and (
                not generation_allowed(scene) or (spec.tag in UNSEEN_TAGS and not reserved)
            ):
                continue
            if split == "train" and (
                reserved or (not generation_allowed(scene) and rng.random() >= TRAIN_HELDOUT_KEEP)
            ):
                continue
        return scene, spec.with_prompt(caption(spec, rng))
    raise RuntimeError("could not sample a scene for the split; this is a bug")


# ------------------------------------------------------------------------------------ checking


@dataclass
class SpecCheck:
    """The verdict on (spec, objects), split into the four aspects of ILLUME's assessment."""

    correct: bool
    aspects: dict[str, bool]
    analyses: dict[str, str] = field(default_factory=dict)


def _count_phrase(n: int, shape: str, color: str | None = None) -> str:
    words = ([color] if color else []) + [_noun(shape, n)]
    return f"{NUMBER_WORDS.get(n, str(n))} " + " ".join(words)


def _list_phrase(items: Sequence[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def check_spec(spec: PromptSpec, objects: Sequence[ObjectLike], strict: bool = True) -> SpecCheck:
    """Checks objects (detected in an image, or a scene's true objects) against a prompt spec.

    Object: every requested shape is there (and, if strict, nothing else).
    Counting: each requested shape appears exactly as often as asked (GenEval: at least as often,
    and fewer than any exclude).
    Color: enough objects of each named shape-colour.
    Spatial Relation: some pair of distinct matching objects stands in the requested relation.
    """
    aspects: dict[str, bool] = {}
    analyses: dict[str, str] = {}
    # What the strict scorer could not read as a ShapesWorld object (a malformed shape or an
    # off-palette colour) matches no requirement and, under the strict rule, is an extra object.
    invalid = [o for o in objects if not getattr(o, "valid", True)]
    objects = [o for o in objects if getattr(o, "valid", True)]
    found = Counter(o.shape for o in objects)
    wanted: Counter[str] = Counter()
    for req in spec.include:
        wanted[req.shape] += req.count

    missing = [s for s in wanted if found[s] == 0]
    # sorted: the analysis reads the same whatever order the objects were listed or detected in
    extra = sorted(s for s in found if s not in wanted) if strict else []
    if strict and invalid:
        extra.append("malformed object" if len(invalid) == 1 else "malformed objects")
    aspects["Object"] = not missing and not extra
    if aspects["Object"]:
        analyses["Object"] = (
            f"The image contains the requested {_list_phrase([_noun(s, 2 if wanted[s] > 1 else 1) for s in wanted])}."
        )
    else:
        parts = []
        if missing:
            parts.append(f"there is no {_list_phrase(missing)}")
        if extra:
            parts.append(f"there is an unrequested {_list_phrase(extra)}")
        analyses["Object"] = f"The image is wrong: {'; '.join(parts)}."

    count_errors = []
    for shape, n in wanted.items():
        if (strict and found[shape] != n) or (not strict and found[shape] < n):
            count_errors.append(
                f"{_count_phrase(found[shape], shape)} instead of {NUMBER_WORDS.get(n, n)}"
            )
    for req in spec.exclude if not strict else ():
        if sum(req.matches(o) for o in objects) >= req.count:
            count_errors.append(
                f"{req.count} or more {_noun(req.shape, 2)}, which the prompt excludes"
            )
    aspects["Counting"] = not count_errors
    analyses["Counting"] = (
        "The number of objects matches the prompt."
        if not count_errors
        else f"The image has {'; '.join(count_errors)}."
    )

    color_errors = []
    named: Counter[tuple[str, str]] = Counter()
    for req in spec.include:
        if req.color is not None:
            named[(req.shape, req.color)] += req.count
    for (shape, color), n in named.items():
        have = sum(1 for o in objects if o.shape == shape and o.color == color)
        if have < n:
            seen = sorted({o.color for o in objects if o.shape == shape})
            actual = f"{_list_phrase(seen)}" if seen else "absent"
            color_errors.append(
                f"the {_noun(shape, n)} should be {color} but {'is' if n == 1 else 'are'} {actual}"
            )
    aspects["Color"] = not color_errors
    analyses["Color"] = (
        ("The colors match the prompt." if named else "The prompt asks for no particular color.")
        if not color_errors
        else f"The colors are wrong: {'; '.join(color_errors)}."
    )

    relation_errors = []
    relations = [(i, req) for i, req in enumerate(spec.include) if req.position is not None]
    for _, req in relations:
        relation, ref = req.position  # type: ignore[misc]
        other = spec.include[ref]
        holds = any(
            a is not b and relation_holds(relation, a, b)
            for a in objects
            if req.matches(a)
            for b in objects
            if other.matches(b)
        )
        if not holds:
            relation_errors.append(f"{noun_phrase(req)} is not {relation} {noun_phrase(other)}")
    aspects["Spatial Relation"] = not relation_errors
    if not relations:
        analyses["Spatial Relation"] = "The prompt asks for no spatial relation."
    elif not relation_errors:
        analyses["Spatial Relation"] = "The spatial relation matches the prompt."
    else:
        analyses["Spatial Relation"] = f"The layout is wrong: {'; '.join(relation_errors)}."
    return SpecCheck(all(aspects.values()), aspects, analyses)


def spec_holds(spec: PromptSpec, objects: Sequence[ObjectLike], strict: bool = True) -> bool:
    """`check_spec(spec, objects, strict).correct` without the analysis sentences: fast enough to
    label every caption-image pair of a training batch (the encoder stage's positives)."""
    if strict and any(not getattr(o, "valid", True) for o in objects):
        return False
    objects = [o for o in objects if getattr(o, "valid", True)]
    found = Counter(o.shape for o in objects)
    wanted: Counter[str] = Counter()
    named: Counter[tuple[str, str]] = Counter()
    for req in spec.include:
        wanted[req.shape] += req.count
        if req.color is not None:
            named[(req.shape, req.color)] += req.count
    if strict and (set(found) != set(wanted) or any(found[s] != n for s, n in wanted.items())):
        return False
    if not strict:
        if any(found[s] < n for s, n in wanted.items()):
            return False
        if any(sum(r.matches(o) for o in objects) >= r.count for r in spec.exclude):
            return False
    for (shape, color), n in named.items():
        if sum(1 for o in objects if o.shape == shape and o.color == color) < n:
            return False
    for req in spec.include:
        if req.position is None:
            continue
        relation, ref = req.position
        other = spec.include[ref]
        if not any(
            a is not b and relation_holds(relation, a, b)
            for a in objects
            if req.matches(a)
            for b in objects
            if other.matches(b)
        ):
            return False
    return True


def counterfactual(scene: Scene, spec: PromptSpec) -> Scene | None:
    """The scene changed in only what the spec's category tests, so that it fails the spec; None
    where the category has no such change here (or the change would still pass).

    single_object: the object becomes another shape; colors: another colour; two_object: the
    second object takes the first one's shape (one shape drawn twice); color_attr: the first two
    objects swap colours; position: the two objects swap cells; counting: the last object goes.
    For likelihood probes: does a model prefer the scene its prompt describes to this one?"""
    objects = list(scene.objects)
    first = objects[0] if objects else None
    if spec.tag == "single_object" and len(objects) == 1:
        objects[0] = replace(first, shape=next(s for s in SHAPES if s != first.shape))
    elif spec.tag == "colors" and len(objects) == 1:
        objects[0] = replace(first, color=next(c for c in COLOR_NAMES if c != first.color))
    elif spec.tag == "two_object" and len(objects) == 2 and first.shape != objects[1].shape:
        objects[1] = replace(objects[1], shape=first.shape)
    elif spec.tag == "color_attr" and len(objects) >= 2 and first.color != objects[1].color:
        objects[0], objects[1] = (
            replace(first, color=objects[1].color),
            replace(objects[1], color=first.color),
        )
    elif spec.tag == "position" and len(objects) == 2:
        second = objects[1]
        objects[0] = replace(first, row=second.row, col=second.col)
        objects[1] = replace(second, row=first.row, col=first.col)
    elif spec.tag == "counting" and len(objects) >= 2:
        objects.pop()
    else:
        return None
    changed = Scene(tuple(objects))
    return None if spec_holds(spec, changed.objects) else changed
