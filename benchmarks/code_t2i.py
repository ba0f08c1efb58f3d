"""Text to image at the level of codes: what the MLLM draws, without the detokenizer.

Each code the MLLM draws for validation's unseen prompts (illume_eval.shapes.splits) is read as
the cell content it most often stands for in 3,000 training scenes (the tokenizer's codes of
their images against the scenes' true objects), and the prompt's spec is checked on those cells
with the exact scorer's rules. It isolates the MLLM: the demo's headline (`t2i_unseen`) draws the
same codes back to pixels and detects the objects, which loses what the codec loses. Seconds,
not the minutes of the full evaluation: what the step sweeps of the MLLM stages read.

Prints one line per category, then one JSON object on its last line (macro: the mean over the
unseen categories, as the headline; variety: the share of cells that differ between a prompt's
drawings). The scoring itself is illume_eval.shapes.evaluation.code_t2i_quality.

Run: .venv/bin/python benchmarks/code_t2i.py --workdir DEMO_DIR [--mllm runs/shapes/mllm/anneal/final]
     [--images 2] [--seed 0]   (DEMO_DIR: an `illume demo` folder, or one with its data and runs)
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="a demo folder (data/shapes, runs/shapes)")
    parser.add_argument(
        "--mllm", default="runs/shapes/mllm/anneal/final", help="relative to workdir"
    )
    parser.add_argument("--images", type=int, default=2, help="drawings per prompt")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--guidance", type=float, default=1.5)
    parser.add_argument("--temperature", type=float, default=0.5)
    args = parser.parse_args()
    os.chdir(args.workdir)
    from illume.pipeline import IllumePipeline, SamplingConfig
    from illume_eval.metrics import grouped, wilson_interval
    from illume_eval.shapes.evaluation import code_contents, code_t2i_quality
    from illume_eval.shapes.splits import UNSEEN_TAGS

    data = Path("data/shapes")
    pipe = IllumePipeline.from_stages(
        "runs/shapes/tokenizer/final", args.mllm, "runs/shapes/detokenizer/final",
        sampling=SamplingConfig(guidance=args.guidance, temperature=args.temperature),
    )  # fmt: skip
    result = code_t2i_quality(
        pipe, data / "validation", code_contents(pipe.tokenizer, data / "train"), seed=args.seed,
        images_per_prompt=args.images, tags=UNSEEN_TAGS,
    )  # fmt: skip
    by_tag = grouped((r["spec"].tag, r["correct"]) for r in result["records"])
    for tag, v in by_tag.items():
        low, high = wilson_interval(sum(v), len(v))
        print(f"{tag:<12} {sum(v) / len(v):.3f}  (n {len(v)}, {low:.3f}-{high:.3f})")
    summary = {tag: sum(v) / len(v) for tag, v in by_tag.items()}
    summary["macro"] = result["summary"]["overall"]
    summary["n"] = result["drawings"]
    low, high = result["ci95"]
    summary["ci95"] = [round(low, 4), round(high, 4)]
    summary["variety"] = result["variety"]
    print(f"{'macro':<12} {summary['macro']:.3f}  (n {summary['n']}, {low:.3f}-{high:.3f})")
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items()}))


if __name__ == "__main__":
    main()
