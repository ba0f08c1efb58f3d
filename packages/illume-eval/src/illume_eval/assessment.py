"""ILLUME's image assessment (paper Fig. C): the oracle assessor and a strict parser for model output.

An assessment is a JSON object with exactly four aspects, each a 0/1 score and an analysis sentence:

    {"Object": {"Score": 1, "Analysis": "..."}, "Counting": {...}, "Color": {...},
     "Spatial Relation": {...}}

`oracle_assessment` writes it from ShapesWorld's exact scorer; `parse_assessment` validates what a
model (ours, or a remote VLM) wrote, and raises `AssessmentError` naming the first problem.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from .shapes.detection import detect
from .shapes.prompts import ASPECTS, PromptSpec, check_spec

#: The prompt an assessor answers (the paper's assessment instruction, adapted to ShapesWorld).
ASSESSMENT_INSTRUCTION = (
    'Assess whether the image matches the text description: "{prompt}". '
    "Judge four aspects: Object, Counting, Color and Spatial Relation. For each, give a Score "
    "(1 if the image is right in that aspect, 0 if not) and a one-sentence Analysis. Answer with "
    'JSON only: {{"Object": {{"Score": 0 or 1, "Analysis": "..."}}, "Counting": {{...}}, '
    '"Color": {{...}}, "Spatial Relation": {{...}}}}'
)


class AssessmentError(ValueError):
    """An assessment text is not valid assessment JSON; the message says what is wrong."""


@dataclass(frozen=True)
class Assessment:
    """A validated assessment: scores and analyses per aspect."""

    scores: dict[str, int]
    analyses: dict[str, str]

    @property
    def passed(self) -> bool:
        return all(self.scores[a] == 1 for a in ASPECTS)

    def to_dict(self) -> dict:
        return {a: {"Score": self.scores[a], "Analysis": self.analyses[a]} for a in ASPECTS}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)


def oracle_assessment(spec: PromptSpec, image=None, *, objects=None) -> Assessment:
    """The exact assessment of an image against a prompt spec, from the ShapesWorld scorer
    (pass `objects` already detected in the image to skip detection)."""
    if objects is None:
        if image is None:
            raise ValueError("pass the image to assess, or the objects detected in it")
        objects = detect(image)
    check = check_spec(spec, objects)
    return Assessment({a: int(check.aspects[a]) for a in ASPECTS}, dict(check.analyses))


_FENCE = re.compile(r"^```(?:json)?\s*\n?(.*?)\n?```$", re.DOTALL)


def parse_assessment(text: str) -> Assessment:
    """Strictly parses assessment JSON (optionally inside one ```json fence).

    Rejected: anything but one JSON object; missing, extra or misspelt aspects; an aspect that is
    not an object with exactly "Score" and "Analysis"; a score that is not the integer 0 or 1
    (booleans and strings included); an empty analysis.
    """
    if not isinstance(text, str):
        raise AssessmentError(f"expected the assessment as text, got {type(text).__name__}")
    body = text.strip()
    if not body:
        raise AssessmentError("the assessment is empty")
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1).strip()
    try:
        data = json.loads(body)
    except json.JSONDecodeError as err:
        raise AssessmentError(
            f"not valid JSON: {err.msg} at line {err.lineno} column {err.colno}"
        ) from None
    if not isinstance(data, dict):
        raise AssessmentError(
            f"expected a JSON object with the four aspects, got a JSON {type(data).__name__}"
        )
    missing = [a for a in ASPECTS if a not in data]
    extra = sorted(k for k in data if k not in ASPECTS)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing aspect(s) {', '.join(map(repr, missing))}")
        if extra:
            parts.append(f"unexpected key(s) {', '.join(map(repr, extra))}")
        raise AssessmentError(
            f"{'; '.join(parts)}; the aspects are {', '.join(map(repr, ASPECTS))}"
        )
    scores, analyses = {}, {}
    for aspect in ASPECTS:
        entry = data[aspect]
        if not isinstance(entry, dict):
            raise AssessmentError(
                f"{aspect!r} must be an object with 'Score' and 'Analysis', got {json.dumps(entry)}"
            )
        keys = set(entry)
        if keys != {"Score", "Analysis"}:
            raise AssessmentError(
                f"{aspect!r} must have exactly the keys 'Score' and 'Analysis', got {sorted(keys)}"
            )
        score = entry["Score"]
        if isinstance(score, bool) or not isinstance(score, int) or score not in (0, 1):
            raise AssessmentError(
                f"{aspect!r} Score must be the integer 0 or 1, got {json.dumps(score)}"
            )
        analysis = entry["Analysis"]
        if not isinstance(analysis, str) or not analysis.strip():
            raise AssessmentError(
                f"{aspect!r} Analysis must be a non-empty string, got {json.dumps(analysis)}"
            )
        scores[aspect], analyses[aspect] = score, analysis.strip()
    return Assessment(scores, analyses)
