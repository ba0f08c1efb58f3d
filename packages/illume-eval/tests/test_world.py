import itertools
import json
import re

import numpy as np
import pytest

from illume_eval.shapes import (
    CELL_NAMES,
    HELDOUT_PAIRS,
    PATCH_CLASSES,
    SEEN_TAGS,
    TAGS,
    UNSEEN_TAGS,
    Scene,
    ShapeObject,
    check_spec,
    counterfactual,
    detect,
    generation_allowed,
    heldout_combinations,
    patch_labels,
    render,
    reserved_for_validation,
    sample_edit,
    sample_prompt,
    scene_questions,
    spec_holds,
)
from illume_eval.shapes.prompts import PHRASINGS, PromptSpec, Requirement
from illume_eval.shapes.world import BACKGROUND, COLORS, cell_box


def test_render_is_deterministic_and_sized():
    rng = np.random.default_rng(0)
    scene, _ = sample_prompt(rng)
    assert np.array_equal(render(scene), render(scene))
    assert render(scene).shape == (32, 32, 3) and render(scene, 64).shape == (64, 64, 3)
    assert render(Scene()).reshape(-1, 3).tolist() == [list(BACKGROUND)] * 32 * 32


def test_counterfactuals_fail_their_prompt_by_what_its_category_tests():
    rng = np.random.default_rng(3)
    made = {}
    for _ in range(300):
        scene, spec = sample_prompt(rng, "validation")
        changed = counterfactual(scene, spec)
        if changed is None:
            continue
        made[spec.tag] = made.get(spec.tag, 0) + 1
        assert spec_holds(spec, scene.objects) and not spec_holds(spec, changed.objects)
        # the scorer sees the change in the rendered image too
        assert not check_spec(spec, detect(render(changed))).correct
        before, after = scene.objects, changed.objects
        if spec.tag == "counting":
            assert after == before[:-1]
            continue
        assert len(after) == len(before)
        moved = {
            "position": ("row", "col"),
            "color_attr": ("color",),
            "colors": ("color",),
            "single_object": ("shape",),
            "two_object": ("shape",),
        }[spec.tag]
        for a, b in zip(before, after):  # nothing else changed
            for field in ("shape", "color", "row", "col", "dx", "dy", "scale"):
                assert getattr(a, field) == getattr(b, field) or field in moved
    assert set(made) == set(TAGS), made  # every category has its counterfactual


def test_patch_labels_name_what_each_patch_shows():
    rng = np.random.default_rng(1)
    for _ in range(20):
        scene, _ = sample_prompt(rng)
        labels, image = patch_labels(scene), render(scene).astype(int)
        assert labels.shape == (8, 8)
        for (r, c), label in np.ndenumerate(labels):
            pixels = image[4 * r : 4 * r + 4, 4 * c : 4 * c + 4].reshape(-1, 3)
            differs = np.abs(pixels - BACKGROUND).sum(-1) > 30
            if label == 0:  # background: at most a sliver of an object
                assert differs.mean() < 0.5
                continue
            _, color = PATCH_CLASSES[label]
            assert differs.mean() >= 0.2  # a quarter covered, anti-aliasing takes a little
            # the patch's most object-like pixel is of the labelled colour
            closest = pixels[np.abs(pixels - BACKGROUND).sum(-1).argmax()]
            assert np.abs(closest - COLORS[color]).sum() < 60
        shown = {PATCH_CLASSES[k] for k in np.unique(labels) if k}
        assert shown <= {(o.shape, o.color) for o in scene.objects}
        assert len(shown) == len({(o.shape, o.color) for o in scene.objects})  # none hidden
    with pytest.raises(ValueError, match="does not tile"):
        patch_labels(scene, size=32, patch=5)


def test_objects_stay_inside_their_cell():
    for shape in ("circle", "square", "triangle"):
        obj = ShapeObject(shape, "red", 1, 1, dx=0.08, dy=-0.08, scale=0.70)
        image = render(Scene((obj,)), 64)
        x0, y0, x1, y1 = cell_box((1, 1), 64)
        outside = image.copy()
        outside[y0:y1, x0:x1] = BACKGROUND
        assert (outside == BACKGROUND).all(), f"a {shape} spills out of its cell"
        assert (image[y0:y1, x0:x1] == COLORS["red"]).all(axis=-1).sum() > 60


def test_jitter_makes_images_differ():
    rng = np.random.default_rng(1)
    images = {render(sample_prompt(rng, tag="colors")[0]).tobytes() for _ in range(50)}
    assert len(images) == 50


def test_scene_json_round_trip_and_validation():
    scene, _ = sample_prompt(np.random.default_rng(2), tag="color_attr")
    assert Scene.from_dict(json.loads(scene.to_json())) == scene
    with pytest.raises(ValueError, match="unknown shape 'star'"):
        ShapeObject("star", "red", 0, 0)
    with pytest.raises(ValueError, match="outside the 3x3 grid"):
        ShapeObject("circle", "red", 3, 0)
    with pytest.raises(ValueError, match="share a cell"):
        Scene((ShapeObject("circle", "red", 0, 0), ShapeObject("square", "blue", 0, 0)))


def test_every_construction_has_three_or_more_phrasings_and_they_are_used():
    rng = np.random.default_rng(3)
    for tag in TAGS:
        assert len(PHRASINGS[tag]) >= 3, tag
        words = r"\b(red|green|blue|yellow|purple|cyan|circles?|squares?|triangles?|two|three)\b"
        forms = {re.sub(words, "X", sample_prompt(rng, tag=tag)[1].prompt) for _ in range(300)}
        assert len(forms) >= 3, f"{tag} captions use fewer than three phrasings: {forms}"
    for relation in ("to the left of", "to the right of", "above", "below", "under", "over"):
        assert any(relation in t for t in PHRASINGS["position"])


def test_every_caption_describes_its_scene():
    rng = np.random.default_rng(4)
    for split in ("train", "validation", "heldout"):
        for _ in range(300):
            scene, spec = sample_prompt(rng, split)
            assert spec.prompt
            assert check_spec(spec, scene.objects).correct, (spec, scene)
            assert PromptSpec.from_geneval(json.loads(json.dumps(spec.to_geneval()))) == spec


def test_spec_holds_agrees_with_check_spec_on_every_pair():
    rng = np.random.default_rng(5)
    pairs = [sample_prompt(rng, "train") for _ in range(60)]
    specs = [spec for _, spec in pairs]
    scenes = [scene for scene, _ in pairs]
    verdicts = []
    for spec, scene, strict in itertools.product(specs, scenes, (True, False)):
        expected = check_spec(spec, scene.objects, strict=strict).correct
        assert spec_holds(spec, scene.objects, strict=strict) == expected, (spec, scene, strict)
        verdicts.append(expected)
    assert (
        0.02 < np.mean(verdicts) < 0.5
    )  # both verdicts occur often, so the agreement means something


def test_split_rules_at_the_sampler():
    """Validation's unseen categories draw only reserved specs, which training never draws;
    validation holds no held-out composition; training shows some (to read) but never as an edit
    target; every heldout prompt asks for one."""
    rng = np.random.default_rng(5)
    train_keys, heldout_in_train = set(), 0
    for _ in range(3000):
        scene, spec = sample_prompt(rng, "train")
        assert not reserved_for_validation(spec.tag, spec.key()), spec
        if generation_allowed(scene):  # the scenes that may be drawing requests
            train_keys.add(spec.key())
        heldout_in_train += bool(heldout_combinations(scene))
        edit = sample_edit(scene, rng, "train")
        if edit is not None:
            assert generation_allowed(edit.target)
    assert 0.05 < heldout_in_train / 3000 < 0.2
    for _ in range(1500):
        scene, spec = sample_prompt(rng, "validation")
        assert not heldout_combinations(scene) and not spec.heldout_combinations(), spec
        if spec.tag in UNSEEN_TAGS:
            assert reserved_for_validation(spec.tag, spec.key())
            assert spec.key() not in train_keys
        else:
            assert spec.tag in SEEN_TAGS
    for _ in range(500):
        _, spec = sample_prompt(rng, "heldout")
        assert spec.heldout_combinations(), spec
        assert spec.key() not in train_keys


def test_spec_key_ignores_phrasing_and_order():
    red, blue = Requirement("circle", 1, "red"), Requirement("square", 1, "blue")
    a = PromptSpec("color_attr", (red, blue), "a red circle and a blue square")
    b = PromptSpec("color_attr", (blue, red), "a square in blue and a circle in red")
    assert a.key() == b.key()
    left = PromptSpec("position", (blue, Requirement("circle", 1, "red", ("left of", 0))))
    right = PromptSpec("position", (red, Requirement("square", 1, "blue", ("right of", 0))))
    assert left.key() == right.key()
    above = PromptSpec("position", (blue, Requirement("circle", 1, "red", ("above", 0))))
    assert above.key() != left.key()
    assert PromptSpec("colors", (red,)).key() != PromptSpec("single_object", (red,)).key()


def test_heldout_detection_covers_pairs_and_relations():
    purple_triangle = Scene((ShapeObject("triangle", "purple", 0, 0),))
    assert heldout_combinations(purple_triangle) == ["purple triangle"]
    triangle_over_circle = Scene(
        (ShapeObject("triangle", "red", 0, 2), ShapeObject("circle", "blue", 2, 0))
    )
    assert heldout_combinations(triangle_over_circle) == ["triangle above circle"]
    circle_over_triangle = Scene(
        (ShapeObject("circle", "blue", 0, 2), ShapeObject("triangle", "red", 2, 0))
    )
    assert heldout_combinations(circle_over_triangle) == []
    assert len(HELDOUT_PAIRS) == 3


def test_questions_have_exact_answers():
    rng = np.random.default_rng(6)
    seen_types = set()
    for _ in range(300):
        scene, _ = sample_prompt(rng)
        for q in scene_questions(scene, rng):
            seen_types.add((q.type, q.negative_type))
            if q.type == "color":
                shape = next(s for s in ("circle", "square", "triangle") if s in q.question)
                assert q.answer == next(o.color for o in scene.objects if o.shape == shape)
            if q.type == "position":
                cell = next(c for c, name in CELL_NAMES.items() if f" {name}" in q.question)
                obj = scene.at(cell)
                assert q.answer == (f"a {obj.color} {obj.shape}" if obj else "nothing")
            if q.type == "existence":
                words = q.question.rstrip("?").split()
                target = next((c, s) for c, s in itertools.pairwise(words) if c in COLORS)
                present = (target[0], target[1]) in {(o.color, o.shape) for o in scene.objects}
                assert q.answer == ("yes" if present else "no")
    for kind in ("random", "popular", "adversarial"):
        assert ("existence", kind) in seen_types
    assert {t for t, _ in seen_types} == {"color", "count", "existence", "spatial", "position"}


def test_pope_adversarial_negatives_share_an_attribute():
    from illume_eval.shapes.qa import pope_negative

    rng = np.random.default_rng(7)
    for _ in range(100):
        scene, _ = sample_prompt(rng)
        color, shape = pope_negative(scene, "adversarial", rng)
        assert (color, shape) not in {(o.color, o.shape) for o in scene.objects}
        assert any(o.color == color or o.shape == shape for o in scene.objects)


def test_edits_change_only_what_they_name():
    rng = np.random.default_rng(8)
    kinds = set()
    for _ in range(200):
        scene, _ = sample_prompt(rng)
        edit = sample_edit(scene, rng)
        if edit is None:
            continue
        kinds.add(edit.kind)
        assert edit.target != edit.source
        for obj in edit.untouched():
            assert obj in edit.target.objects
        source, target = render(edit.source, 64), render(edit.target, 64)
        changed = (source != target).any(axis=-1)
        ys, xs = np.nonzero(changed)
        cells = {(int(y * 3 // 64), int(x * 3 // 64)) for y, x in zip(ys, xs)}
        allowed = {edit.edited.cell} | {
            o.cell for o in edit.target.objects if o not in edit.source.objects
        }
        assert cells <= allowed, (edit.kind, cells, allowed)
    assert kinds == {"recolor", "remove", "add", "move"}


def test_edits_round_trip_through_their_dict():
    from illume_eval.shapes import Edit

    rng = np.random.default_rng(8)
    for _ in range(100):
        scene, _ = sample_prompt(rng, "train")
        edit = sample_edit(scene, rng, "train")
        if edit is not None:
            again = Edit.from_dict(json.loads(json.dumps(edit.to_dict())))
            assert again == edit and again.untouched() == edit.untouched()


def test_split_rules_in_the_written_dataset(tmp_path):
    """In the files the recipes read: no unseen validation spec anywhere in training; held-out
    compositions in the codec's and understanding's data (captions, i2t, questions) and absent
    from generation data (t2i.json, edit targets)."""
    from illume_eval.shapes import write_dataset
    from illume_eval.shapes.edits import Edit

    write_dataset(tmp_path, 600, seed=0, n_eval=200, progress=False)

    def rows(split, name):
        return [json.loads(x) for x in (tmp_path / split / name).read_text().splitlines()]

    scenes = {r["image"]: r for r in rows("train", "scenes.jsonl")}
    train_keys = {PromptSpec.from_geneval(r["spec"]).key() for r in scenes.values()}
    unseen = [
        PromptSpec.from_geneval(r["spec"])
        for r in rows("validation", "scenes.jsonl")
        if r["spec"]["tag"] in UNSEEN_TAGS
    ]
    assert len(unseen) > 50
    assert not {s.key() for s in unseen} & train_keys

    def shows_heldout(row):
        return bool(heldout_combinations(Scene.from_dict(row["scene"])))

    captions = rows("train", "captions.jsonl")
    assert 0.05 < np.mean([shows_heldout(r) for r in captions]) < 0.2  # the codec sees them
    assert all(r["generation"] == (not shows_heldout(r)) for r in captions)
    i2t = json.loads((tmp_path / "train" / "i2t.json").read_text())
    qa = rows("train", "qa.jsonl")
    assert any(shows_heldout(scenes[c["image"]]) for c in i2t)  # understanding reads them
    assert any(shows_heldout(scenes[q["image"]]) for q in qa)
    t2i = json.loads((tmp_path / "train" / "t2i.json").read_text())
    assert t2i and not any(shows_heldout(scenes[c["image"]]) for c in t2i)  # never drawn
    for edit in rows("train", "edits.jsonl"):
        assert not heldout_combinations(Edit.from_dict(edit).target)
