"""The demo's `report.html`: pictures first (reconstructions, drawings with the scorer's verdict,
answers, edits), then the metrics table and the loss curves of every stage."""

from __future__ import annotations

import csv
from pathlib import Path

from illume_core import load_image
from illume_eval.report import Card, HtmlReport

from .demo import HEADLINE


def _loss_curves(root: str = "runs/shapes") -> dict[str, list[tuple[float, float]]]:
    """train/loss against step from each stage's Lightning CSV log (the latest version)."""
    series = {}
    for metrics in sorted(Path(root).rglob("metrics.csv")):
        stage = metrics.relative_to(root).parts[0]
        if stage == "mllm":
            stage = "mllm " + metrics.relative_to(root).parts[1]
        points = []
        with open(metrics, newline="") as handle:
            for row in csv.DictReader(handle):
                if row.get("train/loss"):
                    points.append((float(row["step"]), float(row["train/loss"])))
        if points:
            series[stage] = points
    return series


def _reconstructions(pipe, data: str = "data/shapes/validation", n: int = 8) -> list[Card]:
    paths = sorted(Path(data, "images").glob("*.png"))[:n]
    images = [load_image(p) for p in paths]
    drawn = pipe.reconstruct(images, seed=0)
    return [
        Card([a, b], p.name, note="original, then image -> codes -> detokenizer")
        for a, b, p in zip(images, drawn, paths)
    ]


def write_report(path: str, metrics: dict, records: dict, pipe) -> None:
    report = HtmlReport("ILLUME on ShapesWorld")
    report.paragraph(
        f"Profile {metrics['profile']}: trained and evaluated in {metrics['total_seconds']:.0f} s. "
        "Every verdict is illume-eval's exact scorer (green: the image shows exactly what was asked)."
    )
    report.heading("Headline figures")
    report.metrics({k: metrics[k] for k in HEADLINE})
    report.heading("Tokenizer reconstructions (through the detokenizer)")
    report.grid(_reconstructions(pipe))
    for key, title in (
        ("t2i", "Text to image, validation prompts"),
        ("heldout", "Text to image, held-out combinations"),
    ):
        report.heading(title)
        report.grid([
            Card([r["image"]], r["spec"].prompt, r["correct"],
                 "; ".join(f"{a}: {'ok' if ok else r['check'].analyses[a]}" for a, ok in r["check"].aspects.items()))
            for r in records[key]["records"][:24]
        ])  # fmt: skip
        if key == "t2i":
            report.paragraph("Where the misses come from: per category, the fraction of drawings "
                             "that fail each aspect of the assessment (one drawing can fail several).")  # fmt: skip
            report.table([{"category": tag} | {a: round(v, 3) if isinstance(v, float) else v for a, v in row.items()}
                          for tag, row in metrics["t2i_failed_aspects"].items()])  # fmt: skip
    report.heading("Understanding: answers")
    qa = records["qa"]["records"][:40]
    report.table([{"image": r["image"], "question": r["question"], "answer": r["answer"], "expected": r["expected"],
                   "right": r["answer"].strip().lower() == r["expected"].lower()} for r in qa])  # fmt: skip
    report.heading("Edits")
    cards = []
    for r in records["edits"]["records"][:16]:
        row = r["row"]
        source = load_image(Path("data/shapes/validation") / row["source"])
        target = load_image(Path("data/shapes/validation") / row["target"])
        from illume_eval.metrics import edit_scores
        from illume_eval.shapes import Edit

        reached, _ = edit_scores(Edit.from_dict(row), r["image"])
        cards.append(
            Card(
                [source, r["image"], target], row["instruction"], reached, "source, edit, expected"
            )
        )
    report.grid(cards)
    report.heading("All metrics")
    report.metrics({k: v for k, v in _flatten(metrics).items() if not isinstance(v, (dict, list))})
    report.heading("Training loss")
    report.curves(_loss_curves(), ylabel="train/loss")
    report.write(path)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out
