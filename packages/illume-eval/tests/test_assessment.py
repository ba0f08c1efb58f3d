import json

import pytest

from illume_eval import AssessmentError, oracle_assessment, parse_assessment
from illume_eval.shapes import Scene, ShapeObject, render
from illume_eval.shapes.prompts import ASPECTS, PromptSpec, Requirement
from illume_eval.shapes.selfcheck import assessor_agreement


def test_assessor_on_1000_pairs_agrees_and_parses():
    figures = assessor_agreement(1000, seed=0)
    assert figures == {"agree_with_scorer": 1.0, "agree_with_truth": 1.0, "parsed": 1.0}


def test_analysis_names_what_is_wrong():
    scene = Scene((ShapeObject("circle", "blue", 1, 0), ShapeObject("circle", "green", 1, 2)))
    spec = PromptSpec(
        "color_attr", (Requirement("circle", 1, "red"), Requirement("square", 1, "blue"))
    )
    result = oracle_assessment(spec, render(scene))
    data = json.loads(result.to_json())
    assert list(data) == list(ASPECTS)
    assert data["Object"]["Score"] == 0 and "no square" in data["Object"]["Analysis"]
    assert (
        data["Counting"]["Score"] == 0
        and "two circles instead of one" in data["Counting"]["Analysis"]
    )
    assert (
        data["Color"]["Score"] == 0
        and "should be red but is blue and green" in data["Color"]["Analysis"]
    )
    assert data["Spatial Relation"]["Score"] == 1
    assert not result.passed


def _good() -> dict:
    return {a: {"Score": 1, "Analysis": "Fine."} for a in ASPECTS}


def _with(aspect, entry) -> str:
    data = _good()
    data[aspect] = entry
    return json.dumps(data)


MALFORMED = [
    ("", "empty"),
    ("   \n ", "empty"),
    ("The image looks good.", "not valid JSON"),
    ('{"Object": {"Score": 1, "Analysis": "ok"}', "not valid JSON"),
    ("[1, 0, 1, 1]", "got a JSON list"),
    ('"Object: 1"', "got a JSON str"),
    (
        json.dumps({a: {"Score": 1, "Analysis": "x"} for a in ASPECTS[:3]}),
        "missing aspect.*'Spatial Relation'",
    ),
    (json.dumps(_good() | {"Style": {"Score": 1, "Analysis": "x"}}), "unexpected key.*'Style'"),
    (
        json.dumps({("Colour" if a == "Color" else a): v for a, v in _good().items()}),
        "missing aspect.*'Color'.*unexpected key.*'Colour'",
    ),
    (_with("Object", 1), "'Object' must be an object"),
    (_with("Object", "good"), "'Object' must be an object"),
    (_with("Counting", {"Score": 1}), "exactly the keys 'Score' and 'Analysis'"),
    (_with("Counting", {"score": 1, "analysis": "x"}), "exactly the keys"),
    (_with("Color", {"Score": 1, "Analysis": "x", "Confidence": 0.9}), "exactly the keys"),
    (_with("Color", {"Score": 2, "Analysis": "x"}), "Score must be the integer 0 or 1, got 2"),
    (_with("Color", {"Score": "1", "Analysis": "x"}), 'Score must be the integer 0 or 1, got "1"'),
    (
        _with("Color", {"Score": True, "Analysis": "x"}),
        "Score must be the integer 0 or 1, got true",
    ),
    (_with("Spatial Relation", {"Score": 0.5, "Analysis": "x"}), "got 0.5"),
    (
        _with("Spatial Relation", {"Score": 1, "Analysis": ""}),
        "Analysis must be a non-empty string",
    ),
    (
        _with("Spatial Relation", {"Score": 1, "Analysis": None}),
        "Analysis must be a non-empty string, got null",
    ),
]


@pytest.mark.parametrize(("text", "message"), MALFORMED)
def test_parser_rejects_malformed_output_clearly(text, message):
    with pytest.raises(AssessmentError, match=message):
        parse_assessment(text)


def test_twenty_malformed_cases():
    assert len(MALFORMED) == 20


def test_parser_accepts_fenced_json_and_round_trips():
    good = _good()
    good["Color"] = {"Score": 0, "Analysis": "The square is red, not blue."}
    text = "```json\n" + json.dumps(good) + "\n```"
    parsed = parse_assessment(text)
    assert parsed.scores["Color"] == 0 and not parsed.passed
    assert parse_assessment(parsed.to_json()) == parsed
