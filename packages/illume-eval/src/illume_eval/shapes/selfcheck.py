"""How far the exact scorer can be trusted: accuracy on renders, under degradation, false
acceptance of wrong prompts, and false acceptance of malformed drawings.

The ground truth is symbolic: whether a scene satisfies a prompt spec is decided from the scene's
own objects (`check_spec(spec, scene.objects)`); the scorer must reach the same verdict from pixels.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from ..assessment import oracle_assessment, parse_assessment
from ..metrics import geneval_summary
from .degrade import degrade
from .detection import detect, summary
from .malformed import MALFORMED_KINDS, malformed_render
from .prompts import check_spec, sample_prompt
from .world import render


def scorer_accuracy(
    n: int, size: int = 32, seed: int = 0, degradation: str | None = None
) -> dict[str, float]:
    """GenEval-style accuracy of the scorer on n validation scenes scored against their own prompts,
    plus `scene_recovery` (every object found with the right shape, colour and cell)."""
    rng = np.random.default_rng(seed)
    records, recovered = [], 0
    for _ in range(n):
        scene, spec = sample_prompt(rng, "validation")
        image = render(scene, size)
        if degradation:
            image = degrade(image, degradation, rng)
        objects = detect(image)
        records.append((spec.tag, check_spec(spec, objects).correct))
        recovered += summary(objects) == scene.summary()
    return geneval_summary(records) | {"scene_recovery": recovered / n}


def false_acceptance(n: int, size: int = 32, seed: int = 0) -> dict[str, float]:
    """Per tag: how often the scorer accepts an image for a random prompt that its scene does not satisfy."""
    rng = np.random.default_rng(seed)
    accepted: dict[str, list[bool]] = defaultdict(list)
    for _ in range(n):
        scene, _ = sample_prompt(rng, "validation")
        while True:
            _, other = sample_prompt(rng, "validation")
            if not check_spec(other, scene.objects).correct:
                break
        accepted[other.tag].append(check_spec(other, detect(render(scene, size))).correct)
    return {tag: sum(v) / len(v) for tag, v in sorted(accepted.items())}


def malformed_acceptance(n: int, size: int = 32, seed: int = 0) -> dict[str, float]:
    """Per malformed kind (`malformed.MALFORMED_KINDS`) and `overall`: how often the scorer reports
    a valid object (a ShapesWorld shape in a palette colour) in the cell where one object of a
    validation scene was replaced by a malformed drawing; n probes per kind. Should be near 0."""
    rng = np.random.default_rng(seed)
    out = {}
    for kind in MALFORMED_KINDS:
        accepted = 0
        for _ in range(n):
            scene, _ = sample_prompt(rng, "validation")
            victim = scene.objects[int(rng.integers(len(scene.objects)))]
            image = malformed_render(scene, victim, kind, size, rng)
            accepted += any(o.valid and o.cell == victim.cell for o in detect(image))
        out[kind] = accepted / n
    out["overall"] = sum(out.values()) / len(out)
    return out


def assessor_agreement(n: int, size: int = 32, seed: int = 0) -> dict[str, float]:
    """The oracle assessor on n (prompt, image) pairs, half matching and half random prompts:
    agreement of its verdict with the scorer's and with the symbolic truth; parse failures."""
    rng = np.random.default_rng(seed)
    with_scorer = with_truth = parsed = 0
    for i in range(n):
        scene, spec = sample_prompt(rng, "validation")
        if i % 2:
            _, spec = sample_prompt(rng, "validation")
        objects = detect(render(scene, size))
        assessment = parse_assessment(oracle_assessment(spec, objects=objects).to_json())
        parsed += 1
        with_scorer += assessment.passed == check_spec(spec, objects).correct
        with_truth += assessment.passed == check_spec(spec, scene.objects).correct
    return {
        "agree_with_scorer": with_scorer / n,
        "agree_with_truth": with_truth / n,
        "parsed": parsed / n,
    }
