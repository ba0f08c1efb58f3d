"""The audit of what evaluation shares with training, and the lookup baseline."""

import json

import pytest

from illume_eval.shapes import SEEN_TAGS, UNSEEN_TAGS, PromptSpec, Scene, write_dataset
from illume_eval.shapes.audit import (
    TrainingOverlap,
    audit,
    content_words,
    lookup_scores,
    read_jsonl,
)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    write_dataset(root, 800, seed=0, n_eval=160, progress=False)
    return root


def test_content_words_ignore_phrasing():
    assert content_words("What color is the circle?") == content_words(
        "Which color does the circle have?"
    )
    assert content_words("How many circles are there?") == ("circle",)
    assert content_words("Is the red circle to the left of the blue square?") == (
        "red",
        "circle",
        "left",
        "blue",
        "square",
    )
    assert content_words("What is at the top left?") != content_words("What is at the top right?")


def test_lookup_baseline_draws_training_images_for_seen_specs_only(data):
    overlap = TrainingOverlap(data / "train")
    rows = read_jsonl(data / "validation" / "scenes.jsonl")
    seen = [PromptSpec.from_geneval(r["spec"]) for r in rows if r["spec"]["tag"] in SEEN_TAGS]
    unseen = [PromptSpec.from_geneval(r["spec"]) for r in rows if r["spec"]["tag"] in UNSEEN_TAGS]
    assert all(overlap.lookup(s) is None for s in unseen)
    assert not any(lookup_scores(overlap, unseen))
    # A training image drawn for the same spec is a clean render of it: the scorer passes it.
    found = [s for s in seen if overlap.lookup(s) is not None]
    assert len(found) >= 0.9 * len(seen)
    assert all(lookup_scores(overlap, found))
    # ... and the lookup is by spec, not by caption: another phrasing finds the same image.
    spec = found[0]
    assert overlap.lookup(spec.with_prompt("something else entirely")) == overlap.lookup(spec)


def test_audit_reports_zero_overlap_on_the_unseen_sets(data):
    report = audit(data)
    unseen = report["validation"]["t2i"]["unseen"]
    assert set(unseen) - {"all"} <= set(UNSEEN_TAGS)
    for row in unseen.values():
        assert row["spec"] == row["text"] == row["prompt"] == row["layout"] == row["lookup"] == 0
    assert report["heldout"]["t2i"]["all"]["all"]["spec"] == 0
    assert report["validation"]["t2i"]["seen"]["all"]["spec"] == 1.0  # small spaces: all seen
    # Questions: by meaning is at least as often seen as verbatim; both shares are fractions.
    for kind, row in report["validation"]["qa"].items():
        assert 0 <= row["question"] <= row["meaning"] <= 1, kind
    assert set(report["validation"]["pope"]) == {"random", "popular", "adversarial"}
    json.dumps(report)  # what the CLI prints


def test_question_seen_is_by_layout_and_meaning(data):
    overlap = TrainingOverlap(data / "train")
    train_scenes = {
        r["image"]: Scene.from_dict(r["scene"]) for r in read_jsonl(data / "train" / "scenes.jsonl")
    }
    question = read_jsonl(data / "train" / "qa.jsonl")[0]
    scene = train_scenes[question["image"]]
    assert overlap.question_seen(scene, question)
    rephrased = dict(
        question, question=question["question"].replace("What", "Which").replace("How", "how")
    )
    assert overlap.question_seen(scene, rephrased)
    assert not overlap.question_seen(Scene(), question)  # another layout
