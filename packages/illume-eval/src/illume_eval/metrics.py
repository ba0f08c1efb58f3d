"""Metrics of the paper's benchmarks, computed exactly on ShapesWorld.

- Text-to-image, GenEval-style: accuracy per tag (single_object, two_object, counting, colors,
  position, color_attr) and `overall`, the mean over the tags present (GenEval's definition).
- Understanding: accuracy per question type; POPE accuracy / precision / recall / F1 / yes-ratio
  per negative type (yes is the positive class).
- Editing: `target_reached` (the edited image shows exactly the target scene) and `preserved`
  (the fraction of objects the edit had to leave alone that are still there, same shape, colour, cell).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from .shapes.detection import detect, summary
from .shapes.edits import Edit
from .shapes.prompts import ASPECTS, TAGS, PromptSpec, SpecCheck, check_spec
from .shapes.qa import Question, normalize_answer


@dataclass
class T2IResult:
    spec: PromptSpec
    check: SpecCheck
    detected: list


def score_t2i(
    specs: Sequence[PromptSpec], images: Sequence, strict: bool = True
) -> list[T2IResult]:
    """Scores each image against its prompt spec."""
    if len(specs) != len(images):
        raise ValueError(f"{len(specs)} specs but {len(images)} images; pass one image per spec")
    results = []
    for spec, image in zip(specs, images):
        objects = detect(image)
        results.append(T2IResult(spec, check_spec(spec, objects, strict=strict), objects))
    return results


def geneval_summary(records: Iterable[tuple[str, bool]]) -> dict[str, float]:
    """(tag, correct) pairs -> accuracy per tag and `overall` (mean over tags present)."""
    by_tag: dict[str, list[bool]] = defaultdict(list)
    for tag, correct in records:
        by_tag[tag].append(bool(correct))
    out = {tag: sum(v) / len(v) for tag in TAGS if (v := by_tag.get(tag))}
    out |= {tag: sum(v) / len(v) for tag, v in by_tag.items() if tag not in TAGS}
    out["overall"] = sum(out.values()) / len(out) if out else 0.0
    return out


Z95 = 1.959963984540054


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (sensible at 0, 1 and small n)."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def macro_interval(groups: Mapping[str, Sequence[bool]], z: float = Z95) -> tuple[float, float]:
    """95% interval of a mean over groups of per-group accuracies (GenEval's overall, QA's macro):
    the normal approximation with each group's binomial variance (p(1-p)/n, and 1/(4n) where p is
    0 or 1 so that an all-right or all-wrong group still counts its sample size)."""
    groups = {k: v for k, v in groups.items() if len(v)}
    if not groups:
        return (0.0, 1.0)
    means = [sum(v) / len(v) for v in groups.values()]
    variance = (
        sum(max(p * (1 - p), 0.25 / len(v)) / len(v) for p, v in zip(means, groups.values()))
        / len(groups) ** 2
    )
    mean, half = sum(means) / len(means), z * math.sqrt(variance)
    return (max(0.0, mean - half), min(1.0, mean + half))


def mean_interval(values: Sequence[float], z: float = Z95) -> tuple[float, float]:
    """95% normal interval of a mean of values in [0, 1] (e.g. the fraction preserved per edit)."""
    n = len(values)
    if n < 2:
        return (0.0, 1.0)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = z * max(sd, 0.5 / math.sqrt(n)) / math.sqrt(n)
    return (max(0.0, mean - half), min(1.0, mean + half))


def grouped(records: Iterable[tuple[str, bool]]) -> dict[str, list[bool]]:
    """(group, correct) pairs -> {group: [correct, ...]}, for `macro_interval`."""
    out: dict[str, list[bool]] = defaultdict(list)
    for group, correct in records:
        out[group].append(bool(correct))
    return dict(out)


def t2i_summary(results: Sequence[T2IResult]) -> dict[str, float]:
    return geneval_summary((r.spec.tag, r.check.correct) for r in results)


def aspect_failures(records: Iterable[tuple[str, SpecCheck]]) -> dict[str, dict[str, float]]:
    """(tag, check) pairs, one per drawing -> per tag, the number of drawings and the fraction of them
    that fail each aspect of the assessment (Object, Counting, Color, Spatial Relation): where a
    category's misses come from, e.g. colour attribution failing on Color (colours bound to the
    wrong shapes) rather than on Object. An image can fail several aspects at once."""
    by_tag: dict[str, list[SpecCheck]] = defaultdict(list)
    for tag, check in records:
        by_tag[tag].append(check)
    order = [t for t in TAGS if t in by_tag] + sorted(t for t in by_tag if t not in TAGS)
    out = {}
    for tag in order:
        checks = by_tag[tag]
        failed = {a: sum(not c.aspects.get(a, True) for c in checks) / len(checks) for a in ASPECTS}
        out[tag] = {"drawings": len(checks)} | failed
    return out


def qa_accuracy(questions: Sequence[Question], answers: Sequence[str]) -> dict[str, float]:
    """Exact-match accuracy (after `normalize_answer`) per question type, `macro` (the mean over
    types: the headline, which no frequent type can dominate) and `overall` (over all questions)."""
    if len(questions) != len(answers):
        raise ValueError(f"{len(questions)} questions but {len(answers)} answers")
    by_type: dict[str, list[bool]] = defaultdict(list)
    for q, a in zip(questions, answers):
        by_type[q.type].append(normalize_answer(a) == normalize_answer(q.answer))
    out = {t: sum(v) / len(v) for t, v in sorted(by_type.items())}
    total = [x for v in by_type.values() for x in v]
    out["macro"] = sum(out.values()) / len(out) if out else 0.0
    out["overall"] = sum(total) / len(total) if total else 0.0
    return out


def pope_metrics(
    questions: Sequence[Question], answers: Sequence[str]
) -> dict[str, dict[str, float]]:
    """POPE figures per negative type, over the existence questions."""
    groups: dict[str, list[tuple[bool, bool]]] = defaultdict(list)
    for q, a in zip(questions, answers, strict=True):
        if q.type != "existence" or q.negative_type is None:
            continue
        groups[q.negative_type].append((q.answer == "yes", normalize_answer(a) == "yes"))
    out = {}
    for kind, pairs in sorted(groups.items()):
        tp = sum(t and p for t, p in pairs)
        fp = sum(not t and p for t, p in pairs)
        fn = sum(t and not p for t, p in pairs)
        tn = sum(not t and not p for t, p in pairs)
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        out[kind] = {
            "accuracy": (tp + tn) / len(pairs),
            "precision": precision,
            "recall": recall,
            "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
            "yes_ratio": (tp + fp) / len(pairs),
            "n": float(len(pairs)),
        }
    return out


def edit_scores(edit: Edit, image) -> tuple[bool, float]:
    """(target reached, fraction of untouched objects preserved) for one edited image."""
    found = set(summary(detect(image)))
    reached = sorted(found) == edit.target.summary()
    keep = [(o.shape, o.color, o.row, o.col) for o in edit.untouched()]
    preserved = sum(k in found for k in keep) / len(keep) if keep else 1.0
    return reached, preserved


def edit_metrics(edits: Sequence[Edit], images: Sequence) -> dict[str, float]:
    if len(edits) != len(images):
        raise ValueError(f"{len(edits)} edits but {len(images)} images")
    pairs = [edit_scores(e, im) for e, im in zip(edits, images)]
    by_kind: dict[str, list[bool]] = defaultdict(list)
    for e, (reached, _) in zip(edits, pairs):
        by_kind[e.kind].append(reached)
    out = {
        "target_reached": sum(r for r, _ in pairs) / len(pairs) if pairs else 0.0,
        "preserved": sum(p for _, p in pairs) / len(pairs) if pairs else 0.0,
    }
    out |= {f"target_reached_{k}": sum(v) / len(v) for k, v in sorted(by_kind.items())}
    return out


#: Two-sided 95% quantiles of Student's t by degrees of freedom (beyond 30: the normal's).
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
       10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042}  # fmt: skip


def t95(df: int) -> float:
    """The two-sided 95% quantile of Student's t with `df` degrees of freedom (the table's next
    lower entry between its rows: slightly wide, never narrow)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be at least 1, got {df}")
    if df > 30:
        return Z95
    return T95[max(k for k in T95 if k <= df)]


@dataclass(frozen=True)
class PairedDifference:
    """Arm minus control over paired units (training seeds), with its 95% t-interval and what it
    says about the claim that the arm is no lower than the control less `margin` (margin 0: the
    arm is higher; margin 0.05: it costs at most 0.05, a claim of no harm)."""

    mean: float
    sd: float
    low: float
    high: float
    n: int
    margin: float
    verdict: str
    """"reproduced" (the interval lies above -margin), "not reproduced" (at or below it) or
    "inconclusive" (it holds -margin)."""
    units_to_settle: int | None
    """Where inconclusive, about how many paired units an interval of this spread needs to exclude
    -margin at this mean difference (None: the mean lies on -margin, or there is no spread)."""

    def describe(self) -> str:
        text = f"{self.mean:+.3f} (95% {self.low:+.3f} to {self.high:+.3f}, n {self.n})"
        text += (
            f" against {-self.margin:+.2f}: {self.verdict}" if self.margin else f": {self.verdict}"
        )
        if self.verdict == "inconclusive" and self.units_to_settle:
            text += f", about {self.units_to_settle} seeds would settle a difference this size"
        elif self.verdict == "inconclusive":
            text += ", more seeds than 1,000 would be needed"
        return text


def paired_difference(
    arm: Sequence[float], control: Sequence[float], margin: float = 0.0
) -> PairedDifference:
    """The paired difference `arm - control` unit by unit (e.g. per training seed, each a mean over
    sampling seeds), with a t-interval: the units, not the drawings, are what varies between runs
    of a training recipe, so the drawings' binomial interval would claim far more than is known.
    The verdict tests `arm - control > -margin` (see PairedDifference)."""
    if len(arm) != len(control) or len(arm) < 2:
        raise ValueError(
            f"a paired difference needs two or more paired units, got {len(arm)} and {len(control)}"
        )
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    diffs = [a - c for a, c in zip(arm, control, strict=True)]
    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = t95(n - 1) * sd / math.sqrt(n)
    low, high = mean - half, mean + half
    if low > -margin:
        verdict = "reproduced"
    elif high <= -margin:
        verdict = "not reproduced"
    else:
        verdict = "inconclusive"
    settle, distance = None, abs(mean + margin)
    if verdict == "inconclusive" and distance > 0 and sd > 0:
        settle = next(
            (k for k in range(n + 1, 1001) if t95(k - 1) * sd / math.sqrt(k) < distance), None
        )
    return PairedDifference(mean, sd, low, high, n, margin, verdict, settle)
