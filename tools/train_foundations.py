"""Makes ShapesWorld's shipped foundations (illume_eval.shapes.foundations): the `shapes-cells`
encoder, the stand-in for the paper's pretrained SigLIP, trained with recipes/shapes/encoder.yaml on
its own ShapesWorld data (20,000 training scenes, seed 1; its validation split is the recipe's).
Its training split holds no prompt that validation reserves as unseen (the splits are by meaning,
the same for every seed), so the demo's headline stays on what nothing was trained on.

Prints the encoder's validation figures as a table, then one JSON object on the last line.
Run: .venv/bin/python tools/train_foundations.py [--workdir DIR] [--install]
(about 6 minutes on 2 CPU cores); --install copies the result into illume-eval.
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
RECIPE = ROOT / "packages/illume-trainer/src/illume_trainer/recipes/shapes/encoder.yaml"
SHIPPED = (
    "config.json",
    "model.safetensors",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--workdir", default=None, help="where data and runs go (default: a temp dir)"
    )
    parser.add_argument("--scenes", type=int, default=20000)
    parser.add_argument(
        "--install", action="store_true", help="copy into illume_eval.shapes.foundations"
    )
    args = parser.parse_args()
    from illume_core import atomic_write
    from illume_eval.shapes import ensure_dataset
    from illume_eval.shapes.foundations import FOUNDATIONS_DIR
    from illume_trainer.cli import run_stage

    work = Path(args.workdir or tempfile.mkdtemp(prefix="illume-foundations-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)
    start = time.perf_counter()
    ensure_dataset("data/shapes", args.scenes, seed=1, size=36, n_eval=200, progress=True)
    run_stage("encoder", ["--config", str(RECIPE), "--trainer.enable_progress_bar", "false"])
    seconds = time.perf_counter() - start
    logs = sorted(Path("runs/shapes/encoder/lightning_logs").glob("version_*/metrics.csv"))
    rows = [r for r in csv.DictReader(logs[-1].open()) if r.get("val/loss")]
    last = {
        k.removeprefix("val/"): round(float(v), 4)
        for k, v in rows[-1].items()
        if k.startswith("val/") and v
    }
    encoder = work / "runs/shapes/encoder/final"
    size = sum((encoder / name).stat().st_size for name in SHIPPED)
    figures = {
        "machine": f"{platform.machine()} {platform.python_version()}",
        "scenes": args.scenes,
        "seconds": round(seconds, 1),
        "bytes": size,
        **last,
    }
    if args.install:
        target = FOUNDATIONS_DIR / "encoder"
        target.mkdir(exist_ok=True)
        for name in SHIPPED:
            atomic_write(target / name, lambda tmp, name=name: shutil.copyfile(encoder / name, tmp))
        figures["installed"] = str(target)
    for key, value in figures.items():
        print(f"{key:<24}{value}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
