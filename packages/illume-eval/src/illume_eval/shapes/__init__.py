"""ShapesWorld: a synthetic compositional world where every metric of the paper is exact."""

from .dataset import ensure_dataset, write_dataset, write_split
from .detection import DetectedObject, detect, scene_recovered
from .edits import EDIT_KINDS, Edit, sample_edit
from .prompts import (
    ASPECTS,
    TAGS,
    PromptSpec,
    Requirement,
    SpecCheck,
    caption,
    check_spec,
    sample_prompt,
    spec_holds,
)
from .qa import POPE_TYPES, QA_TYPES, Question, normalize_answer, scene_questions
from .splits import (
    HELDOUT_PAIRS,
    HELDOUT_RELATIONS,
    SPLITS,
    allowed_in_training,
    heldout_combinations,
)
from .world import (
    BACKGROUND,
    CELL_NAMES,
    COLOR_NAMES,
    COLORS,
    PATCH_CLASSES,
    SHAPES,
    Scene,
    ShapeObject,
    patch_labels,
    render,
    render_pil,
)

__all__ = [
    "ASPECTS",
    "BACKGROUND",
    "CELL_NAMES",
    "COLORS",
    "COLOR_NAMES",
    "EDIT_KINDS",
    "HELDOUT_PAIRS",
    "HELDOUT_RELATIONS",
    "PATCH_CLASSES",
    "POPE_TYPES",
    "QA_TYPES",
    "SHAPES",
    "SPLITS",
    "TAGS",
    "DetectedObject",
    "Edit",
    "PromptSpec",
    "Question",
    "Requirement",
    "Scene",
    "ShapeObject",
    "SpecCheck",
    "allowed_in_training",
    "caption",
    "check_spec",
    "detect",
    "ensure_dataset",
    "heldout_combinations",
    "normalize_answer",
    "patch_labels",
    "render",
    "render_pil",
    "sample_edit",
    "sample_prompt",
    "scene_questions",
    "scene_recovered",
    "spec_holds",
    "write_dataset",
    "write_split",
]  # fmt: skip
