"""ShapesWorld in words: the language model's corpus says what each image shows, cell by cell, and
asks it to draw nothing that the MLLM may not be asked to draw."""

import json

from illume_eval.shapes import Scene, ShapeObject, write_dataset
from illume_eval.shapes.language import SOURCES, ensure_language_corpus, in_words, layout_text
from illume_eval.shapes.splits import heldout_combinations


def test_a_layout_names_every_cell_in_the_order_of_a_drawings_codes():
    scene = Scene((ShapeObject("circle", "red", 0, 0), ShapeObject("square", "blue", 2, 1)))
    text = layout_text(scene)
    assert text.startswith("Layout: top left: a red circle; top middle: empty;")
    assert text.endswith("bottom middle: a blue square; bottom right: empty.")
    assert text.count(";") == 8


def test_images_become_their_layouts_in_order():
    a = Scene((ShapeObject("circle", "red", 0, 0),))
    b = Scene((ShapeObject("circle", "green", 0, 0),))
    conversation = {
        "id": "x",
        "images": ["images/a.png", "edits/a.png"],
        "conversations": [
            {"from": "human", "value": "make it green\n<image>"},
            {"from": "gpt", "value": "<image>"},
        ],
    }
    out = in_words(conversation, {"images/a.png": a, "edits/a.png": b})
    assert "images" not in out and "image" not in out
    assert out["conversations"][0]["value"] == "make it green\n" + layout_text(a)
    assert out["conversations"][1]["value"] == layout_text(b)


def test_the_corpus_is_written_once_and_draws_no_heldout_composition(tmp_path):
    write_dataset(tmp_path, 300, seed=1, n_eval=20, progress=False)
    train = ensure_language_corpus(tmp_path)[0]
    stamps = {p.name: p.stat().st_mtime_ns for p in train.iterdir()}
    assert ensure_language_corpus(tmp_path)[0] == train  # fresh: not rewritten
    assert {p.name: p.stat().st_mtime_ns for p in train.iterdir()} == stamps
    for name in SOURCES:
        rows = json.loads((train / name).read_text())
        assert len(rows) == len(json.loads((tmp_path / "train" / name).read_text()))
        assert all("<image>" not in t["value"] for r in rows for t in r["conversations"])
    # what the language model writes as a drawing: never a held-out composition
    scenes = {
        json.loads(line)["id"]: Scene.from_dict(json.loads(line)["scene"])
        for line in (tmp_path / "train" / "scenes.jsonl").read_text().splitlines()
    }
    drawn = json.loads((train / "t2i.json").read_text())
    assert drawn and all(not heldout_combinations(scenes[r["id"]]) for r in drawn)
    assert all(r["conversations"][1]["value"].startswith("Layout:") for r in drawn)


def test_a_written_layout_parses_back_to_its_objects_and_nothing_else_does():
    from illume_eval.shapes.language import parse_layout

    scene = Scene((ShapeObject("triangle", "cyan", 1, 1), ShapeObject("circle", "red", 0, 2)))
    assert sorted((o.shape, o.color, o.row, o.col) for o in parse_layout(layout_text(scene))) == (
        scene.summary()
    )
    text = layout_text(scene)
    assert parse_layout(text.replace("top left: empty; ", "")) is None  # a cell missing
    assert parse_layout(text.replace("a cyan triangle", "a teal triangle")) is None
    assert parse_layout(text.replace("top middle", "top left")) is None  # a cell twice
    assert parse_layout("a red circle") is None
