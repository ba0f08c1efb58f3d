"""Makes ShapesWorld's shipped foundations (illume_eval.shapes.foundations), the stand-ins for what
the paper starts from: the `shapes-cells` encoder (SigLIP; recipes/shapes/encoder.yaml) and the
`shapes` language model (Vicuna; recipes/shapes/language_model.yaml, text only: ShapesWorld's
conversations with every image written as its layout in words), each trained on its own
ShapesWorld data (20,000 training scenes, seed 1; the demo's data is seed 0). That training split
holds no prompt that validation reserves as unseen and no drawing request for a held-out
composition (the splits are by meaning, the same for every seed), so the demo's headline stays on
what nothing was trained on.

Prints each foundation's validation figures as a table, then one JSON object on the last line.
Run: .venv/bin/python tools/train_foundations.py [--workdir DIR] [--only NAME] [--install]
(about 6 minutes for the encoder and 20 for the language model on 2 CPU cores); --install copies
the results into illume-eval.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "packages/illume-trainer/src/illume_trainer/recipes/shapes"
#: foundation -> (illume-train stage, recipe, the files shipped)
FOUNDATIONS = {
    "encoder": (
        "encoder",
        RECIPES / "encoder.yaml",
        ("config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json",
         "tokenizer_config.json"),
    ),
    "language_model": (
        "language_model",
        RECIPES / "language_model.yaml",
        ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
         "tokenizer_config.json"),
    ),
}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--workdir", default=None, help="where data and runs go (default: a temp dir)"
    )
    parser.add_argument("--scenes", type=int, default=20000)
    parser.add_argument(
        "--only", choices=sorted(FOUNDATIONS), action="append", help="make only this one"
    )
    parser.add_argument(
        "--install", action="store_true", help="copy into illume_eval.shapes.foundations"
    )
    args = parser.parse_args()
    from illume_core import atomic_write
    from illume_eval.shapes import ensure_dataset
    from illume_eval.shapes.foundations import FOUNDATIONS_DIR
    from illume_eval.shapes.language import ensure_language_corpus
    from illume_trainer.cli import run_stage

    work = Path(args.workdir or tempfile.mkdtemp(prefix="illume-foundations-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)
    start = time.perf_counter()
    ensure_dataset("data/shapes", args.scenes, seed=1, size=36, n_eval=200, progress=True)
    data_seconds = time.perf_counter() - start
    figures = {
        "machine": f"{platform.machine()} {platform.python_version()}",
        "scenes": args.scenes,
    }
    for name in args.only or sorted(FOUNDATIONS):
        stage, recipe, shipped = FOUNDATIONS[name]
        start = time.perf_counter()
        if stage == "language_model":
            ensure_language_corpus("data/shapes")
        run_stage(stage, ["--config", str(recipe), "--trainer.enable_progress_bar", "false"])
        seconds = time.perf_counter() - start
        logs = sorted(Path(f"runs/shapes/{stage}/lightning_logs").glob("version_*/metrics.csv"))
        rows = [r for r in csv.DictReader(logs[-1].open()) if r.get("val/loss")]
        for key, value in rows[-1].items():
            if key.startswith("val/") and value:
                figures[f"{name}/{key.removeprefix('val/')}"] = round(float(value), 4)
        result = work / f"runs/shapes/{stage}/final"
        figures[f"{name}/seconds"] = round(seconds, 1)
        figures[f"{name}/bytes"] = sum((result / f).stat().st_size for f in shipped)
        if args.install:
            target = FOUNDATIONS_DIR / name
            target.mkdir(exist_ok=True)
            for f in shipped:
                atomic_write(target / f, lambda tmp, src=result / f: shutil.copyfile(src, tmp))
            figures[f"{name}/installed"] = str(target)
    figures["data_seconds"] = round(data_seconds, 1)
    for key, value in figures.items():
        print(f"{key:<32}{value}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
