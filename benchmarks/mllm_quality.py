"""Trains the ShapesWorld MLLM's three stages and measures it (issue: unified MLLM).

Runs a demo chain, `full` by default (data, encoder, tokenizer, detokenizer, MLLM stages 1-3, stage 3
ending in its annealing phase; finished stages in --workdir are reused), then scores with
illume-eval's exact scorers on what the model never trained on (illume.demo.evaluate): text to
image on validation's unseen prompts beside the lookup baseline and the codec ceiling, the seen
prompts apart, the held-out compositions (`full` draws four images a prompt, as GenEval), QA as
the mean over question types, POPE F1 (the worst negative type), editing, and
editing's ceiling: the same edits' targets through the tokenizer and detokenizer, the figures an
MLLM that gets every code right would reach (`edit_ceiling`; `edit_copy`: returning the source),
and the MLLM's edit codes against the tokenizer's (`edit_codes`: right where the edit leaves the
image alone, and where it changes it).
Also where the drawings miss (the aspects they fail, per category; the rows and columns their
objects lie in, against the prompts' own scenes), whether the model scores each
prompt's scene above a counterfactual that fails it (`likelihood_probe`: knowledge apart from
sampling; on validation scenes and on training scenes, whose gap is what the model memorised rather
than learned), whether its understanding tells the same pairs apart (`judge_probe`: the prompt's
likelihood as a caption of each image, the judge of `best_of`), and a table of text-to-image overall
against guidance scale and temperature / top-k (the paper's Fig. B).
Prints tables, then one JSON object on the last line with the headline keys (illume.report.HEADLINE:
t2i_unseen, t2i_lookup_baseline, codec_ceiling, t2i_heldout_compositions, qa_macro, pope_f1_worst,
edit_target, edit_preserve), t2i_seen, intervals, train_seconds. Every text-to-image figure below
(sweep, stages, best of) is on the unseen prompts.

Run: .venv/bin/python benchmarks/mllm_quality.py [--workdir DIR] [--chain full|default|FILE]
     [--scenes N] [--sweep-prompts N]  (N training scenes instead of the chain's; 0 prompts: no sweep)
Ablations (benchmarks/RESULTS.md), each option repeatable:
     --steps mllm_stage3=1500                  a stage's steps instead of the chain's
     --stage-args mllm_stage3='--data.weights "[1, 1, 3, 0.25, 0.5]"'   LightningCLI arguments
                                               after the stage's recipe (shell-quoted; to explore:
                                               a setting a published figure rests on is a chain file)
     --reuse DIR --reuse-stages encoder,tokenizer,detokenizer   those stages' finished outputs
                                               linked from another work directory, not retrained
     --guidance G                              the headline figures' guidance (default: the demo's)
     --stage-prompts N                         text-to-image of every MLLM stage from stage 2 on, on
                                               the first N validation prompts at the headline sampling
                                               and draws a prompt (what each stage keeps of the
                                               drawing; 0: not measured)
     --best-of N                               text-to-image also with N candidates per drawing, the
                                               one the model judges best kept, as many drawings a
                                               prompt as the headline (0: not measured)
The guidance / temperature table draws once a prompt (--sweep-prompts prompts a setting).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import tempfile
from pathlib import Path

from illume.chain import Chain
from illume.demo import HEADLINE, evaluate, headline_table, train
from illume.pipeline import IllumePipeline, SamplingConfig
from illume_eval.shapes import ASPECTS, UNSEEN_TAGS
from illume_eval.shapes.evaluation import (
    edit_ceiling,
    edit_codes,
    judge_probe,
    likelihood_probe,
    t2i_quality,
)

SWEEP = [
    (1.0, 1.0, None),
    (2.0, 1.0, None),
    (3.0, 1.0, None),
    (5.0, 1.0, None),
    (3.0, 0.7, None),
    (3.0, 1.0, 20),
]


def _pairs(values: list[str], option: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep:
            raise SystemExit(
                f"{option} {value!r}: expected STAGE=VALUE, e.g. {option} mllm_stage3=..."
            )
        pairs[name] = rest
    return pairs


def _reuse(source: Path, names: list[str], chain: Chain) -> None:
    """Links each named stage's `final` output of `source` into the current work directory."""
    outputs = {name: chain.output(name) for name in chain.stage_names}
    for name in names:
        if name not in outputs:
            raise SystemExit(f"--reuse-stages {name!r}: stages are {', '.join(outputs)}")
        target, link = (source / outputs[name]).resolve(), Path(outputs[name])
        if not target.is_dir():
            raise SystemExit(f"--reuse {source}: {target} is missing; train that stage there first")
        if link.exists() and link.resolve() == target:  # linked already (or a parent is)
            continue
        if link.exists() or link.is_symlink():
            raise SystemExit(f"--reuse: {link.resolve()} already exists here; use a new --workdir")
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target, target_is_directory=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--chain", default="full", help="a shipped chain or a chain file")
    parser.add_argument("--sweep-prompts", type=int, default=100)
    parser.add_argument("--scenes", type=int, default=None)
    parser.add_argument("--steps", action="append", default=[], metavar="STAGE=N")
    parser.add_argument("--stage-args", action="append", default=[], metavar="STAGE=ARGS")
    parser.add_argument("--reuse", type=Path, default=None, metavar="DIR")
    parser.add_argument("--reuse-stages", default="", metavar="STAGE,STAGE")
    parser.add_argument("--guidance", type=float, default=None)
    parser.add_argument("--stage-prompts", type=int, default=0)
    parser.add_argument("--best-of", type=int, default=0)
    args = parser.parse_args()
    try:
        chain = Chain.load(args.chain).without_self_enhance()  # the three stages' figures
    except ValueError as err:
        raise SystemExit(f"--chain: {err}") from None
    if args.scenes:
        chain = chain.model_copy(
            update={"data": chain.data.model_copy(update={"scenes": args.scenes})}
        )
    try:
        steps = {k: int(v) for k, v in _pairs(args.steps, "--steps").items()}
        chain = chain.with_steps(steps)
    except ValueError as err:
        raise SystemExit(f"--steps: {err}") from None
    sizes = chain.evaluation
    extra = {k: shlex.split(v) for k, v in _pairs(args.stage_args, "--stage-args").items()}
    reuse = [s for s in args.reuse_stages.split(",") if s]
    if bool(reuse) != (args.reuse is not None):
        raise SystemExit("--reuse DIR and --reuse-stages STAGE,... go together")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="illume-mllm-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    source = args.reuse.resolve() if args.reuse else None
    os.chdir(workdir)
    if source:
        _reuse(source, reuse, chain)
    chain.data.ensure("data/shapes", progress=False)
    # of every stage trained here, also by earlier runs; reused stages count where they were trained
    seconds = train(chain, progress=False, extra_args=extra)
    train_seconds = round(sum(v for k, v in seconds.items() if k != "self_enhance"), 1)
    # the chain's sampling, or its guidance replaced by --guidance; the sweep sets its own
    guidance = {} if args.guidance is None else {"guidance": args.guidance}
    headline = SamplingConfig(**(chain.sampling | guidance))
    tokenizer, detokenizer = chain.output_of("tokenizer"), chain.output_of("detokenizer")
    pipe = IllumePipeline.from_stages(
        tokenizer,
        chain.final_mllm(),
        detokenizer,
        sampling=SamplingConfig(**(chain.sampling | guidance)),  # its own: the sweep changes it
    )
    metrics, _ = evaluate(pipe, sizes)
    # the same edits' targets through tokenizer and detokenizer: what a perfect MLLM would reach
    ceiling = edit_ceiling(pipe, "data/shapes/validation", n=sizes.edit)
    # where its edits miss, code by code: cells it should copy, cells it should change
    codes = edit_codes(pipe, "data/shapes/validation", n=sizes.edit)
    # does the model prefer each prompt's scene to a counterfactual one, apart from sampling?
    probe = likelihood_probe(pipe, "data/shapes/validation", n=2 * sizes.t2i)["summary"]
    # the same on scenes it trained on: binding known there and not on validation is memorised
    probe_train = likelihood_probe(pipe, "data/shapes/train", n=2 * sizes.t2i)["summary"]
    # can its understanding tell them apart? (the judge of best_of)
    judged = judge_probe(pipe, "data/shapes/validation", n=2 * sizes.t2i)["summary"]
    best_of = {}
    if args.best_of > 1:  # the model choosing among its own drawings
        best_of = t2i_quality(
            pipe,
            "data/shapes/validation",
            n=sizes.t2i,
            best_of=args.best_of,
            images_per_prompt=sizes.t2i_images,
            tags=UNSEEN_TAGS,
        )["summary"]

    print(f"{'guidance':>9}{'temperature':>13}{'top-k':>7}{'t2i unseen':>13}")
    sweep = []
    for guidance, temperature, top_k in SWEEP if args.sweep_prompts else []:
        pipe.sampling.guidance, pipe.sampling.temperature, pipe.sampling.top_k = (
            guidance,
            temperature,
            top_k,
        )
        overall = t2i_quality(
            pipe, "data/shapes/validation", n=args.sweep_prompts, tags=UNSEEN_TAGS
        )["summary"]["overall"]
        sweep.append(
            {
                "guidance": guidance,
                "temperature": temperature,
                "top_k": top_k,
                "t2i_unseen": overall,
            }
        )
        print(f"{guidance:>9}{temperature:>13}{top_k or '-':>7}{overall:>13.3f}")

    # what each MLLM stage keeps of the drawing (stage 1 trains no drawing)
    drawing = [(s.name, chain.output(s.name)) for s in chain.stages if s.stage == "mllm"][1:]
    by_stage = {}
    for name, output in drawing if args.stage_prompts else []:
        staged = IllumePipeline.from_stages(
            tokenizer, output, detokenizer, sampling=SamplingConfig(**(chain.sampling | guidance))
        )
        by_stage[name] = t2i_quality(
            staged,
            "data/shapes/validation",
            n=args.stage_prompts,
            images_per_prompt=sizes.t2i_images,
            tags=UNSEEN_TAGS,
        )["summary"]
    if by_stage:
        tags = list(next(iter(by_stage.values())))
        print(f"\n{'t2i by stage':<14}" + "".join(f"{t:>15}" for t in tags))
        for name, row in by_stage.items():
            print(f"{name:<14}" + "".join(f"{row[t]:>15.3f}" for t in tags))

    print("\n" + headline_table(metrics))
    ceil, copy = ceiling["summary"], ceiling["copy"]
    print(
        f"editing ceiling (targets through tokenizer + detokenizer): reached "
        f"{ceil['target_reached']:.2f}, preserved {ceil['preserved']:.3f}; "
        f"copying the source: preserved {copy['preserved']:.3f}"
    )
    print(
        f"\n{'edit codes right':<16}{'copied cells':>14}{'changed cells':>15}{'edits copying all':>19}"
        f"{'copied, 1 / 2 / 3+ cells from a change':>40}{'copied, object / background':>30}"
    )
    for kind, row in {"all": codes["summary"], **codes["by_kind"]}.items():
        near = " / ".join(f"{v:.3f}" for v in row["copied_by_distance"].values())
        content = " / ".join(f"{v:.3f}" for v in row["copied_by_content"].values())
        print(
            f"{kind:<16}{row['copied']:>14.3f}{row['changed']:>15.3f}{row['all_copied']:>19.2f}"
            f"{near:>40}{content:>30}"
        )
    print(f"\n{'drawings failing':<16}" + "".join(f"{a:>18}" for a in ASPECTS))
    for tag, row in metrics["t2i_failed_aspects"].items():
        print(f"{tag:<16}" + "".join(f"{row[a]:>18.2f}" for a in ASPECTS))
    layout = metrics["t2i_layout"]
    print(f"\n{'objects by':<16}{'drawn':>22}{'the scenes':>22}")
    for axis in ("rows", "columns"):
        drawn, scenes = (
            " / ".join(f"{v:.2f}" for v in layout[k][axis]) for k in ("drawn", "scenes")
        )
        print(f"{axis:<16}{drawn:>22}{scenes:>22}")
    print(
        f"\n{'own scene > counterfactual':<28}{'pairs':>7}{'conditional':>13}{'guided':>9}"
        f"{'trained-on: pairs':>19}{'conditional':>13}{'guided':>9}"
    )
    for tag, row in probe.items():
        seen = probe_train.get(
            tag, {"pairs": 0, "conditional": float("nan"), "guided": float("nan")}
        )
        print(
            f"{tag:<28}{row['pairs']:>7}{row['conditional']:>13.3f}{row['guided']:>9.3f}"
            f"{seen['pairs']:>19}{seen['conditional']:>13.3f}{seen['guided']:>9.3f}"
        )
    print(f"\n{'judged by understanding':<28}{'pairs':>7}{'own image wins':>16}")
    for tag, row in judged.items():
        print(f"{tag:<28}{row['pairs']:>7}{row['judged']:>16.3f}")
    if best_of:
        print(f"\n{'t2i, best of ' + str(args.best_of):<16}" + "".join(f"{t:>15}" for t in best_of))
        print(f"{'':<16}" + "".join(f"{v:>15.3f}" for v in best_of.values()))
    print(f"stage seconds: {json.dumps(seconds)}")
    out = {k: metrics[k] for k in HEADLINE}
    out |= {
        "t2i_seen": metrics["t2i_seen"],
        "intervals": metrics["intervals"],
        "train_seconds": train_seconds,
        "stage_seconds": seconds,
        "t2i": metrics["t2i"],
        "pope": metrics["pope"],
        "sweep": sweep,
        "workdir": str(workdir),
        "guidance": headline.guidance,
        "qa_by_type": metrics["qa"],
        "edits": metrics["edits"],
        "t2i_failed_aspects": metrics["t2i_failed_aspects"],
        "t2i_layout": metrics["t2i_layout"],
        "likelihood_probe": probe,
        "likelihood_probe_train": probe_train,
        "judge_probe": judged,
        "t2i_best_of": {"n": args.best_of, **best_of} if best_of else {},
        "edit_ceiling": ceil,
        "edit_copy": copy,
        "edit_codes": codes,
        "t2i_by_stage": by_stage,
        "steps": steps,
        "chain": chain.settings(),
        "stage_args": {k: shlex.join(v) for k, v in extra.items()},
        "reused": {name: str(source) for name in reuse},
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
