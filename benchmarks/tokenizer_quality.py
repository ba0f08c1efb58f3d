"""Trains the ShapesWorld tokenizer from nothing and prints its quality (issue: semantic vision tokenizer).

Steps: write ShapesWorld data; pretrain the `shapes` SigLIP encoder (sigmoid image-text loss);
measure image-to-caption retrieval; train the tokenizer (quantizer + feature decoder) on the
frozen encoder; measure cos(x, x_rec), codebook usage and perplexity on validation images, and how
local the codes are (the share that a recolour changes inside and outside the object's cell); on
a grid of one code per cell, the code-level ceiling (`code_ceiling`: the unseen prompts' and the
held-out compositions' own images read back from their codes, no detokenizer); for
a patch-local tokenizer (layer 0), what its codes alone keep: each drawn as the mean of its
training patches and read by the exact scorer (scene recovery, and text-to-image with each image
scored on its own caption), no detokenizer needed.
Prints a table, then one JSON object on the last line with keys cosine, code_usage, perplexity,
retrieval_top1, code_change_inside, code_change_outside, code_ceiling_unseen,
code_ceiling_heldout (3x3 grids), patch_decode_recovery, patch_decode_t2i,
patch_decode_by_category (layer 0 only), train_seconds.

Run: .venv/bin/python benchmarks/tokenizer_quality.py [--workdir DIR] [--encoder-steps N] [--tokenizer-steps N]
     [--encoder DIR] [--tokenizer-args ARGS]  (ARGS: more LightningCLI arguments for the tokenizer
     stage, shell-quoted, e.g. '--model.feature_layer 0 --model.overrides "{codebook_size: 256}"')
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import tempfile
import time
from pathlib import Path

from illume_core import read_json
from illume_eval.shapes import UNSEEN_TAGS, ensure_dataset
from illume_eval.shapes.audit import split_scenes
from illume_eval.shapes.codec import (
    code_locality,
    encoder_retrieval,
    mean_patch_decode,
    tokenizer_quality,
)
from illume_eval.shapes.evaluation import code_ceiling, code_contents
from illume_tokenizer import SemanticTokenizer
from illume_trainer.cli import run_stage


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workdir", default=None, help="where data and runs go (default: a temporary folder)"
    )
    parser.add_argument(
        "--scenes",
        type=int,
        default=None,
        help="training scenes of the data made in the work folder (default 4000; a folder that "
        "holds a dataset already is used as it is)",
    )
    parser.add_argument("--encoder-steps", type=int, default=2000)
    parser.add_argument("--tokenizer-steps", type=int, default=2500)
    parser.add_argument(
        "--encoder", default=None, help="skip encoder pretraining: use this encoder directory"
    )
    parser.add_argument(
        "--tokenizer-args", default="", help="more LightningCLI arguments for the tokenizer stage"
    )


def enter_workdir(args, prefix: str) -> dict:
    """Changes into the work folder (made if needed), writes ShapesWorld data there if missing."""
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix=prefix))
    workdir.mkdir(parents=True, exist_ok=True)
    os.chdir(workdir)
    info = Path("data/shapes/info.json")
    if info.is_file():  # e.g. a demo's folder: its stages trained on this data, which stays
        held = read_json(info)["counts"]["train"]["scenes"]
        if args.scenes not in (None, held):
            raise SystemExit(
                f"{workdir} holds a ShapesWorld dataset of {held} training scenes, which "
                f"--scenes {args.scenes} would rewrite: drop --scenes or use another --workdir"
            )
    else:
        ensure_dataset("data/shapes", args.scenes or 4000, seed=0, progress=False)
    return {"workdir": str(workdir)}


def train_tokenizer(args, figures: dict) -> str:
    """Encoder (unless given) and tokenizer stages of the shipped recipes; returns the tokenizer
    directory and adds retrieval and training times to `figures`."""
    quiet = ["--trainer.enable_progress_bar", "false"]
    encoder = args.encoder
    if encoder is None:
        start = time.perf_counter()
        run_stage(
            "encoder",
            [
                "--config",
                "recipes/shapes/encoder.yaml",
                "--trainer.max_steps",
                str(args.encoder_steps),
                *quiet,
            ],
        )
        figures["encoder_train_seconds"] = round(time.perf_counter() - start, 1)
        encoder = "runs/shapes/encoder/final"
    figures["retrieval_top1"] = encoder_retrieval(encoder, "data/shapes/validation", n=100)

    start = time.perf_counter()
    run_stage(
        "tokenizer",
        [
            "--config",
            "recipes/shapes/tokenizer.yaml",
            "--model.encoder",
            encoder,
            "--trainer.max_steps",
            str(args.tokenizer_steps),
            *quiet,
            *shlex.split(args.tokenizer_args),
        ],
    )
    figures["tokenizer_train_seconds"] = round(time.perf_counter() - start, 1)
    return "runs/shapes/tokenizer/final"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    args = parser.parse_args()
    figures = enter_workdir(args, "illume-tokenizer-bench-")
    tokenizer = SemanticTokenizer.from_pretrained(train_tokenizer(args, figures))
    figures |= tokenizer_quality(tokenizer, "data/shapes/validation")
    figures |= code_locality(tokenizer, "data/shapes/validation")
    if tokenizer.grid == (3, 3):  # one code per cell: the codes read back as the cells' contents
        contents = code_contents(tokenizer, "data/shapes/train")
        for key, split, tags in (
            ("unseen", "validation", UNSEEN_TAGS),
            ("heldout", "heldout", None),
        ):
            ceiling = code_ceiling(tokenizer, f"data/shapes/{split}", contents, tags=tags)
            figures[f"code_ceiling_{key}"] = ceiling["summary"]["overall"]
    # patch-local codes: what they keep, with no detokenizer
    if tokenizer.config.feature_layer == 0:
        # 400 validation scenes, or all a smaller split holds (a demo's data has 200)
        scenes = len(split_scenes("data/shapes/validation"))
        decoded = mean_patch_decode(
            tokenizer, "data/shapes/train", "data/shapes/validation", n=min(400, scenes)
        )
        figures["patch_decode_recovery"] = decoded["scene_recovery"]
        figures["patch_decode_t2i"] = decoded["t2i"]["overall"]
        figures["patch_decode_by_category"] = decoded["t2i"]
    figures["train_seconds"] = round(
        figures.get("encoder_train_seconds", 0.0) + figures["tokenizer_train_seconds"], 1
    )

    print(f"{'figure':<26}{'value':>12}")
    for key in (
        "retrieval_top1",
        "cosine",
        "code_usage",
        "perplexity",
        "code_change_inside",
        "code_change_outside",
        "code_ceiling_unseen",
        "code_ceiling_heldout",
        "patch_decode_recovery",
        "patch_decode_t2i",
        "encoder_train_seconds",
        "tokenizer_train_seconds",
        "train_seconds",
    ):
        if key in figures:
            print(f"{key:<26}{figures[key]:>12.4f}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
