"""The demo's `report.html`: the headline figures with their intervals, lookup baselines and codec
ceilings, then pictures (reconstructions, drawings with the scorer's verdict, answers, edits), the
metrics table and the loss curves of every stage."""

from __future__ import annotations

import csv
from pathlib import Path

from illume_core import load_image
from illume_eval.metrics import edit_scores
from illume_eval.report import Card, HtmlReport
from illume_eval.shapes import Edit

#: The headline figures, first in metrics.json, the report and benchmarks. Each is measured on
#: what the model was never trained on (illume_eval.shapes.splits): text to image on validation's
#: unseen prompts, beside the lookup baseline (a training image drawn for the same spec: 0 there by
#: construction) and the codec ceiling (the prompts' own images through tokenizer and
#: detokenizer); the held-out compositions; questions and edits not asked of the same layout in
#: training, QA as the mean over question types, POPE's F1 of its worst negative type.
HEADLINE = (
    "t2i_unseen",
    "t2i_lookup_baseline",
    "codec_ceiling",
    "t2i_heldout_compositions",
    "qa_macro",
    "pope_f1_worst",
    "edit_target",
    "edit_preserve",
)


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


def _verdict_note(record: dict) -> str:
    check = record["check"]
    return "; ".join(f"{a}: {'ok' if ok else check.analyses[a]}" for a, ok in check.aspects.items())


def target_verdict(value: float, ci: list[float] | None, target: float) -> str:
    """ "met" when the whole 95% interval lies at or above the target, "missed" when it lies below,
    else "inconclusive" (the sample cannot tell); a figure without an interval by its value."""
    low, high = ci if ci else (value, value)
    if low >= target:
        return "met"
    if high < target:
        return "missed"
    return "inconclusive"


def _headline_rows(metrics: dict) -> list[dict]:
    beside = {
        "t2i_unseen": "unseen",
        "t2i_seen": "seen",
        "t2i_heldout_compositions": "heldout_compositions",
    }
    rows = []
    for key in (*HEADLINE, "t2i_seen", "qa_seen_macro"):
        interval = metrics["intervals"].get(key, {})
        ci = interval.get("ci95")
        row = {
            "figure": key,
            "value": round(metrics[key], 3),
            "n": interval.get("n", ""),
            "95% interval": f"{ci[0]:.3f} - {ci[1]:.3f}" if ci else "-",
        }
        if key in beside:
            t2i = metrics["t2i"][beside[key]]
            row["lookup baseline"] = round(t2i["lookup_baseline"]["overall"], 3)
            row["codec ceiling"] = round(t2i["codec_ceiling"]["overall"], 3)
        target = (metrics.get("targets") or {}).get(key)
        if target is not None:
            row["target"] = f">= {target:.2f}"
            row["verdict"] = target_verdict(metrics[key], ci, target)
        rows.append(row)
    return rows


_T2I_SECTIONS = (
    (
        "unseen",
        "Text to image, unseen prompts (specs never asked to draw in training: the headline)",
    ),
    (
        "seen",
        "Text to image, seen prompts (categories whose whole space is trained on; reported apart)",
    ),
    (
        "heldout_compositions",
        "Text to image, held-out compositions (seen and read in training, never drawn)",
    ),
)


def write_report(path: str, metrics: dict, records: dict, pipe) -> None:
    report = HtmlReport("ILLUME on ShapesWorld")
    report.paragraph(
        f"Chain {metrics['chain']}: trained and evaluated in {metrics['total_seconds']:.0f} s. "
        "Every verdict is illume-eval's exact scorer (green: the image shows exactly what was asked; "
        "a malformed shape or an off-palette colour is wrong). Every figure is measured on what the "
        "model was never trained on; beside each drawing figure, the lookup baseline (a training "
        "image drawn for the same spec, or nothing) and the codec ceiling (the prompts' own images "
        "through tokenizer and detokenizer) on the same prompts."
    )
    report.heading("Headline figures")
    rows = _headline_rows(metrics)
    report.table(rows, list(dict.fromkeys(k for row in rows for k in row)))
    codec = records["baselines"]["unseen"]
    # one record a prompt (a prompt's drawings are together), in the baselines' prompt order
    step = max(1, metrics["chain_settings"]["evaluation"]["t2i_images"])
    prompts = records["t2i"]["unseen"]["records"][::step]
    report.heading("Codec ceiling: the unseen prompts' own images through codes and detokenizer")
    report.grid(
        [
            Card(
                [original, drawn],
                r["spec"].prompt,
                correct,
                "original, then image -> codes -> detokenizer",
            )
            for r, original, drawn, correct in zip(
                prompts, codec["originals"], codec["images"], codec["codec_correct"], strict=True
            )
        ][:16]
    )
    for key, title in _T2I_SECTIONS:
        figures = metrics["t2i"][key]
        report.heading(title)
        report.paragraph(
            f"{figures['prompts']} prompts, {figures['drawings']} drawings: model "
            f"{figures['model']['overall']:.3f}, lookup baseline {figures['lookup_baseline']['overall']:.3f}, "
            f"codec ceiling {figures['codec_ceiling']['overall']:.3f} (scenes recovered "
            f"{figures['codec_scene_recovery']:.3f})."
        )
        report.table(
            [
                {
                    "category": tag,
                    "model": round(v, 3),
                    "lookup baseline": round(figures["lookup_baseline"].get(tag, float("nan")), 3),
                    "codec ceiling": round(figures["codec_ceiling"].get(tag, float("nan")), 3),
                }
                for tag, v in figures["model"].items()
            ]
        )
        report.grid(
            [
                Card([r["image"]], r["spec"].prompt, r["correct"], _verdict_note(r))
                for r in records["t2i"][key]["records"][:24]
            ]
        )
        if key == "unseen":
            report.paragraph(
                "Where the misses come from: per category, the fraction of drawings "
                "that fail each aspect of the assessment (one drawing can fail several)."
            )
            report.table(
                [
                    {"category": tag}
                    | {a: round(v, 3) if isinstance(v, float) else v for a, v in row.items()}
                    for tag, row in metrics["t2i_failed_aspects"].items()
                ]
            )
    report.heading(
        "Understanding: accuracy by question type (questions not asked of the same layout in training)"
    )
    report.table(
        [
            {
                "question type": t,
                "unseen": round(metrics["qa"]["unseen"].get(t, float("nan")), 3),
                "n": metrics["qa_questions"]["unseen"].get(t, 0),
                "seen": round(metrics["qa"]["seen"].get(t, float("nan")), 3),
                "n seen": metrics["qa_questions"]["seen"].get(t, 0),
            }
            for t in metrics["qa_questions"]["unseen"]
        ]
    )
    report.heading("Understanding: answers")
    qa = records["qa"]["records"][:40]
    report.table(
        [
            {
                "image": r["image"],
                "type": r["type"],
                "question": r["question"],
                "answer": r["answer"],
                "expected": r["expected"],
                "right": r["right"],
            }
            for r in qa
        ]
    )
    report.heading("Edits (not asked of the same layout in training)")
    cards = []
    for r in records["edits"]["records"][:16]:
        row = r["row"]
        source = load_image(Path("data/shapes/validation") / row["source"])
        target = load_image(Path("data/shapes/validation") / row["target"])
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
