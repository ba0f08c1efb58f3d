"""The codec ceiling of a demo chain's tokenizer and detokenizer, per evaluation split.

Each split's real images go through the tokenizer's codes and the detokenizer (the chain's
sampling: its sampler, steps and detokenizer guidance, as the demo draws) and are scored by the
exact scorer on their own prompts: what an MLLM that drew every code right would score. A
drawing figure above it is impossible; one far below it is the MLLM's. Splits as the demo reports
them: validation's unseen categories (the headline's), its seen ones, and the held-out
compositions (illume_eval.shapes.splits).

Trains the chain's encoder, tokenizer and detokenizer in --workdir (finished stages are reused,
so pointing it at an `illume demo --out DIR` only evaluates). Prints a table, then one JSON line.
Run: .venv/bin/python benchmarks/codec_ceiling.py --chain default|full|FILE --workdir DIR [--n 400]
     [--steps detokenizer=600]  (a stage's steps instead of the chain's; finished stages in
     DIR are reused, so a new DIR with links to another's data and stages trains only the rest)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import illume.demo as demo
from illume.chain import Chain
from illume.pipeline import SamplingConfig
from illume_detokenizer import DetokenizerPipeline
from illume_eval.metrics import grouped, macro_interval
from illume_eval.shapes import SEEN_TAGS, UNSEEN_TAGS
from illume_eval.shapes.audit import split_scenes
from illume_eval.shapes.codec import detokenizer_quality
from illume_tokenizer import SemanticTokenizer


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--chain", default="full", help="a shipped chain or a chain file")
    parser.add_argument("--workdir", default=None)
    parser.add_argument(
        "--n", type=int, default=400, help="images scored per split (at most the split's)"
    )
    parser.add_argument(
        "--steps",
        action="append",
        default=[],
        metavar="STAGE=N",
        help="a codec stage's steps instead of the chain's, e.g. detokenizer=600 (repeatable)",
    )
    args = parser.parse_args()
    try:
        chain = Chain.load(args.chain)
    except ValueError as err:
        parser.error(f"--chain: {err}")
    # the codec's stages only: no MLLM, so no self-enhancement either
    codec = ("encoder", "tokenizer", "detokenizer")
    chain = chain.only(*codec)
    try:
        steps = {k: int(v) for k, v in (item.split("=", 1) for item in args.steps)}
        chain = chain.with_steps(steps)
    except ValueError as err:
        parser.error(f"--steps: {err} (expected STAGE=N)")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="illume-codec-"))
    workdir.mkdir(parents=True, exist_ok=True)
    os.chdir(workdir)
    start = time.perf_counter()
    chain.data.ensure("data/shapes", progress=False)
    seconds = demo.train(chain, progress=False)
    tokenizer = SemanticTokenizer.from_pretrained(chain.output("tokenizer"))
    pipe = DetokenizerPipeline.from_pretrained(chain.output("detokenizer"))
    pipe.set_progress_bar_config(disable=True)
    # the detokenizer drawn as the demo draws it: the demo's codec ceiling
    sampling = SamplingConfig(**chain.sampling)
    sampler = (sampling.sampler, sampling.steps)

    figures: dict = {}
    groups = {
        "validation": {"unseen": UNSEEN_TAGS, "seen": SEEN_TAGS},
        "heldout": {"heldout_compositions": None},
    }
    for split, subsets in groups.items():
        n = min(args.n, len(split_scenes(f"data/shapes/{split}")))
        quality = detokenizer_quality(
            tokenizer,
            pipe,
            f"data/shapes/{split}",
            n=n,
            samplers=(sampler,),
            guidance=sampling.detokenizer_guidance,
        )["by_sampler"]["{}@{}".format(*sampler)]
        for name, tags in subsets.items():
            verdicts = grouped(v for v in quality["t2i_verdicts"] if tags is None or v[0] in tags)
            by_tag = {k: sum(v) / len(v) for k, v in verdicts.items()}
            figures[name] = {
                "codec_ceiling": sum(by_tag.values()) / len(by_tag),
                "ci95": macro_interval(verdicts),
                "images": sum(len(v) for v in verdicts.values()),
                "by_tag": by_tag,
            }
        figures[f"{split}_scene_recovery"] = quality["scene_recovery"]
        figures[f"{split}_images"] = n
    figures |= {
        "chain": chain.settings(),
        "steps": {name: chain.steps(name) for name in codec},
        "sampling": {"sampler": sampler, "guidance": sampling.detokenizer_guidance},
        "train_seconds": seconds,
        "seconds": round(time.perf_counter() - start, 1),
        "workdir": str(workdir),
        "machine": f"{platform.machine()} {platform.python_version()}",
    }
    print(f"{'split':<22}{'codec ceiling':>14}{'images':>8}{'95% interval':>16}   per category")
    for name in ("unseen", "seen", "heldout_compositions"):
        f = figures[name]
        tags = " ".join(f"{k}={v:.3f}" for k, v in f["by_tag"].items())
        print(
            f"{name:<22}{f['codec_ceiling']:>14.3f}{f['images']:>8}{f['ci95'][0]:>9.3f}-{f['ci95'][1]:.3f}   {tags}"
        )
    print(
        f"scenes recovered: validation {figures['validation_scene_recovery']:.3f}, "
        f"held-out {figures['heldout_scene_recovery']:.3f}"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
