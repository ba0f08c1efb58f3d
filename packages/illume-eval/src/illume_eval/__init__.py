"""illume-eval: ShapesWorld, its exact scorer and oracle assessor, benchmark interop and reports.

Needs numpy and pillow, not torch: score images from any model with it.
"""

from .__about__ import __version__
from .assessment import (
    ASSESSMENT_INSTRUCTION,
    Assessment,
    AssessmentError,
    oracle_assessment,
    parse_assessment,
)
from .metrics import (
    aspect_failures,
    edit_metrics,
    geneval_summary,
    pope_metrics,
    qa_accuracy,
    score_t2i,
    t2i_summary,
)
from .report import Card, HtmlReport

__all__ = [
    "ASSESSMENT_INSTRUCTION",
    "Assessment",
    "AssessmentError",
    "Card",
    "HtmlReport",
    "__version__",
    "aspect_failures",
    "edit_metrics",
    "geneval_summary",
    "oracle_assessment",
    "parse_assessment",
    "pope_metrics",
    "qa_accuracy",
    "score_t2i",
    "t2i_summary",
]
