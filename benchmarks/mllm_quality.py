"""Trains the ShapesWorld MLLM's three stages and measures it (issue: unified MLLM).

Runs the demo's `full` profile (data, encoder, tokenizer, detokenizer, MLLM stages 1-3; finished
stages in --workdir are reused), then scores with illume-eval's exact scorers: text-to-image on
validation and held-out prompts, QA accuracy, POPE F1 (the worst negative type), editing. Also a
table of text-to-image overall against guidance scale and temperature / top-k (the paper's Fig. B).
Prints tables, then one JSON object on the last line with keys t2i_overall, t2i_heldout,
qa_accuracy, pope_f1, edit_target, edit_preserve, train_seconds.

Run: .venv/bin/python benchmarks/mllm_quality.py [--workdir DIR] [--profile full|default]
     [--scenes N] [--sweep-prompts N]  (N training scenes instead of the profile's; 0 prompts: no sweep)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
from pathlib import Path

from illume.demo import HEADLINE, PROFILES, evaluate, train
from illume.evaluate import t2i_quality
from illume.pipeline import SHAPES_SAMPLING, IllumePipeline
from illume_eval.shapes import ensure_dataset

SWEEP = [
    (1.0, 1.0, None),
    (2.0, 1.0, None),
    (3.0, 1.0, None),
    (5.0, 1.0, None),
    (3.0, 0.7, None),
    (3.0, 1.0, 20),
]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--profile", default="full", choices=sorted(PROFILES))
    parser.add_argument("--sweep-prompts", type=int, default=100)
    parser.add_argument("--scenes", type=int, default=None)
    args = parser.parse_args()
    profile = dataclasses.replace(
        PROFILES[args.profile],
        self_enhance=None,  # the three stages' figures
        scenes=args.scenes or PROFILES[args.profile].scenes,
    )
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="illume-mllm-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    os.chdir(workdir)
    ensure_dataset("data/shapes", profile.scenes, seed=0, n_eval=profile.n_eval, progress=False)
    seconds = train(profile, progress=False)  # of every stage, also those of earlier runs
    train_seconds = round(sum(v for k, v in seconds.items() if k != "self_enhance"), 1)
    pipe = IllumePipeline.from_stages(
        "runs/shapes/tokenizer/final",
        "runs/shapes/mllm/stage3/final",
        "runs/shapes/detokenizer/final",
        sampling=dataclasses.replace(SHAPES_SAMPLING),  # the demo's; the sweep sets its own
    )
    metrics, _ = evaluate(pipe, profile)

    print(f"{'guidance':>9}{'temperature':>13}{'top-k':>7}{'t2i overall':>13}")
    sweep = []
    for guidance, temperature, top_k in SWEEP if args.sweep_prompts else []:
        pipe.sampling.guidance, pipe.sampling.temperature, pipe.sampling.top_k = (
            guidance,
            temperature,
            top_k,
        )
        overall = t2i_quality(pipe, "data/shapes/validation", n=args.sweep_prompts)["summary"][
            "overall"
        ]
        sweep.append(
            {
                "guidance": guidance,
                "temperature": temperature,
                "top_k": top_k,
                "t2i_overall": overall,
            }
        )
        print(f"{guidance:>9}{temperature:>13}{top_k or '-':>7}{overall:>13.3f}")

    print(f"\n{'figure':<16}{'value':>10}")
    for key in HEADLINE:
        print(f"{key:<16}{metrics[key]:>10.4f}")
    print(f"stage seconds: {json.dumps(seconds)}")
    out = {k: metrics[k] for k in HEADLINE}
    out |= {"train_seconds": train_seconds, "stage_seconds": seconds, "t2i_by_tag": metrics["t2i"],
            "pope": metrics["pope"], "sweep": sweep, "workdir": str(workdir)}  # fmt: skip
    print(json.dumps(out))


if __name__ == "__main__":
    main()
