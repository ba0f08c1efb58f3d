"""Train / validation / held-out splits of ShapesWorld, by meaning: what a figure on each may claim.

- **validation, unseen** (the headline): text-to-image prompts whose spec (objects, counts,
  colours, relation; `PromptSpec.key`, phrasing ignored) never occurs in the training split at
  all, so never as a drawing request. A quarter of the specs of the categories with a large space
  (`UNSEEN_TAGS`: counting, colour attribution, position) is reserved for validation by a hash of
  the key; training scenes never have a reserved spec.
- **validation, seen**: the categories whose whole space is small enough to be seen in training
  (`SEEN_TAGS`: 3 single objects, 15 coloured ones, 3 pairs of shapes); reported apart, never in
  the headline: a model can score on them by recall.
- **held-out compositions**: three colour-shape pairs (a purple triangle, a cyan circle, a yellow
  square) and two relations (a triangle above a circle, a square left of a triangle; each also in
  its inverse phrasing). They are withheld from the MLLM's *generation* data only (text-to-image
  prompts, edit targets, self-enhancement prompts); the training split has scenes that show them,
  which the encoder, tokenizer and detokenizer learn from and the MLLM reads (captions to read,
  questions, edit sources). The `heldout` split asks to draw them: can a model that has seen and
  understood a purple triangle draw one when first asked? (ILLUME's claim of understanding helping
  generation.) Validation scenes contain none of them.

Question answering, POPE and edits have no reserved space: `audit` marks a validation item seen
when its (scene layout, question or instruction) pair occurs in training, and the headline figures
use the unseen ones.
"""

from __future__ import annotations

import hashlib

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

#: Categories with a reserved, never-trained validation space (the headline) ...
UNSEEN_TAGS: tuple[str, ...] = ("counting", "color_attr", "position")
#: ... and the categories small enough that all of their space is trained on (reported apart).
SEEN_TAGS: tuple[str, ...] = ("single_object", "colors", "two_object")
#: The share of an unseen category's specs reserved for validation.
VALIDATION_SHARE = 0.25
#: A training scene showing a held-out composition is kept with this probability (else drawn
#: again), which leaves them about 12% of the training scenes: they feed the codec and
#: understanding, not generation, so a few are enough.
TRAIN_HELDOUT_KEEP = 0.3


def object_is_heldout(obj: ShapeObject) -> bool:
    return (obj.color, obj.shape) in HELDOUT_PAIRS


def heldout_combinations(scene: Scene) -> list[str]:
    """Every held-out combination the scene contains, as readable strings (empty for most scenes)."""
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


def generation_allowed(scene: Scene) -> bool:
    """Whether the scene may be a generation target in training (a text-to-image answer, an edit's
    target, a self-enhancement prompt): it shows no held-out composition."""
    return not heldout_combinations(scene)


def reserved_for_validation(tag: str, key: str) -> bool:
    """Whether a spec (its `PromptSpec.key`) of category `tag` belongs to the unseen validation
    space: a fixed quarter of each unseen category's specs, chosen by a hash of the key (stable
    across Python runs and machines)."""
    if tag not in UNSEEN_TAGS:
        return False
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < VALIDATION_SHARE
