"""Text to image at the level of codes: what the MLLM draws, without the detokenizer.

Each code the MLLM draws for validation's unseen prompts (illume_eval.shapes.splits) is read as
the cell content it most often stands for in 3,000 training scenes (the tokenizer's codes of
their images against the scenes' true objects), and the prompt's spec is checked on those cells
with the exact scorer's rules. It isolates the MLLM: the demo's headline (`t2i_unseen`) draws the
same codes back to pixels and detects the objects, which loses what the codec loses. Seconds,
not the minutes of the full evaluation: what the step sweeps of the MLLM stages read.

Prints one line per category, then one JSON object on its last line (macro: the mean over the
unseen categories, as the headline).

Run: .venv/bin/python benchmarks/code_t2i.py --workdir DEMO_DIR [--mllm runs/shapes/mllm/anneal/final]
     [--images 2] [--seed 0]   (DEMO_DIR: an `illume demo` folder, or one with its data and runs)
"""

from __future__ import annotations

import argparse
import collections
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from illume_core import read_jsonl


@dataclass
class Cell:
    shape: str
    color: str
    row: int
    col: int


def code_contents(pipe, data: Path, scenes: int = 3000) -> dict[int, tuple[str, str] | None]:
    """{code: the (shape, colour) it most often holds in training scenes, None for empty}."""
    rows = read_jsonl(data / "train" / "scenes.jsonl")[:scenes]
    counts: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
    for start in range(0, len(rows), 200):
        chunk = rows[start : start + 200]
        images = [Image.open(data / "train" / r["image"]).convert("RGB") for r in chunk]
        with torch.no_grad():
            codes = pipe.image_codes(images)
        for row, grid in zip(chunk, codes, strict=True):
            cells = {
                (o["row"], o["col"]): (o["shape"], o["color"]) for o in row["scene"]["objects"]
            }
            for i in range(grid.shape[0]):
                for j in range(grid.shape[1]):
                    counts[int(grid[i, j])][cells.get((i, j))] += 1
    return {code: c.most_common(1)[0][0] for code, c in counts.items()}


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
    from illume_eval.metrics import macro_interval, wilson_interval
    from illume_eval.shapes.evaluation import t2i_prompts
    from illume_eval.shapes.prompts import check_spec
    from illume_eval.shapes.splits import UNSEEN_TAGS

    data = Path("data/shapes")
    pipe = IllumePipeline.from_stages(
        "runs/shapes/tokenizer/final", args.mllm, "runs/shapes/detokenizer/final",
        sampling=SamplingConfig(guidance=args.guidance, temperature=args.temperature),
    )  # fmt: skip
    grid = tuple(pipe.processor.config.image_grid)
    if grid != (3, 3):
        raise SystemExit(f"code-level scoring needs one code per cell (3x3 codes), not {grid}")
    contents = code_contents(pipe, data)
    specs = [spec for _, spec in t2i_prompts(data / "validation", tags=UNSEEN_TAGS)]
    generator = torch.Generator().manual_seed(args.seed)
    verdicts: dict[str, list[bool]] = collections.defaultdict(list)
    for start in range(0, len(specs), 16):
        drawn = [s for s in specs[start : start + 16] for _ in range(args.images)]
        conversations = [pipe.processor.t2i_messages(s.prompt) for s in drawn]
        unconditional = [pipe.processor.t2i_messages("")] * len(drawn)
        with torch.no_grad():
            codes = pipe.draw_codes(conversations, unconditional, generator)
        for spec, grid in zip(drawn, codes, strict=True):
            cells = [Cell(*contents[int(grid[i, j])], i, j) for i in range(3) for j in range(3)
                     if contents.get(int(grid[i, j]))]  # fmt: skip
            verdicts[spec.tag].append(check_spec(spec, cells).correct)
    summary = {tag: sum(v) / len(v) for tag, v in verdicts.items()}
    for tag, v in verdicts.items():
        low, high = wilson_interval(sum(v), len(v))
        print(f"{tag:<12} {summary[tag]:.3f}  (n {len(v)}, {low:.3f}-{high:.3f})")
    summary["macro"] = sum(summary[t] for t in verdicts) / len(verdicts)
    summary["n"] = sum(len(v) for v in verdicts.values())
    low, high = macro_interval(verdicts)
    summary["ci95"] = [round(low, 4), round(high, 4)]
    print(f"{'macro':<12} {summary['macro']:.3f}  (n {summary['n']}, {low:.3f}-{high:.3f})")
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items()}))


if __name__ == "__main__":
    main()
