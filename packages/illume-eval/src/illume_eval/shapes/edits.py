"""Edit instructions with exact source and target scenes: recolour, remove, add, move.

Untouched objects keep their exact geometry, so source and target images agree pixel for pixel
outside the edited object, and "preserved" can be measured exactly.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from .splits import generation_allowed
from .world import CELL_NAMES, COLOR_NAMES, SHAPES, Scene, ShapeObject, jittered_object, moved

EDIT_KINDS = ("recolor", "remove", "add", "move")

_RECOLOR = ("make the {o} {c}", "change the {o} to {c}", "paint the {o} {c}", "turn the {o} {c}")
_REMOVE = ("remove the {o}", "delete the {o}", "take away the {o}", "erase the {o}")
_ADD = ("add a {o} at the {cell}", "put a {o} in the {cell}", "place a {o} at the {cell}")
_MOVE = (
    "move the {o} to the {cell}",
    "put the {o} in the {cell} instead",
    "shift the {o} to the {cell}",
)


@dataclass(frozen=True)
class Edit:
    """An instruction that turns `source` into `target`; `edited` is the object it names."""

    kind: str
    instruction: str
    source: Scene
    target: Scene
    edited: ShapeObject

    def untouched(self) -> list[ShapeObject]:
        """Objects of the source that the edit must leave exactly as they are."""
        return [o for o in self.source.objects if o != self.edited]

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "instruction": self.instruction,
            "source_scene": self.source.to_dict(),
            "target_scene": self.target.to_dict(),
            "edited": {
                "shape": self.edited.shape,
                "color": self.edited.color,
                "row": self.edited.row,
                "col": self.edited.col,
            },
        }

    @classmethod
    def from_dict(cls, data: dict) -> Edit:
        """The inverse of `to_dict` (an `edits.jsonl` line)."""
        source, target = (
            Scene.from_dict(data["source_scene"]),
            Scene.from_dict(data["target_scene"]),
        )
        key = tuple(data["edited"][k] for k in ("shape", "color", "row", "col"))
        for obj in (*source.objects, *target.objects):
            if (obj.shape, obj.color, obj.row, obj.col) == key:
                return cls(data["kind"], data["instruction"], source, target, obj)
        raise ValueError(f"the edited object {key} is in neither scene")


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _nameable(scene: Scene) -> list[ShapeObject]:
    """Objects that 'the <colour> <shape>' names unambiguously."""
    counts = Counter((o.color, o.shape) for o in scene.objects)
    return [o for o in scene.objects if counts[(o.color, o.shape)] == 1]


def _propose(scene: Scene, kind: str, rng: np.random.Generator) -> Edit | None:
    nameable = _nameable(scene)
    if kind == "recolor" and nameable:
        obj = _pick(rng, nameable)
        color = _pick(rng, [c for c in COLOR_NAMES if c != obj.color])
        new = ShapeObject(obj.shape, color, obj.row, obj.col, obj.dx, obj.dy, obj.scale)
        text = _pick(rng, _RECOLOR).format(o=obj.name, c=color)
        return Edit(kind, text, scene, scene.replaced(obj, new), obj)
    if kind == "remove" and nameable and len(scene.objects) >= 2:
        obj = _pick(rng, nameable)
        return Edit(kind, _pick(rng, _REMOVE).format(o=obj.name), scene, scene.without(obj), obj)
    if kind == "add" and len(scene.objects) <= 2:
        cell = _pick(rng, scene.free_cells())
        obj = jittered_object(rng, _pick(rng, SHAPES), _pick(rng, COLOR_NAMES), cell)
        text = _pick(rng, _ADD).format(o=obj.name, cell=CELL_NAMES[cell])
        return Edit(kind, text, scene, scene.with_object(obj), obj)
    if kind == "move" and nameable:
        obj = _pick(rng, nameable)
        cell = _pick(rng, scene.free_cells())
        text = _pick(rng, _MOVE).format(o=obj.name, cell=CELL_NAMES[cell])
        return Edit(kind, text, scene, scene.replaced(obj, moved(obj, rng, cell)), obj)
    return None


def sample_edit(scene: Scene, rng: np.random.Generator, split: str = "train") -> Edit | None:
    """A random edit of `scene` whose target is allowed in `split` (None if the scene allows none)."""
    kinds = list(EDIT_KINDS)
    rng.shuffle(kinds)
    for kind in kinds:
        for _ in range(20):
            edit = _propose(scene, kind, rng)
            if edit is None:
                break
            if split == "heldout" or generation_allowed(edit.target):
                return edit
    return None
