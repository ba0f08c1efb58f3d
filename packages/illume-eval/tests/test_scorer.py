import numpy as np
import pytest

from illume_eval import aspect_failures
from illume_eval.shapes import Scene, ShapeObject, check_spec, detect, render, sample_prompt
from illume_eval.shapes.degrade import DEGRADATIONS
from illume_eval.shapes.detection import MALFORMED, OFF_PALETTE
from illume_eval.shapes.malformed import MALFORMED_KINDS, malformed_render
from illume_eval.shapes.prompts import PromptSpec, Requirement
from illume_eval.shapes.selfcheck import false_acceptance, malformed_acceptance, scorer_accuracy


def test_clean_renders_2000_validation_scenes():
    figures = scorer_accuracy(2000, size=32, seed=0)
    assert figures["overall"] >= 0.995, figures
    assert all(v >= 0.99 for v in figures.values()), figures


@pytest.mark.parametrize("kind", DEGRADATIONS)
def test_robust_to_degradation_at_64px(kind):
    figures = scorer_accuracy(200, size=64, seed=1, degradation=kind)
    assert figures["overall"] >= 0.95, figures


@pytest.mark.parametrize("kind", DEGRADATIONS)
def test_robust_to_degradation_at_32px(kind):
    figures = scorer_accuracy(300, size=32, seed=2, degradation=kind)
    assert figures["overall"] >= 0.95, figures


def test_false_acceptance_of_random_prompts():
    rates = false_acceptance(1200, size=32, seed=4)
    assert set(rates) == {
        "single_object",
        "two_object",
        "counting",
        "colors",
        "position",
        "color_attr",
    }
    assert all(rate <= 0.02 for rate in rates.values()), rates


def test_detects_nothing_on_a_blank_image_and_noise():
    assert detect(render(Scene())) == []
    noise = np.random.default_rng(0).integers(0, 40, size=(32, 32, 3), dtype=np.uint8)
    assert detect(noise) == []


def test_strict_and_geneval_rules():
    scene = Scene((ShapeObject("circle", "red", 0, 0), ShapeObject("square", "blue", 2, 2)))
    objects = detect(render(scene))
    just_a_circle = PromptSpec("single_object", (Requirement("circle"),))
    assert not check_spec(just_a_circle, objects).correct  # an unrequested square
    assert check_spec(just_a_circle, objects, strict=False).correct  # GenEval ignores other objects
    left = PromptSpec(
        "position",
        (
            Requirement("square", color="blue"),
            Requirement("circle", color="red", position=("left of", 0)),
        ),
    )
    assert check_spec(left, objects).correct
    right = PromptSpec(
        "position",
        (
            Requirement("square", color="blue"),
            Requirement("circle", color="red", position=("right of", 0)),
        ),
    )
    check = check_spec(right, objects)
    assert not check.correct and check.aspects == {
        "Object": True,
        "Counting": True,
        "Color": True,
        "Spatial Relation": False,
    }
    assert "not right of" in check.analyses["Spatial Relation"]


def test_aspect_failures_say_where_each_category_misses():
    scene = Scene((ShapeObject("circle", "red", 0, 0), ShapeObject("square", "blue", 2, 2)))
    objects = detect(render(scene))
    swapped = PromptSpec(  # colours bound to the wrong shapes
        "color_attr", (Requirement("circle", color="blue"), Requirement("square", color="red"))
    )
    right = PromptSpec(
        "color_attr", (Requirement("circle", color="red"), Requirement("square", color="blue"))
    )
    two = PromptSpec("two_object", (Requirement("circle"), Requirement("triangle")))
    checks = [(s.tag, check_spec(s, objects)) for s in (swapped, right, two)]
    assert aspect_failures(checks) == {
        "two_object": {
            "drawings": 1,
            "Object": 1.0,
            "Counting": 1.0,
            "Color": 0.0,
            "Spatial Relation": 0.0,
        },
        "color_attr": {
            "drawings": 2,
            "Object": 0.0,
            "Counting": 0.0,
            "Color": 0.5,
            "Spatial Relation": 0.0,
        },
    }


def test_bad_images_are_refused_clearly():
    with pytest.raises(ValueError, match="expected an RGB image"):
        detect(np.zeros((32, 32), np.uint8))
    with pytest.raises(ValueError, match="square"):
        detect(np.zeros((32, 48, 3), np.uint8))


@pytest.mark.parametrize("kind", MALFORMED_KINDS)
def test_each_malformed_probe_is_rejected(kind):
    """A plus sign, an ellipse, speckle, an off-palette colour, ... in a scene's cell is no valid
    object: the strict scorer reports it as MALFORMED or OFF_PALETTE, so the scene's prompt fails,
    while the untouched objects are still read right."""
    rng = np.random.default_rng(11)
    rejected = 0
    for _ in range(40):
        scene, spec = sample_prompt(rng, "validation")
        victim = scene.objects[0]
        found = detect(malformed_render(scene, victim, kind, 32, rng))
        in_cell = [o for o in found if o.cell == victim.cell]
        rejected += not any(o.valid for o in in_cell)
        others = sorted((o.shape, o.color, o.row, o.col) for o in found if o.cell != victim.cell)
        assert others == scene.without(victim).summary(), (kind, found)
        if in_cell and not in_cell[0].valid:
            assert MALFORMED in (in_cell[0].shape,) or in_cell[0].color == OFF_PALETTE
            assert in_cell[0].flaw
            assert not check_spec(spec, found).correct
    assert rejected >= 39, (kind, rejected)


def test_malformed_acceptance_is_low_and_clean_shapes_pass():
    rates = malformed_acceptance(30, size=32, seed=5)
    assert set(rates) == {*MALFORMED_KINDS, "overall"}
    assert rates["overall"] <= 0.01, rates
    scene = Scene((ShapeObject("triangle", "green", 1, 1), ShapeObject("circle", "cyan", 0, 2)))
    assert all(o.valid for o in detect(render(scene)))
