"""ILLUME's claims at ShapesWorld scale, each against an equal-compute control, over training seeds.

Claims (one a run; each prints its tables, then one JSON object on its last line):

  fig-b    Fig. B: guidance, temperature and top-k trade variety for faithfulness. No training:
           each base model draws validation's unseen prompts at each setting.
  table-7  Table 7 / Table C: self-enhancement raises drawing and understanding. From each base
           model: it draws training prompts, an assessor judges the drawings (the exact oracle, or
           the model itself), and it continues its annealing recipe with those assessments as a
           quarter of its data; the control continues the same recipe for the same steps without
           them.
  table-2  Table 2: training understanding and generation jointly costs neither. The MLLM stages
           (1-3 and the annealing phase, at --fraction of their steps) trained three times from
           the demo's tokenizer: on the understanding data alone, on the drawing and editing data
           alone, and on both; also whether understanding data that shows the held-out
           compositions (never drawn in training) helps drawing them.
  fig-6    Fig. 6: an MLLM learns to draw faster from a semantic tokenizer than from a pixel-
           reconstruction one. Two tokenizers that differ only in what their decoder
           reconstructs: both quantize the encoder's patch embeddings (as the chain's, a code a
           cell) into the same codebook; the semantic one reconstructs the encoder's penultimate
           layer (the chain's), the pixel one the patch embedding itself, a linear map of the
           pixels. MLLM stages 1-2 on each, scored along stage 2 (--points models) by the
           drawing figure and the text-to-image loss; the curves in claims/fig6/*/report.html.

Base models, one a training seed: the demo's own (seed 0: its chain's seeds), and for seed s > 0
stage 3 and its annealing phase trained again from the demo's stage 2 with seed_everything,
model.seed and data.seed set to s (stages 1-2, the tokenizer and the detokenizer stay shared: the
spread measured is stage 3's).

Measured on what training never showed: drawing at the level of codes (illume_eval.shapes.
evaluation.code_t2i_quality: the MLLM's codes read cell by cell, the detokenizer shared by every
arm and left out) on validation's unseen prompts and on the held-out compositions, per sampling
seed; QA by question type on questions not asked of the same layout in training, and POPE. A
claim's verdict is the paired difference arm - control over training seeds (each the mean over
sampling seeds) with its t-interval (illume_eval.metrics.paired_difference): reproduced only when
the interval lies above zero.

Everything goes under DEMO/claims/: base models, corpora and arms in their own folders (the demo's
data and stages linked, never written), scores in claims/scores/*.json. A rerun skips what is
finished: more seeds only cost the new ones.

Run: .venv/bin/python benchmarks/paper_claims.py CLAIM --workdir DEMO [--seeds 0 1 2]
     [--sampling-seeds 0 1 2]   (DEMO: a finished `tools/illume demo --out DEMO`, default chain)
     table-7: [--prompts 300] [--steps 150] [--ratio 0.25]; table-2: [--fraction 0.5] [--margin 0.05];
     fig-6: [--fraction 0.5] [--points 4]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import statistics
import time
from pathlib import Path

from illume.chain import Chain, merge
from illume_core import atomic_write_json, read_json

CHAIN = Chain.load("default")
DATA = "data/shapes"
TOKENIZER, DETOKENIZER = CHAIN.output("tokenizer"), CHAIN.output("detokenizer")
STAGE2, FINAL = CHAIN.output("mllm_stage2"), CHAIN.output("mllm_anneal")
RETRAINED = ("mllm_stage3", "mllm_anneal")  # what a base model's training seed trains again

# Fig. B: (sweep, guidance, temperature, top_k) about the chain's own sampling
DEFAULT = (CHAIN.sampling["guidance"], CHAIN.sampling["temperature"], None)
SWEEPS = [
    ("guidance", 1.0, DEFAULT[1], None),
    ("guidance", 3.0, DEFAULT[1], None),
    ("guidance", 5.0, DEFAULT[1], None),
    ("temperature", DEFAULT[0], 0.25, None),
    ("temperature", DEFAULT[0], 1.0, None),
    ("top-k", DEFAULT[0], 1.0, 20),
    ("top-k", DEFAULT[0], 1.0, 5),
]


@contextlib.contextmanager
def inside(directory: Path):
    previous = Path.cwd()
    os.chdir(directory)
    try:
        yield
    finally:
        os.chdir(previous)


def linked_folder(demo: Path, folder: Path, shared: list[str]) -> Path:
    """`folder` with the demo's data and the `shared` stage folders linked in (read, never
    written: a chain skips a stage whose output exists), for a chain that trains the rest."""
    folder.mkdir(parents=True, exist_ok=True)
    for rel in [DATA, *shared]:
        link = folder / rel
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to((demo / rel).resolve(), target_is_directory=True)
    return folder


class Claims:
    """The demo folder, its base models by training seed, and the scores of every model."""

    def __init__(self, demo: Path, sampling_seeds: list[int]):
        self.demo, self.root = demo.resolve(), demo.resolve() / "claims"
        self.sampling_seeds = sampling_seeds
        if not (self.demo / FINAL / "config.json").is_file():
            raise SystemExit(f"{demo} holds no finished default demo ({FINAL}): run "
                             f"`tools/illume demo --out {demo}` first")  # fmt: skip
        self.root.mkdir(exist_ok=True)
        self._contents: dict[Path, dict] = {}

    def contents(self, tokenizer: Path) -> dict:
        """What each of a tokenizer's codes stands for (code_contents on 3,000 training scenes),
        kept in the tokenizer's folder."""
        from illume_eval.shapes.evaluation import code_contents
        from illume_tokenizer import SemanticTokenizer

        tokenizer = (self.demo / tokenizer).resolve()
        if tokenizer not in self._contents:
            cache = (
                self.root
                / "code_contents"
                / f"{tokenizer.relative_to(self.demo)}.json".replace("/", "_")
            )
            if cache.is_file():
                contents = {int(k): tuple(v) if v else None for k, v in read_json(cache).items()}
            else:
                contents = code_contents(SemanticTokenizer.from_pretrained(tokenizer).eval(),
                                         self.demo / DATA / "train")  # fmt: skip
                atomic_write_json(cache, {str(k): v for k, v in contents.items()})
            self._contents[tokenizer] = contents
        return self._contents[tokenizer]

    # -- models ---------------------------------------------------------------------------------

    def base_model(self, seed: int) -> Path:
        """The stage-3 model (after its annealing phase) of training seed `seed`."""
        if seed == 0:
            return self.demo / FINAL
        folder = linked_folder(self.demo, self.root / "base" / f"seed{seed}",
                               [TOKENIZER, DETOKENIZER, CHAIN.output("mllm_stage1"), STAGE2])  # fmt: skip
        seeds = {"seed_everything": seed, "model": {"seed": seed}, "data": {"seed": seed}}
        stages = tuple(
            s.model_copy(update={"overrides": merge(s.overrides, seeds)}) if s.name in RETRAINED
            else s for s in CHAIN.stages if s.name in RETRAINED
        )  # fmt: skip
        with inside(folder):
            from illume.demo import train

            if not Path(FINAL).is_dir():
                print(
                    f"training base model seed {seed} (stage 3 and its annealing phase)", flush=True
                )
            train(CHAIN.model_copy(update={"stages": stages, "self_enhance": None}), progress=False)
        return folder / FINAL

    def pipeline(self, mllm: Path, tokenizer: Path = Path(TOKENIZER)):
        from illume.pipeline import IllumePipeline, SamplingConfig

        with inside(self.demo):
            return IllumePipeline.from_stages(
                tokenizer, mllm, DETOKENIZER, sampling=SamplingConfig(**CHAIN.sampling)
            )

    # -- scores ---------------------------------------------------------------------------------

    def scores(self, name: str, mllm: Path) -> tuple[Path, dict]:
        """The file of one model's cached figures (`name`: its file in claims/scores/) and what it
        holds, dropped when the model's weights are newer than they."""
        path = self.root / "scores" / f"{name}.json"
        stamp = max(f.stat().st_mtime_ns for f in Path(mllm).rglob("*.safetensors"))
        cache = read_json(path) if path.is_file() else {}
        fresh = cache.get("weights_mtime_ns") == stamp
        return path, cache if fresh else {"weights_mtime_ns": stamp}

    def score(
        self,
        name: str,
        mllm: Path,
        sampling: tuple = DEFAULT,
        qa: bool = True,
        tokenizer: Path = Path(TOKENIZER),
        extra: dict | None = None,
    ) -> dict:
        """{"t2i_unseen", "t2i_heldout", "variety": means over the sampling seeds, "by_seed",
        "qa_macro", "qa_by_type", "pope_f1_worst"} of one model at one sampling setting
        (guidance, temperature, top_k); computed once, then read from its cache."""
        from illume_eval.shapes import UNSEEN_TAGS
        from illume_eval.shapes.audit import TrainingOverlap, split_scenes
        from illume_eval.shapes.evaluation import code_t2i_quality, qa_quality

        path, cache = self.scores(name, mllm)
        contents = self.contents(tokenizer)
        pipe = None
        guidance, temperature, top_k = sampling
        setting = f"g{guidance:g}-t{temperature:g}-k{top_k or 'all'}"

        def cached(key, compute):
            nonlocal pipe
            if key not in cache:
                pipe = pipe or self.pipeline(mllm, tokenizer)
                with (
                    inside(self.demo),
                    pipe.sampling_as(guidance=guidance, temperature=temperature),
                ):
                    # sampling_as keeps a field given None; here None (every code) must replace
                    pipe.sampling = dataclasses.replace(pipe.sampling, top_k=top_k)
                    cache[key] = compute(pipe)
                atomic_write_json(path, cache)
            return cache[key]

        def drawing(split, tags, seed):
            def compute(p):
                r = code_t2i_quality(p, f"{DATA}/{split}", contents, seed=seed, tags=tags)
                return {"overall": r["summary"]["overall"], "summary": r["summary"],
                        "variety": r["variety"], "drawings": r["drawings"]}  # fmt: skip

            return compute

        by_seed = {
            s: {
                "unseen": cached(f"codes-unseen-{setting}-s{s}", drawing("validation", UNSEEN_TAGS, s)),
                "heldout": cached(f"codes-heldout-{setting}-s{s}", drawing("heldout", None, s)),
            }
            for s in self.sampling_seeds
        }  # fmt: skip
        out = {
            "t2i_unseen": statistics.mean(v["unseen"]["overall"] for v in by_seed.values()),
            "t2i_heldout": statistics.mean(v["heldout"]["overall"] for v in by_seed.values()),
            "variety": statistics.mean(v["unseen"]["variety"] for v in by_seed.values()),
            "t2i_by_tag": {
                tag: statistics.mean(v["unseen"]["summary"][tag] for v in by_seed.values())
                for tag in UNSEEN_TAGS
            },
            "by_seed": by_seed,
        }
        for key, compute in (extra or {}).items():  # {key: compute(pipe)}, cached as the rest
            out[key] = cached(key, compute)
        if qa:

            def answers(p):
                validation = f"{DATA}/validation"
                overlap, scenes = TrainingOverlap(f"{DATA}/train"), split_scenes(validation)
                r = qa_quality(p, validation, per_type=30,
                               keep=lambda row: not overlap.question_seen(scenes[row["image"]], row))  # fmt: skip
                return {"accuracy": r["accuracy"], "questions": r["questions"],
                        "pope": {k: v["f1"] for k, v in r["pope"].items()}}  # fmt: skip

            result = cached("qa", answers)
            types = result["questions"]
            out |= {
                "qa_macro": result["accuracy"]["macro"],
                "qa_by_type": {t: result["accuracy"][t] for t in types},
                "pope_f1_worst": min(result["pope"].values(), default=0.0),
            }
        return out


def row(cells: list, widths: list[int]) -> str:
    return "".join(
        f"{c:<{w}}" if i == 0 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(cells, widths))
    )


def spread(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} +- {sd:.3f}"


def fig_b(claims: Claims, seeds: list[int]) -> dict:
    """Fig. B: each base model draws at every setting; per setting, faithfulness and variety as
    mean +- sd over training seeds; the claims as paired differences between a sweep's ends."""
    from illume_eval.metrics import paired_difference

    settings = [("default", *DEFAULT), *SWEEPS]
    figures: dict[str, dict] = {}
    for seed in seeds:
        base = claims.base_model(seed)
        for sweep, g, t, k in settings:
            key = f"{sweep} g{g:g} t{t:g} k{k or 'all'}"
            r = claims.score(f"base-seed{seed}", base, (g, t, k), qa=False)
            figures.setdefault(key, {"sweep": sweep, "guidance": g, "temperature": t, "top_k": k,
                                     "t2i_unseen": [], "variety": [], "t2i_heldout": []})  # fmt: skip
            for name in ("t2i_unseen", "variety", "t2i_heldout"):
                figures[key][name].append(r[name])
    widths = [12, 10, 13, 7, 22, 22, 22]
    print(f"\nFig. B: {len(seeds)} training seeds x {len(claims.sampling_seeds)} sampling seeds, "
          f"unseen prompts at the level of codes (2 drawings a prompt)")  # fmt: skip
    print(
        row(
            [
                "sweep",
                "guidance",
                "temperature",
                "top-k",
                "faithful (unseen)",
                "variety",
                "held-out",
            ],
            widths,
        )
    )
    for f in figures.values():
        print(row([f["sweep"], f"{f['guidance']:g}", f"{f['temperature']:g}", str(f["top_k"] or "all"),
                   spread(f["t2i_unseen"]), spread(f["variety"]), spread(f["t2i_heldout"])], widths))  # fmt: skip

    def setting(g, t, k):
        return next(
            f
            for f in figures.values()
            if (f["guidance"], f["temperature"], f["top_k"]) == (g, t, k)
        )

    g0, t0, _ = DEFAULT
    claims_tested = {  # claim: (arm setting, control setting, figure): the paper's direction is arm > control
        "guidance 3 draws more faithfully than none (1)": ((3.0, t0, None), (1.0, t0, None), "t2i_unseen"),
        "guidance 5 draws more faithfully than 3": ((5.0, t0, None), (3.0, t0, None), "t2i_unseen"),
        "temperature 0.25 draws more faithfully than 1.0": ((g0, 0.25, None), (g0, 1.0, None), "t2i_unseen"),
        "temperature 1.0 draws more varied than 0.25": ((g0, 1.0, None), (g0, 0.25, None), "variety"),
        "top-k 5 draws more faithfully than all codes (temperature 1)": ((g0, 1.0, 5), (g0, 1.0, None), "t2i_unseen"),
        "all codes draw more varied than top-k 5 (temperature 1)": ((g0, 1.0, None), (g0, 1.0, 5), "variety"),
    }  # fmt: skip
    verdicts = {}
    print("\nclaim (arm - control, paired over training seeds)")
    for claim, (arm, control, figure) in claims_tested.items():
        d = paired_difference(setting(*arm)[figure], setting(*control)[figure])
        verdicts[claim] = dataclasses.asdict(d)
        print(f"  {claim}: {d.describe()}")
    path = fig_b_report(claims, seeds, figures, verdicts)
    print(f"curves and drawings: {path}")
    return {"settings": list(figures.values()), "verdicts": verdicts, "report": str(path)}


def fig_b_report(claims: Claims, seeds: list[int], figures: dict, verdicts: dict) -> Path:
    """The sweeps as curves (means over training seeds), then what the first seed's model draws
    for a few unseen prompts at every setting, each drawing with the exact scorer's verdict."""
    from illume_eval.report import Card, HtmlReport
    from illume_eval.shapes import UNSEEN_TAGS, detect
    from illume_eval.shapes.evaluation import t2i_prompts
    from illume_eval.shapes.prompts import check_spec

    report = HtmlReport("ILLUME Fig. B at ShapesWorld scale: sampling against faithfulness")
    g0, t0, _ = DEFAULT
    sweeps = {  # sweep: (x axis, the settings on its line)
        "guidance": ("guidance", lambda f: f["temperature"] == t0 and f["top_k"] is None),
        "temperature": ("temperature", lambda f: f["guidance"] == g0 and f["top_k"] is None),
        "top-k (temperature 1; all codes at x = 64)": (
            "top_k", lambda f: f["guidance"] == g0 and f["temperature"] == 1.0),
    }  # fmt: skip
    for title, (axis, on_line) in sweeps.items():
        rows = [f for f in figures.values() if on_line(f)]
        report.heading(title)
        report.curves({name: sorted((f[axis] or 64, statistics.mean(f[key])) for f in rows)
                       for name, key in (("faithful (unseen prompts)", "t2i_unseen"),
                                         ("variety (cells)", "variety"))})  # fmt: skip
    report.heading("Verdicts (arm - control, paired over training seeds)")
    report.metrics({c: f"{v['verdict']} ({v['mean']:+.3f}, {v['low']:+.3f} to {v['high']:+.3f}, "
                       f"n {v['n']})" for c, v in verdicts.items()})  # fmt: skip
    report.heading(f"Drawings of training seed {seeds[0]}'s model, unseen prompts, one per setting")
    pipe = claims.pipeline(claims.base_model(seeds[0]))
    with inside(claims.demo):
        specs = [s for _, s in t2i_prompts(f"{DATA}/validation", tags=UNSEEN_TAGS)][::20][:6]
    cards = []
    for f in figures.values():
        with pipe.sampling_as(guidance=f["guidance"], temperature=f["temperature"]):
            pipe.sampling = dataclasses.replace(pipe.sampling, top_k=f["top_k"])
            images = pipe.generate_image([s.prompt for s in specs], seed=0)
        for spec, image in zip(specs, images, strict=True):
            cards.append(Card([image], spec.prompt, check_spec(spec, detect(image)).correct,
                              f"guidance {f['guidance']:g}, temperature {f['temperature']:g}, "
                              f"top-k {f['top_k'] or 'all'}"))  # fmt: skip
    report.grid(cards)
    return report.write(claims.root / "fig_b.html")


def table_7(claims: Claims, seeds: list[int], prompts: int, steps: int, ratio: float) -> dict:
    """Table 7 / Table C: from each base model, self-enhanced (oracle / self assessor) against a
    control continued as long without the assessments."""
    from illume.self_enhance import (
        ModelAssessor,
        OracleAssessor,
        assess_corpus,
        draw_corpus,
        prompts_from_captions,
        sft_conversations,
    )
    from illume.self_enhance.loop import continue_training
    from illume_eval.metrics import paired_difference

    recipe = CHAIN.stage("mllm_anneal").recipe
    enhance = read_recipe("recipes/shapes/self_enhance.yaml")  # how the product draws its corpus
    results: dict[str, dict] = {}
    shares, agreement = {}, {}
    for seed in seeds:
        base = claims.base_model(seed)
        folder = (
            claims.root / "table7" / f"steps{steps}-prompts{prompts}-ratio{ratio:g}" / f"seed{seed}"
        )
        corpus = folder / "corpus"
        pipe = claims.pipeline(base)
        with inside(claims.demo):
            chosen = prompts_from_captions(f"{DATA}/train/captions.jsonl", prompts, seed=seed)
            with pipe.sampling_as(guidance=enhance["guidance"], temperature=enhance["temperature"]):
                items = draw_corpus(pipe, chosen, corpus, seed=seed, progress=False)
            sft = {}
            for assessor_name, assessor in (("oracle", OracleAssessor()),
                                            ("self", ModelAssessor(pipe.model, pipe.processor))):  # fmt: skip
                path = folder / f"sft-{assessor_name}.json"
                if not path.is_file():
                    judged = assess_corpus(assessor, items, corpus, progress=False)
                    atomic_write_json(path, sft_conversations(items, judged, corpus, folder))
                sft[assessor_name] = path
            shares[seed] = {k: len(read_json(v)) for k, v in sft.items()}  # accepted judgements
            agreement[seed] = self_agreement(corpus)
            arms = {"control": None, "oracle": sft["oracle"], "self": sft["self"]}
            for arm, extra in arms.items():
                if not (folder / arm / "final" / "config.json").is_file():
                    print(f"training seed {seed}, {arm}: {steps} steps", flush=True)
                out = continue_training(str(base), TOKENIZER, recipe, folder / arm, steps, seed,
                                        extra, ratio, progress=False)  # fmt: skip
                results[f"{arm}-seed{seed}"] = claims.score(
                    f"{folder.parent.name}-seed{seed}-{arm}", out
                )
        results[f"base-seed{seed}"] = claims.score(f"base-seed{seed}", base)
    figures = ("t2i_unseen", "t2i_heldout", "qa_macro", "pope_f1_worst")
    widths = [18, 16, 16, 16, 16]
    print(f"\nTable 7: {len(seeds)} training seeds x {len(claims.sampling_seeds)} sampling seeds; "
          f"{steps} more steps each arm, assessments {ratio:g} of the self-enhanced arms' data")  # fmt: skip
    print(row(["arm", *figures], widths))
    for arm in ("base", "control", "oracle", "self"):
        print(
            row(
                [arm, *(spread([results[f"{arm}-seed{s}"][f] for s in seeds]) for f in figures)],
                widths,
            )
        )
    qa_types = list(results[f"control-seed{seeds[0]}"]["qa_by_type"])
    print(row(["QA by type", *qa_types], [18] + [12] * len(qa_types)))
    for arm in ("base", "control", "oracle", "self"):
        print(row([arm, *(f"{statistics.mean(results[f'{arm}-seed{s}']['qa_by_type'][t] for s in seeds):.3f}"
                          for t in qa_types)], [18] + [12] * len(qa_types)))  # fmt: skip
    verdicts = {}
    print("\nclaim (arm - control, paired over training seeds)")
    for arm in ("oracle", "self"):
        for figure in figures:
            d = paired_difference([results[f"{arm}-seed{s}"][figure] for s in seeds],
                                  [results[f"control-seed{s}"][figure] for s in seeds])  # fmt: skip
            claim = f"self-enhancement ({arm} assessor) raises {figure}"
            verdicts[claim] = dataclasses.asdict(d)
            print(f"  {claim}: {d.describe()}")
    print(f"\nassessment conversations of the {prompts} drawings (accepted judgements), by seed: "
          + "; ".join(f"{k} " + " / ".join(str(shares[s][k]) for s in seeds) for k in ("oracle", "self"))
          + " (an arm with none trained as its control did)")  # fmt: skip
    print("the base model's own assessments against the oracle's, per aspect (same drawings):")
    for seed, figures_of_seed in agreement.items():
        print(f"  seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in figures_of_seed.items()))
    return {"results": {k: {f: v[f] for f in (*figures, "qa_by_type", "t2i_by_tag")} for k, v in results.items()},
            "assessments": shares, "self_agreement": agreement, "verdicts": verdicts}  # fmt: skip


def self_agreement(corpus: Path) -> dict:
    """Per aspect, the share of drawings whose score the model gave itself equals the oracle's
    (over the answers that parsed), and the share that parsed."""
    from illume.self_enhance.assessors import read_judgements
    from illume_eval.shapes import ASPECTS

    truth, own = read_judgements(corpus, "oracle"), read_judgements(corpus, "model")
    both = [(own[k], truth[k]) for k in truth if k in own and own[k].accepted and truth[k].accepted]
    out = {"parsed": len(both) / max(len(truth), 1)}
    for aspect in ASPECTS:
        same = [o.assessment[aspect]["Score"] == t.assessment[aspect]["Score"] for o, t in both]
        out[aspect] = sum(same) / len(same) if same else 0.0
    return out


#: Table 2's arms: the MLLM stages' data files each keeps (understanding: captions, questions,
#: assessments of drawings; generation: drawing and editing).
TASK_DATA = {
    "understanding": {"i2t.json", "qa.json", "assessments.json"},
    "generation": {"t2i.json", "edits.json"},
    "joint": {"i2t.json", "qa.json", "assessments.json", "t2i.json", "edits.json"},
}
MLLM_STAGES = ("mllm_stage1", "mllm_stage2", "mllm_stage3", "mllm_anneal")


def task_chain(arm: str, seed: int, fraction: float) -> Chain:
    """The default chain's MLLM stages (from the tokenizer) on one arm's data, every stage at
    `fraction` of its steps and at training seed `seed`. Every arm builds its text tokenizer from
    every data file, so that all three read the same words."""
    files = {Path(f).name: f for n in MLLM_STAGES for f in CHAIN.recipe(n)["data"]["train"]}
    stages = []
    for stage in CHAIN.stages:
        if stage.name not in MLLM_STAGES:
            continue
        data = CHAIN.recipe(stage.name)["data"]
        keep = [i for i, f in enumerate(data["train"]) if Path(f).name in TASK_DATA[arm]]
        chosen = {"train": [data["train"][i] for i in keep],
                  "weights": [data["weights"][i] for i in keep]}  # fmt: skip
        if data.get("pack_by_image"):
            chosen["pack_by_image"] = [data["pack_by_image"][i] for i in keep]
        overrides = {"seed_everything": seed, "model": {"seed": seed},
                     "data": {"seed": seed, **chosen}}  # fmt: skip
        if stage.name == "mllm_stage1":
            overrides["model"]["tokenizer_corpus"] = sorted(files.values())
        steps = max(1, round(CHAIN.steps(stage.name) * fraction))
        stages.append(stage.model_copy(
            update={"overrides": merge(stage.overrides, overrides), "steps": steps}))  # fmt: skip
    return CHAIN.model_copy(update={"stages": tuple(stages), "self_enhance": None})


def table_2(claims: Claims, seeds: list[int], fraction: float, margin: float) -> dict:
    """Table 2: understanding-only, generation-only and joint MLLM training (stages 1-3 and the
    annealing phase) from the same tokenizer at equal steps."""
    from illume_eval.metrics import paired_difference

    results: dict[str, dict] = {}
    for seed in seeds:
        for arm in TASK_DATA:
            folder = linked_folder(claims.demo, claims.root / "table2" / f"fraction{fraction:g}" / f"{arm}-seed{seed}",
                                   [CHAIN.output("encoder"), TOKENIZER, DETOKENIZER])  # fmt: skip
            with inside(folder):
                from illume.demo import train

                if not Path(FINAL).is_dir():
                    print(f"training seed {seed}, {arm} (MLLM stages at {fraction:g} of their steps)",
                          flush=True)  # fmt: skip
                train(task_chain(arm, seed, fraction), progress=False)
            results[f"{arm}-seed{seed}"] = claims.score(
                f"table2-fraction{fraction:g}-{arm}-seed{seed}", folder / FINAL
            )
    figures = ("t2i_unseen", "t2i_heldout", "qa_macro", "pope_f1_worst")
    widths = [16, 16, 16, 16, 16]
    print(f"\nTable 2: {len(seeds)} training seeds x {len(claims.sampling_seeds)} sampling seeds; "
          f"the MLLM stages at {fraction:g} of the default chain's steps")  # fmt: skip
    print(row(["arm", *figures], widths))
    for arm in TASK_DATA:
        print(
            row(
                [arm, *(spread([results[f"{arm}-seed{s}"][f] for s in seeds]) for f in figures)],
                widths,
            )
        )

    def figure(arm, name):
        return [results[f"{arm}-seed{s}"][name] for s in seeds]

    tests = {  # claim: (arm, control, figure, margin)
        f"joint training costs understanding (QA) at most {margin:g}": ("joint", "understanding", "qa_macro", margin),
        f"joint training costs POPE at most {margin:g}": ("joint", "understanding", "pope_f1_worst", margin),
        f"joint training costs drawing (unseen prompts) at most {margin:g}": ("joint", "generation", "t2i_unseen", margin),
        "joint training draws unseen prompts better than generation alone": ("joint", "generation", "t2i_unseen", 0.0),
        "understanding data that shows the held-out compositions helps drawing them": ("joint", "generation", "t2i_heldout", 0.0),
        "joint training answers better than understanding alone": ("joint", "understanding", "qa_macro", 0.0),
    }  # fmt: skip
    verdicts = {}
    print("\nclaim (arm - control, paired over training seeds)")
    for claim, (arm, control, name, m) in tests.items():
        d = paired_difference(figure(arm, name), figure(control, name), margin=m)
        verdicts[claim] = dataclasses.asdict(d)
        print(f"  {claim}: {d.describe()}")
    return {"results": {k: {f: v[f] for f in (*figures, "qa_by_type", "t2i_by_tag")} for k, v in results.items()},
            "fraction": fraction, "verdicts": verdicts}  # fmt: skip


#: Fig. 6's tokenizers: the encoder layer each one's decoder reconstructs from codes of the patch
#: embeddings (the chain's `feature_layer` 0). The chain's reconstructs the penultimate layer, where
#: the encoder's dense loss made each cell's token name what the cell holds (semantic); layer 0 is
#: the patch embedding, a linear map of the cell's pixels, so reconstructing it is reconstructing
#: the pixels (the pixel-reconstruction tokenizer, at the same input, grid and codebook).
TOKENIZER_TARGETS = {"semantic": -2, "pixel": 0}


def tokenizer_chain(arm: str, seed: int, fraction: float, points: int) -> Chain:
    """The tokenizer (reconstructing `arm`'s layer) and MLLM stages 1-2 at `fraction` of their steps,
    stage 2 saving the model `points` times along the way, all at training seed `seed`."""
    seeds = {"seed_everything": seed, "model": {"seed": seed}, "data": {"seed": seed}}
    stages = []
    for stage in CHAIN.stages:
        if stage.name == "tokenizer":
            target = {"overrides": {"target_layer": TOKENIZER_TARGETS[arm]}}
            overrides = {"seed_everything": seed, "model": target}
            stages.append(stage.model_copy(update={"overrides": merge(stage.overrides, overrides)}))
        elif stage.name in ("mllm_stage1", "mllm_stage2"):
            steps = max(1, round(CHAIN.steps(stage.name) * fraction))
            overrides = seeds
            if stage.name == "mllm_stage2":
                overrides = merge(seeds, {"model": {"snapshot_every": max(1, steps // points)}})
            stages.append(stage.model_copy(
                update={"overrides": merge(stage.overrides, overrides), "steps": steps}))  # fmt: skip
    return CHAIN.model_copy(update={"stages": tuple(stages), "self_enhance": None})


def t2i_loss(pipe, contents_split: str, tags) -> float:
    """-log p(codes | prompt) per image, summed over its answer tokens and averaged over the
    split's prompts of `tags`, the codes being the tokenizer's of each prompt's own scene."""
    import torch

    from illume_core import load_image, read_jsonl
    from illume_eval.shapes.evaluation import t2i_prompts

    prompts = t2i_prompts(contents_split, tags=tags)
    rows = read_jsonl(Path(contents_split) / "scenes.jsonl")
    total = 0.0
    for start in range(0, len(prompts), 32):
        chunk = prompts[start : start + 32]
        images = [load_image(Path(contents_split) / rows[i]["image"]) for i, _ in chunk]
        with torch.no_grad():
            codes = pipe.image_codes(images)
            total -= float(pipe.image_log_likelihood([s.prompt for _, s in chunk], codes).sum())
    return total / len(prompts)


def fig_6(claims: Claims, seeds: list[int], fraction: float, points: int) -> dict:
    """Fig. 6: a semantic against a pixel-reconstruction tokenizer, MLLM stages 1-2 trained on
    each; drawing and text-to-image loss along stage 2."""
    from illume_eval.metrics import paired_difference
    from illume_eval.report import HtmlReport
    from illume_eval.shapes import UNSEEN_TAGS
    from illume_eval.shapes.evaluation import code_ceiling
    from illume_tokenizer import SemanticTokenizer

    curves: dict[str, dict] = {}  # "arm-seed": {step: figures}
    ceilings: dict[str, dict] = {}
    for seed in seeds:
        for arm in TOKENIZER_TARGETS:
            folder = linked_folder(claims.demo, claims.root / "fig6" / f"targets-fraction{fraction:g}-points{points}" / f"{arm}-seed{seed}",
                                   [CHAIN.output("encoder")])  # fmt: skip
            chain = tokenizer_chain(arm, seed, fraction, points)
            with inside(folder):
                from illume.demo import train

                if not Path(chain.output("mllm_stage2")).is_dir():
                    print(f"training seed {seed}, {arm} tokenizer and MLLM stages 1-2", flush=True)
                train(chain, progress=False)
            tokenizer = folder / TOKENIZER
            stage2 = folder / chain.output("mllm_stage2")
            contents = claims.contents(tokenizer)
            ceiling = code_ceiling(SemanticTokenizer.from_pretrained(tokenizer).eval(),
                                   claims.demo / DATA / "validation", contents, tags=UNSEEN_TAGS)  # fmt: skip
            ceilings[f"{arm}-seed{seed}"] = {"overall": ceiling["summary"]["overall"],
                                            "codes_used": len(contents)}  # fmt: skip
            snapshots = sorted(Path(f"{stage2}.steps").iterdir(), key=lambda p: int(p.name))
            steps = chain.steps("mllm_stage2")
            curve = {}
            for snapshot in [*snapshots, stage2]:
                step = steps if snapshot == stage2 else int(snapshot.name)
                name = f"fig6-targets-fraction{fraction:g}-{arm}-seed{seed}-step{step}"
                loss = {"t2i_loss": lambda p: t2i_loss(p, f"{DATA}/validation", UNSEEN_TAGS)}
                r = claims.score(name, snapshot, qa=False, tokenizer=tokenizer, extra=loss)
                curve[step] = {"t2i_unseen": r["t2i_unseen"], "t2i_loss": r["t2i_loss"]}
            curves[f"{arm}-seed{seed}"] = curve
    steps = sorted(next(iter(curves.values())))
    widths = [10, 8] + [18] * len(steps)
    print(f"\nFig. 6: {len(seeds)} training seeds x {len(claims.sampling_seeds)} sampling seeds; MLLM "
          f"stage 1 then stage 2 at {fraction:g} of the default chain's steps; unseen prompts, codes")  # fmt: skip
    print(row(["tokenizer", "figure", *(f"stage-2 step {k}" for k in steps)], widths))
    for arm in TOKENIZER_TARGETS:
        for figure in ("t2i_unseen", "t2i_loss"):
            print(row([arm, figure.removeprefix("t2i_"),
                       *(spread([curves[f"{arm}-seed{s}"][k][figure] for s in seeds]) for k in steps)], widths))  # fmt: skip
    for arm in TOKENIZER_TARGETS:
        print(f"  {arm} tokenizer: code-level ceiling "
              + spread([ceilings[f"{arm}-seed{s}"]["overall"] for s in seeds])
              + ", codes used " + spread([ceilings[f"{arm}-seed{s}"]["codes_used"] for s in seeds]))  # fmt: skip
    verdicts = {}
    print("\nclaim (semantic - pixel, paired over training seeds)")
    for k in steps:
        d = paired_difference([curves[f"semantic-seed{s}"][k]["t2i_unseen"] for s in seeds],
                              [curves[f"pixel-seed{s}"][k]["t2i_unseen"] for s in seeds])  # fmt: skip
        claim = f"the MLLM draws better from the semantic tokenizer after {k} stage-2 steps"
        verdicts[claim] = dataclasses.asdict(d)
        print(f"  {claim}: {d.describe()}")
    report = HtmlReport("ILLUME Fig. 6 at ShapesWorld scale: semantic against pixel tokenizer")
    report.heading("Unseen prompts drawn (code level), along MLLM stage 2")
    report.curves({key: [(k, v["t2i_unseen"]) for k, v in sorted(c.items())] for key, c in curves.items()},
                  ylabel="t2i_unseen")  # fmt: skip
    report.heading("Text-to-image loss on the unseen prompts' own codes (nats per image)")
    report.curves({key: [(k, v["t2i_loss"]) for k, v in sorted(c.items())] for key, c in curves.items()},
                  ylabel="-log p(codes | prompt)")  # fmt: skip
    report.heading("Verdicts")
    report.metrics({claim: v["verdict"] + f" ({v['mean']:+.3f}, {v['low']:+.3f} to {v['high']:+.3f})"
                    for claim, v in verdicts.items()})  # fmt: skip
    path = report.write(
        claims.root / "fig6" / f"targets-fraction{fraction:g}-points{points}" / "report.html"
    )
    print(f"curves: {path}")
    return {"curves": curves, "ceilings": ceilings, "fraction": fraction, "verdicts": verdicts,
            "report": str(path)}  # fmt: skip


def read_recipe(path: str) -> dict:
    import yaml

    from illume_core import read_text
    from illume_trainer.cli import resolve_recipe

    return yaml.safe_load(read_text(resolve_recipe(path)))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("claim", choices=["fig-b", "table-7", "table-2", "fig-6"])
    parser.add_argument("--workdir", required=True, help="a finished default demo's folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    parser.add_argument("--sampling-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--prompts", type=int, default=300, help="table-7: training prompts drawn and assessed"
    )
    parser.add_argument("--steps", type=int, default=150, help="table-7: steps every arm continues")
    parser.add_argument(
        "--ratio", type=float, default=0.25, help="table-7: assessments' share of the data"
    )
    parser.add_argument(
        "--fraction",
        type=float,
        default=0.5,
        help="table-2, fig-6: the MLLM stages' steps as this share of the default chain's",
    )
    parser.add_argument("--points", type=int, default=4, help="fig-6: models scored along stage 2")
    parser.add_argument(
        "--margin",
        type=float,
        default=0.05,
        help="table-2: the largest cost that still counts as no cost",
    )
    args = parser.parse_args()
    if len(args.seeds) < 2:
        parser.error("--seeds: a claim's verdict needs two or more training seeds")
    start = time.perf_counter()
    claims = Claims(Path(args.workdir), args.sampling_seeds)
    if args.claim == "fig-b":
        out = fig_b(claims, args.seeds)
    elif args.claim == "table-7":
        out = table_7(claims, args.seeds, args.prompts, args.steps, args.ratio)
    elif args.claim == "table-2":
        out = table_2(claims, args.seeds, args.fraction, args.margin)
    else:
        out = fig_6(claims, args.seeds, args.fraction, args.points)
    out |= {"claim": args.claim, "seeds": args.seeds, "sampling_seeds": args.sampling_seeds,
            "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip
    print(f"\n{args.claim}: {out['seconds']:.0f} s")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
