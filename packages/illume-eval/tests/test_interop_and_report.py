import json

import numpy as np
import pytest
from PIL import Image

from illume_eval import Card, HtmlReport
from illume_eval.interop import (
    read_geneval_metadata,
    score_geneval_folder,
    score_pope_files,
    write_geneval_metadata,
    write_geneval_samples,
    write_pope_questions,
)
from illume_eval.shapes import render, sample_prompt
from illume_eval.shapes.dataset import write_dataset


def test_geneval_round_trip_and_scoring(tmp_path):
    rng = np.random.default_rng(0)
    pairs = [sample_prompt(rng, "validation") for _ in range(12)]
    specs = [spec for _, spec in pairs]
    write_geneval_metadata(specs, tmp_path / "evaluation_metadata.jsonl")
    assert read_geneval_metadata(tmp_path / "evaluation_metadata.jsonl") == specs
    # Two samples per prompt: the right scene, and the scene of the next prompt (usually wrong).
    images = [
        [Image.fromarray(render(pairs[i][0])), Image.fromarray(render(pairs[(i + 1) % 12][0]))]
        for i in range(12)
    ]
    write_geneval_samples(tmp_path / "samples", specs, images)
    assert (tmp_path / "samples" / "00003" / "samples" / "0001.png").is_file()
    rows, summary = score_geneval_folder(tmp_path / "samples")
    assert len(rows) == 24
    assert all(r["correct"] for r in rows[0::2])
    assert sum(r["correct"] for r in rows[1::2]) <= 2
    assert 0.4 <= summary["overall"] <= 0.65
    wrong = next(r for r in rows[1::2] if not r["correct"])
    assert wrong["reason"]


def test_pope_files(tmp_path):
    questions = [
        {"question_id": 1, "image": "a.png", "text": "Is there a red circle?", "label": "yes"},
        {"question_id": 2, "image": "a.png", "text": "Is there a blue square?", "label": "no"},
        {"question_id": 3, "image": "b.png", "text": "Is there a cyan square?", "label": "yes"},
        {"question_id": 4, "image": "b.png", "text": "Is there a red square?", "label": "no"},
    ]
    write_pope_questions(questions, tmp_path / "q.jsonl")
    answers = [
        {"question_id": 1, "text": "Yes."},
        {"question_id": 2, "text": "No"},
        {"question_id": 3, "text": "no"},
        {"question_id": 4, "text": "yes, there is"},
    ]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(a) + "\n" for a in answers))
    figures = score_pope_files(tmp_path / "q.jsonl", tmp_path / "a.jsonl")
    assert figures["accuracy"] == 0.5 and figures["precision"] == 0.5 and figures["recall"] == 0.5
    assert figures["yes_ratio"] == 0.5
    (tmp_path / "short.jsonl").write_text(json.dumps(answers[0]) + "\n")
    with pytest.raises(ValueError, match="no answer for 3 question"):
        score_pope_files(tmp_path / "q.jsonl", tmp_path / "short.jsonl")


def test_report_is_one_self_contained_file(tmp_path):
    report = HtmlReport("ShapesWorld <test>")
    scene, spec = sample_prompt(np.random.default_rng(1))
    image = Image.fromarray(render(scene))
    report.heading("Samples").grid(
        [Card([image], spec.prompt, True), Card([image, image], "edit", False, "moved")]
    )
    report.heading("Metrics").metrics({"overall": 0.9, "steps": 100})
    report.heading("Loss").curves(
        {"train": [(0, 2.0), (1, 1.0), (2, 0.5)], "val": [(0, 2.1), (2, 0.7)]}, ylabel="loss"
    )
    path = report.write(tmp_path / "report.html")
    text = path.read_text()
    assert text.count("data:image/png;base64,") == 3
    assert "ShapesWorld &lt;test&gt;" in text and "<svg" in text and "0.9000" in text
    assert "class='card ok'" in text and "class='card bad'" in text


def test_dataset_is_deterministic_and_consistent(tmp_path):
    a = write_dataset(tmp_path / "a", 40, seed=7, n_eval=10, progress=False)
    b = write_dataset(tmp_path / "b", 40, seed=7, n_eval=10, progress=False)
    assert a == b
    for name in (
        "train/scenes.jsonl",
        "train/qa.jsonl",
        "heldout/edits.jsonl",
        "validation/t2i.json",
    ):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a/train/images/000039.png").read_bytes() == (
        tmp_path / "b/train/images/000039.png"
    ).read_bytes()
    # Manifests point at files that exist, relative to the manifest's folder.
    for line in (tmp_path / "a/train/edits.jsonl").read_text().splitlines():
        row = json.loads(line)
        assert (tmp_path / "a/train" / row["source"]).is_file() and (
            tmp_path / "a/train" / row["target"]
        ).is_file()
    conversations = json.loads((tmp_path / "a/train/t2i.json").read_text())
    assert conversations[0]["conversations"][1] == {"from": "gpt", "value": "<image>"}
    # One conversation per question of qa.jsonl, the image first: several questions of one image in
    # one conversation let a model answer later ones from the earlier answers, not the image.
    qa = json.loads((tmp_path / "a/train/qa.json").read_text())
    flat = [json.loads(line) for line in (tmp_path / "a/train/qa.jsonl").read_text().splitlines()]
    assert len(qa) == len(flat) > 40
    for conv, row in zip(qa, flat, strict=True):
        assert (conv["id"], conv["image"]) == (row["id"], row["image"])
        assert conv["conversations"] == [
            {"from": "human", "value": "<image>\n" + row["question"]},
            {"from": "gpt", "value": row["answer"]},
        ]
    assert {r["type"] for r in flat} == {"color", "count", "existence", "spatial", "position"}


def test_assessment_conversations_are_exact_and_mixed(tmp_path):
    from illume_eval import parse_assessment
    from illume_eval.shapes import PromptSpec, check_spec, detect

    write_dataset(tmp_path, 40, seed=3, n_eval=10, progress=False)
    conversations = json.loads((tmp_path / "train/assessments.json").read_text())
    assert len(conversations) == 40
    verdicts = []
    for conv in conversations:
        question, answer = (t["value"] for t in conv["conversations"])
        spec = PromptSpec.from_geneval(conv["spec"])
        assert f'"{spec.prompt}"' in question
        assessment = parse_assessment(answer)
        # the answer is what the exact scorer finds in the rendered image for that caption
        check = check_spec(spec, detect(Image.open(tmp_path / "train" / conv["image"])))
        assert assessment.scores == {a: int(v) for a, v in check.aspects.items()}
        assert assessment.analyses == dict(check.analyses)
        verdicts.append(assessment.passed)
    # own captions (all right) and other scenes' captions (something wrong) both occur
    assert 0 < sum(verdicts) < len(verdicts)


def test_ensure_dataset_keeps_a_current_one_and_rewrites_an_older_format(tmp_path):
    from illume_eval.shapes import ensure_dataset

    write_dataset(tmp_path, 20, seed=1, n_eval=5, progress=False)
    marker = tmp_path / "train/scenes.jsonl"
    before = marker.stat().st_mtime_ns
    ensure_dataset(tmp_path, 20, seed=1, n_eval=5, progress=False)
    assert marker.stat().st_mtime_ns == before  # current: left alone
    info = json.loads((tmp_path / "info.json").read_text())
    (tmp_path / "train/assessments.json").unlink()
    (tmp_path / "info.json").write_text(json.dumps({**info, "format_version": 1}))
    ensure_dataset(tmp_path, 20, seed=1, n_eval=5, progress=False)
    assert (tmp_path / "train/assessments.json").is_file()  # the older format gained the new file
    assert marker.read_bytes() == (tmp_path / "train/scenes.jsonl").read_bytes()
    ensure_dataset(tmp_path, 30, seed=1, n_eval=5, progress=False)  # other counts: rewritten
    assert len((tmp_path / "train/scenes.jsonl").read_text().splitlines()) == 30


def test_a_dataset_write_cut_short_is_never_taken_for_finished(tmp_path, monkeypatch):
    """Images are written in place (no temp file per image): the dataset's info.json goes first
    and comes back last, so a write that stops half way (here: a torn image, the validation split
    failing) over a finished dataset leaves none that ensure_dataset would keep."""
    from illume_eval.shapes import dataset, ensure_dataset

    whole = tmp_path / "whole"
    write_dataset(whole, 20, seed=1, n_eval=5, progress=False)
    cut = tmp_path / "cut"
    write_dataset(cut, 20, seed=1, n_eval=5, progress=False)
    (cut / "validation/images/000003.png").write_bytes(b"\x89PNG torn")  # the stop never reaches it
    real = dataset.write_split

    def failing(out, split, *args, **kwargs):
        if split == "validation":
            raise KeyboardInterrupt
        return real(out, split, *args, **kwargs)

    monkeypatch.setattr(dataset, "write_split", failing)
    with pytest.raises(KeyboardInterrupt):
        write_dataset(cut, 20, seed=1, n_eval=5, progress=False)
    assert not (cut / "info.json").exists()
    assert (cut / "validation/images/000003.png").read_bytes() == b"\x89PNG torn"
    monkeypatch.setattr(dataset, "write_split", real)
    ensure_dataset(cut, 20, seed=1, n_eval=5, progress=False)
    for path in whole.rglob("*"):
        if path.is_file():
            assert path.read_bytes() == (cut / path.relative_to(whole)).read_bytes(), path
