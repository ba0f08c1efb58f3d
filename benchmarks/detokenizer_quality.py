"""Trains the ShapesWorld detokenizer and measures how well it draws (issue: diffusion detokenizer).

Steps: ShapesWorld data; the tokenizer (trained here from nothing as in tokenizer_quality.py, or
given with --tokenizer); the detokenizer stage of the shipped recipe; then, on validation images,
image -> codes -> features -> detokenizer -> image, scored by illume-eval's exact scorer (the whole
scene recovered: every object with its shape, colour and cell) and by PSNR, for DPM-Solver++ at
10, 20 and 50 steps and DDIM at 50. A last row conditions DPM-Solver++ 20 on the encoder's own
features instead of their reconstruction from codes: the gap between the two is what quantization
costs, the rest is the U-Net's. Each image is also scored on its own caption (column t2i, by
category in the JSON): the text-to-image figure the codec allows an MLLM that draws exactly the
tokenizer's codes. Prints a table, then one JSON object on the last line with keys
scene_recovery (by sampler and steps, and the best), psnr, train_seconds.

`--samplers dpm++:5,dpm++:10,...` scores other samplers and step counts; the line before the JSON
names the fewest steps whose recovery is within 0.01 of the best (what a pipeline's
`SamplingConfig.steps` should be), and the JSON carries it as `fewest_steps`.

Run: .venv/bin/python benchmarks/detokenizer_quality.py [--workdir DIR] [--tokenizer DIR] [--steps N]
[--overrides JSON] [--detokenizer DIR (evaluate this trained detokenizer, train nothing)]
[--samplers LIST] [--guidance G]
"""

from __future__ import annotations

import argparse
import functools
import json
import time

from tokenizer_quality import add_arguments, enter_workdir, train_tokenizer

from illume_detokenizer import DetokenizerPipeline
from illume_eval.shapes.codec import detokenizer_quality
from illume_tokenizer import SemanticTokenizer
from illume_trainer.cli import run_stage

SAMPLERS = (("dpm++", 10), ("dpm++", 20), ("dpm++", 50), ("ddim", 50))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    parser.add_argument("--tokenizer", default=None, help="use this trained tokenizer directory")
    parser.add_argument("--steps", type=int, default=None, help="detokenizer training steps")
    parser.add_argument("--images", type=int, default=200, help="validation images scored")
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument(
        "--detokenizer", default=None, help="evaluate this trained detokenizer (needs --tokenizer)"
    )
    parser.add_argument(
        "--samplers",
        type=parse_samplers,
        default=SAMPLERS,
        help="comma-separated SAMPLER:STEPS (dpm++, ddim; default: "
        + ",".join(f"{a}:{b}" for a, b in SAMPLERS)
        + ")",
    )
    parser.add_argument(
        "--overrides",
        default=None,
        help="DetokenizerConfig fields over the preset, as JSON (a design probe), e.g. "
        "'{\"block_out_channels\": [32, 64, 96, 128]}'",
    )
    args = parser.parse_args()
    if args.detokenizer and not args.tokenizer:
        parser.error("--detokenizer needs the --tokenizer its features came from")
    figures = enter_workdir(args, "illume-detokenizer-bench-")
    tokenizer_dir = args.tokenizer or train_tokenizer(args, figures)
    detokenizer_dir = args.detokenizer or train_detokenizer(args, tokenizer_dir, figures)

    tokenizer = SemanticTokenizer.from_pretrained(tokenizer_dir)
    pipe = DetokenizerPipeline.from_pretrained(detokenizer_dir)
    pipe.set_progress_bar_config(disable=True)
    evaluate = functools.partial(
        detokenizer_quality,
        tokenizer,
        pipe,
        "data/shapes/validation",
        n=args.images,
        guidance=args.guidance,
    )
    quality = evaluate(samplers=args.samplers)
    figures["scene_recovery"] = quality["scene_recovery"]
    figures["psnr"] = quality["psnr"]
    figures["by_sampler"] = quality["by_sampler"]
    unquantized = evaluate(samplers=(("dpm++", 20),), condition="encoder")["by_sampler"]
    figures["unquantized"] = unquantized["dpm++@20"]

    print(
        f"{'sampler':<10}{'steps':>6}{'scene recovery':>16}{'t2i':>7}{'PSNR dB':>10}{'s / image':>11}"
        "   objects wrong: shape / colour / missing / extra"
    )
    rows = [*quality["by_sampler"].items(), ("dpm++@20", figures["unquantized"])]
    # t2i: each image's own codes drawn and scored on its caption, what an MLLM that drew exactly
    # the tokenizer's codes would score (the codec's ceiling for the MLLM issue's text-to-image)
    for n, (key, row) in enumerate(rows):
        sampler, steps = key.split("@")
        note = "  (encoder features, no quantization)" if n == len(rows) - 1 else ""
        e = row["errors"]
        print(
            f"{sampler:<10}{steps:>6}{row['scene_recovery']:>16.3f}{row['t2i']['overall']:>7.3f}{row['psnr']:>10.2f}"
            f"{row['seconds_per_image']:>11.4f}"
            f"   {e['shape']} / {e['colour']} / {e['missing']} / {e['extra']} of {e['objects']}{note}"
        )
    if "train_seconds" in figures:
        print(
            f"trained in {figures['train_seconds']:.0f} s (detokenizer {figures['detokenizer_train_seconds']:.0f} s)"
        )
    best = max(row["scene_recovery"] for row in figures["by_sampler"].values())
    enough = [
        (int(key.split("@")[1]), key)
        for key, row in figures["by_sampler"].items()
        if row["scene_recovery"] >= best - 0.01
    ]
    steps, key = min(enough)
    figures["fewest_steps"] = {"sampler": key.split("@")[0], "steps": steps}
    print(
        f"fewest steps within 0.01 of the best recovery ({best:.3f} on {args.images} images): "
        f"{key} ({figures['by_sampler'][key]['scene_recovery']:.3f})"
    )
    for row in (*figures["by_sampler"].values(), figures["unquantized"]):
        row.pop("t2i_verdicts", None)  # one per image: the summaries say it on the JSON line
    print(json.dumps(figures))


def parse_samplers(text: str) -> tuple[tuple[str, int], ...]:
    """ "dpm++:10,ddim:50" -> (("dpm++", 10), ("ddim", 50))."""
    samplers = []
    for item in text.split(","):
        name, _, steps = item.strip().partition(":")
        if name not in ("dpm++", "ddim") or not steps.isdigit() or int(steps) < 1:
            raise argparse.ArgumentTypeError(
                f"{item!r}: expected SAMPLER:STEPS with SAMPLER dpm++ or ddim, e.g. dpm++:10"
            )
        samplers.append((name, int(steps)))
    return tuple(samplers)


def train_detokenizer(args, tokenizer_dir: str, figures: dict) -> str:
    start = time.perf_counter()
    extra = ["--trainer.max_steps", str(args.steps)] if args.steps else []
    if args.overrides:
        extra += ["--model.overrides", args.overrides]
        figures["overrides"] = json.loads(args.overrides)
    run_stage(
        "detokenizer",
        [
            "--config",
            "recipes/shapes/detokenizer.yaml",
            "--model.tokenizer",
            tokenizer_dir,
            "--trainer.enable_progress_bar",
            "false",
            *extra,
        ],
    )
    figures["detokenizer_train_seconds"] = round(time.perf_counter() - start, 1)
    figures["train_seconds"] = round(
        sum(
            figures.get(k, 0.0)
            for k in (
                "encoder_train_seconds",
                "tokenizer_train_seconds",
                "detokenizer_train_seconds",
            )
        ),
        1,
    )

    return "runs/shapes/detokenizer/final"


if __name__ == "__main__":
    main()
