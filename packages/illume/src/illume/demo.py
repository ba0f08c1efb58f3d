"""`illume demo`: the whole system from nothing on ShapesWorld, in one command.

Make data; start from the shipped ShapesWorld encoder (the paper's pretrained SigLIP, stood in
for by illume_eval.shapes.foundations; `--profile scratch` trains it too); train the tokenizer, the
detokenizer and the MLLM's three stages (stage 3 ending in its annealing phase) with the shipped
recipes (`recipes/shapes/...`, steps
scaled by the profile), then (profiles that have it) self-enhancement: the model draws, the oracle
judges, and it learns from that; evaluate with illume-eval's exact scorers; write `report.html`,
`metrics.json` and a `pipeline/` directory that `illume generate / answer / edit --model
OUT/pipeline` use. Every stage writes its result atomically to `runs/.../final`; a second run
skips finished stages and resumes an interrupted one from its last checkpoint.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from illume_core import atomic_write_json

from .pipeline import SHAPES_SAMPLING, IllumePipeline


@dataclass(frozen=True)
class Profile:
    """How much data and training a demo run uses."""

    scenes: int
    n_eval: int
    encoder_steps: int
    tokenizer_steps: int
    detokenizer_steps: int
    mllm_steps: tuple[int, int, int]
    mllm_anneal_steps: int
    """Stage 3's last phase (recipes/shapes/mllm_anneal.yaml): a lower rate, edits weighted up."""
    eval_t2i: int
    """Text-to-image prompts drawn of validation's unseen categories (the headline) and of the
    held-out compositions, each."""
    eval_qa: int
    """Questions of each type asked (three times as many existence probes, for POPE's three
    negative types), of those not asked of the same layout in training; a third as many of those
    that were, reported apart."""
    eval_edit: int
    """Edits of validation not asked of the same layout in training."""
    train_encoder: bool = False
    """Train the vision encoder (stage 0) here; False starts from the shipped foundation, as the
    paper starts from a pretrained SigLIP."""
    image_size: int = 36
    """Side of ShapesWorld's images: 36 px, one 12 px encoder patch per cell of the 3x3 grid."""
    self_enhance: tuple[int, int] | None = None
    """(prompts drawn and assessed, SFT steps) of the self-enhancement step, or None to skip it."""
    eval_t2i_images: int = 1
    """Drawings per text-to-image prompt; GenEval draws 4."""
    eval_t2i_seen: int = 30
    """Text-to-image prompts drawn of validation's seen categories (reported apart)."""
    stage_args: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """LightningCLI arguments after a stage's recipe, by stage name: where the profile departs
    from the shipped recipes (a caller's `extra_args` come after these and win)."""


#: What ILLUME trains (tokenizer, detokenizer, MLLM stages 1-3), from the shipped encoder, in the
#: README's time; figures and seconds per stage in benchmarks/RESULTS.md, "Where it stands".
_DEFAULT = Profile(
    scenes=20000,
    n_eval=200,
    encoder_steps=0,
    tokenizer_steps=600,
    detokenizer_steps=1000,
    mllm_steps=(200, 800, 300),
    mllm_anneal_steps=100,
    eval_t2i=60,
    eval_qa=30,
    eval_edit=40,
)

PROFILES: dict[str, Profile] = {
    "default": _DEFAULT,
    # The same, the encoder trained here too (the recipe that made the shipped one).
    "scratch": replace(_DEFAULT, encoder_steps=1500, train_encoder=True),
    # The longest chain (benchmarks/*_quality.py): more scenes, longer stages, self-enhancement, and
    # four drawings a prompt, as GenEval, because one is too noisy to compare chains by.
    "full": Profile(
        scenes=48000,
        n_eval=400,
        encoder_steps=0,
        tokenizer_steps=1000,
        detokenizer_steps=4000,
        mllm_steps=(600, 8000, 1500),
        mllm_anneal_steps=500,
        eval_t2i=200,
        eval_qa=100,
        eval_edit=100,
        self_enhance=(1000, 300),
        eval_t2i_images=4,
        eval_t2i_seen=100,
        stage_args={
            "mllm_stage3": ("--model.groups", "{vision: 2.0e-5, adapter: 1.0e-3, llm: 3.0e-4}"),
        },
    ),
    # Seconds: the plumbing only (tests).
    "smoke": Profile(300, 16, 2, 2, 2, (2, 2, 2), 2, 4, 2, 4, self_enhance=(4, 2), eval_t2i_seen=2),
}

#: The headline figures, first in metrics.json, the report and benchmarks. Each is measured on
#: what the model was never trained on (illume_eval.shapes.splits): text to image on validation's
#: unseen prompts, beside the lookup baseline (a training image drawn for the same spec: 0 there by
#: construction) and the codec ceiling (the prompts' own images through tokenizer and
#: detokenizer); the held-out compositions; questions and edits not asked of the same layout in
#: training, QA as the mean over question types, POPE's F1 of its worst negative type.
HEADLINE = (
    "t2i_unseen",
    "t2i_lookup_baseline",
    "codec_ceiling",
    "t2i_heldout_compositions",
    "qa_macro",
    "pope_f1_worst",
    "edit_target",
    "edit_preserve",
)

#: (name, trainer stage, recipe, output of the stage) in training order.
STAGES = (
    ("encoder", "encoder", "recipes/shapes/encoder.yaml", "runs/shapes/encoder/final"),
    ("tokenizer", "tokenizer", "recipes/shapes/tokenizer.yaml", "runs/shapes/tokenizer/final"),
    (
        "detokenizer",
        "detokenizer",
        "recipes/shapes/detokenizer.yaml",
        "runs/shapes/detokenizer/final",
    ),
    ("mllm_stage1", "mllm", "recipes/shapes/mllm_stage1.yaml", "runs/shapes/mllm/stage1/final"),
    ("mllm_stage2", "mllm", "recipes/shapes/mllm_stage2.yaml", "runs/shapes/mllm/stage2/final"),
    ("mllm_stage3", "mllm", "recipes/shapes/mllm_stage3.yaml", "runs/shapes/mllm/stage3/final"),
    ("mllm_anneal", "mllm", "recipes/shapes/mllm_anneal.yaml", "runs/shapes/mllm/anneal/final"),
)

_STAGE_NAMES = tuple(name for name, *_ in STAGES)

#: Output of the self-enhancement step (recipes/shapes/self_enhance.yaml).
SELF_ENHANCED = "runs/shapes/self_enhance/final"
#: Seconds each stage took, over every run in this directory (`train` keeps it).
SECONDS = "runs/train_seconds.json"


_MLLM_STAGES = ("mllm_stage1", "mllm_stage2", "mllm_stage3")  # steps in Profile.mllm_steps


def _steps(profile: Profile, name: str) -> int:
    if name in _MLLM_STAGES:
        return profile.mllm_steps[int(name[-1]) - 1]
    return getattr(profile, f"{name}_steps")


def with_steps(profile: Profile, steps: Mapping[str, int]) -> Profile:
    """The profile with some stages' steps replaced, by stage name (`{"mllm_stage3": 1500}`)."""
    for name, n in steps.items():
        if name in _MLLM_STAGES:
            mllm = list(profile.mllm_steps)
            mllm[int(name[-1]) - 1] = n
            profile = replace(profile, mllm_steps=(mllm[0], mllm[1], mllm[2]))
        elif name in _STAGE_NAMES:  # the others have a field of their own
            profile = replace(profile, **{f"{name}_steps": n})
        else:
            raise ValueError(f"unknown stage {name!r}; stages: {', '.join(_STAGE_NAMES)}")
    return profile


def train(
    profile: Profile,
    progress: bool = True,
    extra_args: Mapping[str, Sequence[str]] | None = None,
) -> dict:
    """Runs every unfinished stage in the current directory; returns seconds per stage, of this
    run and of earlier ones (kept in `runs/train_seconds.json`: a resumed or skipped stage still
    reports what it took; an interrupted stage adds up its parts).

    extra_args: more LightningCLI arguments for a stage, by name, after the recipe's (they win):
    the benchmarks' ablations, e.g. `{"mllm_stage3": ["--data.weights", "[1, 1, 3, 0.25, 0.5]"]}`.
    """
    extra_args = dict(extra_args or {})
    unknown = (set(extra_args) | set(profile.stage_args)) - set(_STAGE_NAMES)
    if unknown:
        raise ValueError(
            f"arguments (extra_args or the profile's stage_args) for unknown stage(s) "
            f"{sorted(unknown)}; stages: {', '.join(_STAGE_NAMES)}"
        )
    from illume_trainer.cli import run_stage

    ledger = Path(SECONDS)
    seconds = json.loads(ledger.read_text()) if ledger.is_file() else {}

    def record(name: str, start: float) -> None:
        seconds[name] = round(seconds.get(name, 0.0) + time.perf_counter() - start, 1)
        ledger.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(ledger, seconds)

    for name, stage, recipe, output in STAGES:
        if Path(output).is_dir():  # written atomically: present means finished
            continue
        if name == "encoder" and not profile.train_encoder:
            start = time.perf_counter()
            install_foundation_encoder(output)
            record(name, start)
            continue
        root = Path(output).parent
        args = [
            "--config", recipe, "--trainer.max_steps", str(_steps(profile, name)),
            "--trainer.enable_progress_bar", str(progress).lower(),
            "--trainer.val_check_interval", str(max(1, _steps(profile, name) // 2)),
            "--trainer.log_every_n_steps", str(max(1, min(20, _steps(profile, name) // 10))),
        ]  # fmt: skip
        last = root / "checkpoints" / "last.ckpt"
        if last.is_file():
            args += ["--ckpt_path", str(last)]
        args += [*profile.stage_args.get(name, ()), *extra_args.get(name, ())]
        start = time.perf_counter()
        try:
            run_stage(stage, args)
        finally:
            record(name, start)
    if profile.self_enhance and not Path(SELF_ENHANCED).is_dir():
        from illume_trainer.cli import main as train_main

        prompts, steps = profile.self_enhance
        start = time.perf_counter()
        train_main(["self-enhance", "--config", "recipes/shapes/self_enhance.yaml", "--num_prompts", str(prompts),
                    "--sft_steps", str(steps), "--progress", str(progress).lower()])  # fmt: skip
        record("self_enhance", start)
    return seconds


def install_foundation_encoder(output: str | os.PathLike) -> None:
    """Copies the shipped encoder (illume_eval.shapes.foundations) to `output`, the encoder stage's
    result, as the paper starts from a pretrained SigLIP."""
    import shutil

    from illume_core import atomic_directory
    from illume_eval.shapes.foundations import foundation

    source = foundation("encoder")
    with atomic_directory(output, "encoder") as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True)


def final_mllm(profile: Profile) -> str:
    """The MLLM the demo ships: self-enhanced when the profile runs that step, else the last
    stage's (stage 3's annealing phase)."""
    return SELF_ENHANCED if profile.self_enhance else STAGES[-1][3]


def evaluate(
    pipe: IllumePipeline, profile: Profile, data: str = "data/shapes"
) -> tuple[dict, dict]:
    """(metrics, records) on the validation and held-out splits; see HEADLINE. Every figure comes
    with its sample size and 95% interval (metrics["intervals"])."""
    from illume_eval import aspect_failures
    from illume_eval.shapes import SEEN_TAGS, UNSEEN_TAGS
    from illume_eval.shapes.audit import TrainingOverlap, split_scenes

    from .evaluate import edit_quality, object_layout, qa_quality, t2i_baselines, t2i_quality

    overlap = TrainingOverlap(f"{data}/train")
    validation, heldout = f"{data}/validation", f"{data}/heldout"
    images = profile.eval_t2i_images
    subsets = {  # name: (split, categories, prompts)
        "unseen": (validation, UNSEEN_TAGS, profile.eval_t2i),
        "seen": (validation, SEEN_TAGS, profile.eval_t2i_seen),
        "heldout_compositions": (heldout, None, profile.eval_t2i),
    }
    t2i, baselines = {}, {}
    for name, (split, tags, n) in subsets.items():
        t2i[name] = t2i_quality(pipe, split, n=n, images_per_prompt=images, tags=tags)
        baselines[name] = t2i_baselines(pipe, overlap, split, n=n, tags=tags)
    scenes = split_scenes(validation)

    def question_seen(row: dict) -> bool:
        return overlap.question_seen(scenes[row["image"]], row)

    qa = qa_quality(pipe, validation, keep=lambda r: not question_seen(r), per_type=profile.eval_qa)
    qa_seen = qa_quality(
        pipe, validation, keep=question_seen, per_type=max(1, profile.eval_qa // 3)
    )
    edits = edit_quality(
        pipe, validation, n=profile.eval_edit, keep=lambda r: not overlap.edit_seen(r)
    )
    pope = qa["pope"]
    worst = min(pope, key=lambda k: pope[k]["f1"]) if pope else None

    def t2i_figures(name: str) -> dict:
        result, base = t2i[name], baselines[name]
        return {
            "model": result["summary"], "model_ci95": result["ci95"],
            "lookup_baseline": base["lookup_baseline"], "lookup_ci95": base["lookup_ci95"],
            "codec_ceiling": base["codec_ceiling"], "codec_ci95": base["codec_ci95"],
            "codec_scene_recovery": base["codec_scene_recovery"],
            "prompts": result["prompts"], "drawings": result["drawings"],
        }  # fmt: skip

    metrics = {
        "t2i_unseen": t2i["unseen"]["summary"]["overall"],
        "t2i_lookup_baseline": baselines["unseen"]["lookup_baseline"]["overall"],
        "codec_ceiling": baselines["unseen"]["codec_ceiling"]["overall"],
        "t2i_heldout_compositions": t2i["heldout_compositions"]["summary"]["overall"],
        "qa_macro": qa["accuracy"]["macro"],
        "pope_f1_worst": pope[worst]["f1"] if worst else 0.0,
        "edit_target": edits["summary"]["target_reached"],
        "edit_preserve": edits["summary"]["preserved"],
        "t2i_seen": t2i["seen"]["summary"]["overall"],
        "qa_seen_macro": qa_seen["accuracy"]["macro"],
        "t2i": {name: t2i_figures(name) for name in subsets},
        # per tag, the fraction of drawings failing each aspect: where the misses come from
        "t2i_failed_aspects": aspect_failures(
            (r["spec"].tag, r["check"]) for r in t2i["unseen"]["records"]
        ),
        # where the drawings put their objects, against the prompts' own scenes
        "t2i_layout": object_layout(t2i["unseen"]["records"], validation),
        "qa": {"unseen": qa["accuracy"], "seen": qa_seen["accuracy"]},
        "qa_questions": {"unseen": qa["questions"], "seen": qa_seen["questions"]},
        "pope": pope,
        "edits": edits["summary"],
    }
    pope_n = int(pope[worst]["n"]) if worst else 0
    metrics["intervals"] = {
        "t2i_unseen": {"n": t2i["unseen"]["drawings"], "ci95": t2i["unseen"]["ci95"]},
        "t2i_lookup_baseline": {"n": t2i["unseen"]["prompts"], "ci95": baselines["unseen"]["lookup_ci95"]},
        "codec_ceiling": {"n": t2i["unseen"]["prompts"], "ci95": baselines["unseen"]["codec_ci95"]},
        "t2i_heldout_compositions": {
            "n": t2i["heldout_compositions"]["drawings"], "ci95": t2i["heldout_compositions"]["ci95"],
        },
        "qa_macro": {"n": sum(qa["questions"].values()), "ci95": qa["ci95"]},
        "pope_f1_worst": {"n": pope_n, "ci95": None},  # an F1 has no closed-form interval here
        "edit_target": {"n": edits["edits"], "ci95": edits["ci95"]["target_reached"]},
        "edit_preserve": {"n": edits["edits"], "ci95": edits["ci95"]["preserved"]},
        "t2i_seen": {"n": t2i["seen"]["drawings"], "ci95": t2i["seen"]["ci95"]},
        "qa_seen_macro": {"n": sum(qa_seen["questions"].values()), "ci95": qa_seen["ci95"]},
    }  # fmt: skip
    records = {"t2i": t2i, "baselines": baselines, "qa": qa, "qa_seen": qa_seen, "edits": edits}
    return metrics, records


def headline_table(metrics: dict) -> str:
    """The headline figures as a plain-text table: value, sample size, 95% interval, and for text
    to image the lookup baseline and codec ceiling on the same prompts."""
    lines = [f"{'figure':<26}{'value':>8}{'n':>6}{'95% interval':>16}{'lookup':>8}{'codec':>8}"]
    beside = {
        "t2i_unseen": "unseen", "t2i_seen": "seen",
        "t2i_heldout_compositions": "heldout_compositions",
    }  # fmt: skip
    for key in (*HEADLINE, "t2i_seen", "qa_seen_macro"):
        interval = metrics["intervals"].get(key, {})
        ci = interval.get("ci95")
        ci_text = f"{ci[0]:.3f}-{ci[1]:.3f}" if ci else "-"
        row = f"{key:<26}{metrics[key]:>8.3f}{interval.get('n', ''):>6}{ci_text:>16}"
        if key in beside:
            t2i = metrics["t2i"][beside[key]]
            row += (
                f"{t2i['lookup_baseline']['overall']:>8.3f}{t2i['codec_ceiling']['overall']:>8.3f}"
            )
        lines.append(row)
    return "\n".join(lines)


#: The first ShapesWorld format whose splits are by meaning (illume_eval.shapes.splits): stages
#: trained on an older one have drawn what its validation now calls unseen.
SPLITS_BY_MEANING = 5


def refuse_stale_runs(data: str = "data/shapes", image_size: int | None = None) -> None:
    """A ValueError where trained stages (runs/) sit beside a dataset of a format before splits by
    meaning (resuming them would score on prompts they were trained to draw), or of another image
    size than the profile's (they were trained for other images)."""
    info = Path(data) / "info.json"
    if not info.is_file() or not Path("runs").is_dir():
        return
    details = json.loads(info.read_text())
    if image_size is not None and details.get("image_size") != image_size:
        raise ValueError(
            f"{Path.cwd()} holds stages trained on {details.get('image_size')} px ShapesWorld images; "
            f"this profile draws {image_size} px. Run in a new --out folder (the old one stays as it is)."
        )
    version = details.get("format_version", 0)
    if version < SPLITS_BY_MEANING:
        raise ValueError(
            f"{Path.cwd()} holds stages trained on ShapesWorld format {version}, whose validation "
            f"overlaps training; format {SPLITS_BY_MEANING} splits by meaning. Run in a new --out "
            "folder (the old one stays as it is)."
        )


def run_demo(out: str | os.PathLike, profile: str = "default", progress: bool = True) -> dict:
    """The whole demo in `out`; returns metrics.json's content."""
    from illume_eval.shapes import ensure_dataset

    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; profiles: {', '.join(PROFILES)}")
    chosen = PROFILES[profile]
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    here = Path.cwd()
    os.chdir(out)
    try:
        start = time.perf_counter()
        refuse_stale_runs("data/shapes", chosen.image_size)
        ensure_dataset(
            "data/shapes", chosen.scenes, seed=0, size=chosen.image_size, n_eval=chosen.n_eval,
            progress=progress,
        )  # fmt: skip
        seconds = train(chosen, progress=progress)
        pipe = IllumePipeline.from_stages(
            "runs/shapes/tokenizer/final", final_mllm(chosen), "runs/shapes/detokenizer/final",
            sampling=replace(SHAPES_SAMPLING),
        )  # fmt: skip
        if not Path("pipeline").is_dir():
            pipe.save_pretrained("pipeline")
        metrics, records = evaluate(pipe, chosen)
        metrics |= {
            "profile": profile,
            "profile_settings": asdict(chosen),
            "train_seconds": seconds,
        }
        metrics["total_seconds"] = round(time.perf_counter() - start, 1)
        atomic_write_json("metrics.json", metrics)
        from .report import write_report

        write_report("report.html", metrics, records, pipe)
        return metrics
    finally:
        os.chdir(here)


def summary_line(metrics: dict) -> str:
    return json.dumps({k: round(metrics[k], 4) for k in HEADLINE})
