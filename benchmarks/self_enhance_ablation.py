"""ILLUME's Table 7 at ShapesWorld scale: does self-enhancement help, against a fair control?

From a trained stage-3 model (the demo's `full` chain without its own self-enhancement step;
stages already in --workdir are reused):

1. the stage-3 model draws images for --prompts training prompts, the oracle assesses them, and
   Fig. C's SFT data is written (once: the corpus is the model's, not the seed's);
2. for each seed: *self-enhanced* = stage 3 continued for --steps steps with the assessment
   conversations as --ratio of its data; *control* = stage 3 continued for the same steps on its
   own data alone (equal extra training, no assessments);
3. each model is scored: text-to-image overall and per category (validation prompts), QA
   accuracy, POPE F1; and the self-enhanced model's own assessments (self-assessment) are
   compared with the oracle's, per aspect, on held-back corpus images.

Prints a table, then one JSON object on its last line with the figures, among them
gain_overall_mean and gain_overall_std (self-enhanced minus control, over the seeds).

Run: .venv/bin/python benchmarks/self_enhance_ablation.py --workdir DIR [--seeds 0 1 2]
[--lr-scale 0.1: both arms continue at a tenth of stage 3's learning rate, in their own folder]
[--eval-seeds 0 1 2: text-to-image scored with three sampling seeds; scores are kept per model]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import yaml

from illume.chain import Chain
from illume.demo import train
from illume.pipeline import IllumePipeline
from illume.self_enhance import (
    ModelAssessor,
    OracleAssessor,
    assess_corpus,
    draw_corpus,
    prompts_from_captions,
    sft_conversations,
)
from illume.self_enhance.loop import continue_training
from illume_core import atomic_write_json
from illume_eval.shapes import ASPECTS, UNSEEN_TAGS
from illume_eval.shapes.evaluation import qa_quality, t2i_quality
from illume_trainer.cli import resolve_recipe

# STAGE3 and RECIPE: stage 3 as the demo ends it (its annealing phase), and the recipe both arms
# continue, as recipes/shapes/self_enhance.yaml does
CHAIN = Chain.load("full").without_self_enhance()
TOKENIZER, DETOKENIZER = CHAIN.output("tokenizer"), CHAIN.output("detokenizer")
RECIPE, STAGE3 = CHAIN.stage("mllm_anneal").recipe, CHAIN.output("mllm_anneal")


def score(mllm: str, n_t2i: int, n_qa: int, eval_seeds: list[int]) -> dict:
    """Text-to-image averaged over `eval_seeds` (sampling seeds: one seed's draw moves a model's
    overall score by about 0.02, as much as the gain sought), QA and POPE. Each figure is kept in
    `scores.json` in the model's folder, so a rerun (more seeds, a crash) only scores what is new;
    scores drawn with another tokenizer or detokenizer (retrained since) are dropped."""
    cache_path = Path(mllm) / "scores.json"
    stages = [
        max(f.stat().st_mtime_ns for f in Path(d).rglob("*.safetensors"))
        for d in (TOKENIZER, DETOKENIZER)
    ]
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    if cache.get("stages") != stages:
        cache = {"stages": stages}
    pipe = None

    def cached(key, compute):
        nonlocal pipe
        if key not in cache:
            pipe = pipe or IllumePipeline.from_stages(TOKENIZER, mllm, DETOKENIZER)
            cache[key] = compute(pipe)
            atomic_write_json(cache_path, cache)
        return cache[key]

    t2i = [
        cached(
            f"t2i-unseen-{n_t2i}-seed{s}",
            lambda p, s=s: t2i_quality(
                p, "data/shapes/validation", n=n_t2i, seed=s, tags=UNSEEN_TAGS
            )["summary"],
        )
        for s in eval_seeds
    ]
    qa = cached(
        f"qa-{n_qa}", lambda p: qa_quality(p, "data/shapes/validation", n=n_qa)
    )  # all questions
    return {
        "t2i_unseen": statistics.mean(t["overall"] for t in t2i),
        "t2i_by_tag": {k: statistics.mean(t[k] for t in t2i) for k in t2i[0] if k != "overall"},
        "qa_macro": qa["accuracy"]["macro"],
        "pope_f1_worst": min((v["f1"] for v in qa["pope"].values()), default=0.0),
    }


def agreement(mllm: str, items, corpus_dir: Path) -> dict:
    """Per aspect: share of images where the model's own score equals the oracle's (over the
    answers that parse), and the share of answers that parse at all."""
    from illume_mllm import IllumeForConditionalGeneration, IllumeProcessor

    model = IllumeForConditionalGeneration.from_pretrained(mllm).eval()
    own = ModelAssessor(model, IllumeProcessor.from_pretrained(mllm), retries=0).assess(
        items, corpus_dir
    )
    truth = OracleAssessor().assess(items, corpus_dir)
    both = [(o, t) for o, t in zip(own, truth, strict=True) if o.accepted]
    out = {"parsed": len(both) / max(len(own), 1)}
    for aspect in ASPECTS:
        same = [o.assessment[aspect]["Score"] == t.assessment[aspect]["Score"] for o, t in both]
        out[aspect] = sum(same) / len(same) if same else 0.0
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--prompts", type=int, default=500, help="training prompts drawn and assessed"
    )
    parser.add_argument(
        "--held-back",
        type=int,
        default=100,
        help="of those, kept out of SFT to measure self-assessment",
    )
    parser.add_argument("--steps", type=int, default=300, help="extra steps of both arms")
    parser.add_argument("--ratio", type=float, default=0.25)
    parser.add_argument("--eval-t2i", type=int, default=200)
    parser.add_argument("--eval-qa", type=int, default=400)
    parser.add_argument(
        "--eval-seeds",
        type=int,
        nargs="+",
        default=[0],
        help="sampling seeds of the text-to-image score (averaged; the same for every model)",
    )
    parser.add_argument(
        "--lr-scale",
        type=float,
        default=1.0,
        help="both arms' learning rates as this multiple of stage 3's (its peak: the arms re-warm)",
    )
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="illume-self-enhance-"))
    workdir.mkdir(parents=True, exist_ok=True)
    os.chdir(workdir)
    CHAIN.data.ensure("data/shapes", progress=False)
    start = time.perf_counter()
    train(CHAIN, progress=False)

    root = Path("runs/shapes/ablation")
    corpus = root / "corpus"
    stage3 = IllumePipeline.from_stages(TOKENIZER, STAGE3, DETOKENIZER)  # default sampling
    prompts = prompts_from_captions("data/shapes/train/captions.jsonl", args.prompts, seed=0)
    items = draw_corpus(stage3, prompts, corpus, seed=0, progress=False)
    held, used = items[: args.held_back], items[args.held_back :]
    judgements = assess_corpus(OracleAssessor(), used, corpus, progress=False)
    sft = root / "sft.json"
    atomic_write_json(sft, sft_conversations(used, judgements, corpus))

    arms, lr_args = root, []
    if args.lr_scale != 1.0:
        groups = yaml.safe_load(Path(resolve_recipe(RECIPE)).read_text())["model"]["groups"]
        lr_args = ["--model.groups", json.dumps({k: v * args.lr_scale for k, v in groups.items()})]
        arms = root / f"lr-scale-{args.lr_scale:g}"
    results = {"stage3": score(STAGE3, args.eval_t2i, args.eval_qa, args.eval_seeds)}
    for seed in args.seeds:
        for arm, extra in (("self_enhanced", sft), ("control", None)):
            out = continue_training(
                STAGE3,
                TOKENIZER,
                RECIPE,
                arms / f"{arm}-seed{seed}",
                args.steps,
                seed,
                extra,
                args.ratio,
                args=lr_args,
                progress=False,
            )
            results[f"{arm}-seed{seed}"] = score(
                str(out), args.eval_t2i, args.eval_qa, args.eval_seeds
            )
    gains = [
        results[f"self_enhanced-seed{s}"]["t2i_unseen"] - results[f"control-seed{s}"]["t2i_unseen"]
        for s in args.seeds
    ]
    self_assessment = {
        "stage3": agreement(STAGE3, held, corpus),
        "self_enhanced": agreement(
            str(arms / f"self_enhanced-seed{args.seeds[0]}" / "final"), held, corpus
        ),
    }

    def mean(arm, key):
        return statistics.mean(results[f"{arm}-seed{s}"][key] for s in args.seeds)

    print(f"{'model':<22}{'t2i overall':>12}{'QA acc':>9}{'POPE F1':>9}  per category")
    for name, r in results.items():
        tags = " ".join(f"{k}={v:.2f}" for k, v in sorted(r["t2i_by_tag"].items()))
        print(
            f"{name:<22}{r['t2i_unseen']:>12.3f}{r['qa_macro']:>9.3f}{r['pope_f1_worst']:>9.3f}  {tags}"
        )
    print("self-assessment agreement with the oracle:", json.dumps(self_assessment))
    figures = {
        "gain_overall_mean": round(statistics.mean(gains), 4),
        "gain_overall_std": round(statistics.stdev(gains), 4) if len(gains) > 1 else 0.0,
        "stage3_overall": results["stage3"]["t2i_unseen"],
        "self_enhanced_overall_mean": round(mean("self_enhanced", "t2i_unseen"), 4),
        "control_overall_mean": round(mean("control", "t2i_unseen"), 4),
        "self_enhanced_qa_mean": round(mean("self_enhanced", "qa_macro"), 4),
        "control_qa_mean": round(mean("control", "qa_macro"), 4),
        "self_enhanced_pope_mean": round(mean("self_enhanced", "pope_f1_worst"), 4),
        "control_pope_mean": round(mean("control", "pope_f1_worst"), 4),
        "oracle_passed_share": round(
            sum(j.accepted and all(a["Score"] for a in j.assessment.values()) for j in judgements)
            / len(judgements),
            4,
        ),
        "self_assessment": self_assessment,
        "seeds": args.seeds,
        "eval_seeds": args.eval_seeds,
        "lr_scale": args.lr_scale,
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
