"""Train / validation / compositional held-out splits of ShapesWorld.

Held out from training, in captions *and* images:
- three colour-shape pairs: a purple triangle, a cyan circle, a yellow square;
- two relation combinations: a triangle above a circle (equivalently, a circle below a triangle)
  and a square left of a triangle (equivalently, a triangle right of a square).

`train` and `validation` scenes contain none of these anywhere (no object of a held-out pair, no two
objects in a held-out arrangement), so a model can only draw them by composing what it learnt. The
`heldout` split holds prompts that ask for at least one of them.
"""

from __future__ import annotations

from .world import Scene, ShapeObject, relation_holds

SPLITS = ("train", "validation", "heldout")

HELDOUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {("purple", "triangle"), ("cyan", "circle"), ("yellow", "square")}
)
#: (subject shape, relation, object shape); each also held out in its inverse phrasing.
HELDOUT_RELATIONS: tuple[tuple[str, str, str], ...] = (
    ("triangle", "above", "circle"),
    ("square", "left of", "triangle"),
)


def object_is_heldout(obj: ShapeObject) -> bool:
    return (obj.color, obj.shape) in HELDOUT_PAIRS


def heldout_combinations(scene: Scene) -> list[str]:
    """Every held-out combination the scene contains, as readable strings (empty for train scenes)."""
    found = [f"{o.color} {o.shape}" for o in scene.objects if object_is_heldout(o)]
    for subject, relation, other in HELDOUT_RELATIONS:
        if any(
            a is not b
            and a.shape == subject
            and b.shape == other
            and relation_holds(relation, a, b)
            for a in scene.objects
            for b in scene.objects
        ):
            found.append(f"{subject} {relation} {other}")
    return found


def allowed_in_training(scene: Scene) -> bool:
    return not heldout_combinations(scene)
