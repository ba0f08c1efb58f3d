"""`illume demo`: the whole system from nothing on ShapesWorld, in one command.

A run follows a chain (illume.chain, `recipes/shapes/chains/*.yaml`): make data; copy the shipped
ShapesWorld encoder (the paper's pretrained SigLIP, stood in for by illume_eval.shapes.foundations;
the `scratch` chain trains it); train the tokenizer, the detokenizer and the MLLM's three stages
(stage 3 ending in its annealing phase) with the shipped recipes, then (chains that have it)
self-enhancement: the model draws, the oracle judges, and it learns from that; evaluate with
illume-eval's exact scorers; write `report.html`, `metrics.json` and a `pipeline/` directory that
`illume generate / answer / edit --model OUT/pipeline` use. Every stage writes its result
atomically to its `final` folder; a second run skips finished stages and resumes an interrupted one
from its last checkpoint.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from illume_core import atomic_write_json, atomic_write_text, read_json

from .chain import Chain, ChainEvaluation, merge
from .pipeline import IllumePipeline, SamplingConfig
from .report import HEADLINE, target_verdict

#: Seconds each stage took, over every run in this directory (`train` keeps it).
SECONDS = "runs/train_seconds.json"
#: Where a chain's ShapesWorld data lives, relative to the run's directory (the recipes' paths).
DATA = "data/shapes"


def train(
    chain: Chain,
    progress: bool = True,
    extra_args: Mapping[str, Sequence[str]] | None = None,
) -> dict:
    """Runs every unfinished stage of the chain in the current directory; returns seconds per
    stage, of this run and of earlier ones (kept in `runs/train_seconds.json`: a resumed or skipped
    stage still reports what it took; an interrupted stage adds up its parts).

    A stage marked `background` trains in a process of its own (its log beside its checkpoints)
    while the next stages train here, the CPU threads split between them; the chain waits for it
    before self-enhancement and before returning. Interrupted, it stops with the chain and resumes
    from its last checkpoint on the next run, as any stage does.

    extra_args: more LightningCLI arguments for a stage, by name, after the recipe and the chain's
    overrides (they win): quick explorations, e.g. `{"mllm_stage3": ["--model.lr", "5e-4"]}`; a
    setting that produces a published figure belongs in a chain file.
    """
    extra_args = dict(extra_args or {})
    unknown = set(extra_args) - set(chain.stage_names)
    if unknown:
        raise ValueError(
            f"extra_args for unknown stage(s) {sorted(unknown)}; stages: {', '.join(chain.stage_names)}"
        )
    chain.check_background()
    from illume_trainer.cli import run_stage

    ledger = Path(SECONDS)
    seconds = read_json(ledger) if ledger.is_file() else {}

    def record(name: str, elapsed: float) -> None:
        seconds[name] = round(seconds.get(name, 0.0) + elapsed, 1)
        ledger.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(ledger, seconds)

    background: list[BackgroundStage] = []
    try:
        for stage in chain.stages:
            output = Path(chain.output(stage.name))
            if output.is_dir():  # written atomically: present means finished
                continue
            start = time.perf_counter()
            if stage.foundation is not None:
                install_foundation(stage.foundation, output)
                record(stage.name, time.perf_counter() - start)
                continue
            if stage.stage == "pack":  # data for later stages, not a training run
                from illume_trainer.packing import pack_recipe

                pack_recipe(chain.recipe(stage.name), progress=progress)
                record(stage.name, time.perf_counter() - start)
                continue
            if stage.stage == "language_model":  # text only: the split's conversations in words
                from illume_eval.shapes.language import ensure_language_corpus

                ensure_language_corpus(DATA)
            steps = chain.steps(stage.name)
            run = {
                "trainer": {
                    "max_steps": steps,
                    "enable_progress_bar": progress and not stage.background,
                    "val_check_interval": max(1, steps // 2),
                    "log_every_n_steps": max(1, min(20, steps // 10)),
                }
            }
            # the chain's recipe overrides and this run's settings, one config merged over the recipe
            args = ["--config", stage.recipe, "--config", json.dumps(merge(stage.overrides, run))]
            last = output.parent / "checkpoints" / "last.ckpt"
            if last.is_file():
                args += ["--ckpt_path", str(last)]
            args += list(extra_args.get(stage.name, ()))
            if stage.background:
                background.append(
                    BackgroundStage.start(stage.name, stage.stage, args, output.parent)
                )
                continue
            for job in background:
                job.raise_if_failed()
            _share_threads(background)
            try:
                run_stage(stage.stage, args)
            finally:
                record(stage.name, time.perf_counter() - start)
        for job in background:
            record(job.name, job.wait(progress))
        background.clear()
    finally:
        for job in background:  # the chain stopped early: so do they (their checkpoints stay)
            job.stop()
        _share_threads([])
    enhance = chain.self_enhance
    if enhance is not None and not Path(chain.final_mllm()).is_dir():
        from .self_enhance.loop import main as self_enhance_main

        start = time.perf_counter()
        settings = {
            "num_prompts": enhance.prompts,
            "sft_steps": enhance.sft_steps,
            "progress": progress,
        }
        self_enhance_main(["--config", enhance.recipe, "--config", json.dumps(settings)])
        record("self_enhance", time.perf_counter() - start)
    return seconds


#: torch's intra-op threads before the first background stage took its share: what the stages
#: share out.
_THREADS: int | None = None


def _all_threads() -> int:
    import torch

    global _THREADS
    if _THREADS is None:
        _THREADS = torch.get_num_threads()
    return _THREADS


def _share_threads(background: Sequence[BackgroundStage]) -> None:
    """This process's torch threads: all of them, less one share per background stage still
    running (each has `BackgroundStage.threads`)."""
    import torch

    running = sum(job.threads for job in background if job.running)
    torch.set_num_threads(max(1, _all_threads() - running))


def _die_with_parent() -> None:
    """In a child before it runs: SIGTERM when the parent dies, even by SIGKILL, so that a rerun
    never trains the same stage twice at once."""
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


class BackgroundStage:
    """One illume-train stage in a child process, with half this machine's torch threads and its
    output to `ROOT/train.log`."""

    def __init__(self, name: str, process, threads: int, log: Path, started: float):
        import threading

        self.name, self.process, self.threads, self.log = name, process, threads, log
        self.started, self.ended = started, None
        self._watch = threading.Thread(target=self._await, daemon=True)
        self._watch.start()

    @classmethod
    def start(cls, name: str, kind: str, args: Sequence[str], root: Path) -> BackgroundStage:
        import subprocess
        import sys

        threads = max(1, _all_threads() // 2)
        root.mkdir(parents=True, exist_ok=True)
        log = (root / "train.log").resolve()  # the demo runs in its --out folder: say where
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        with open(log, "ab") as sink:
            process = subprocess.Popen(
                [sys.executable, "-m", "illume_trainer.cli", kind, *args],
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        print(
            f"{name}: training in the background on {threads} of {_all_threads()} threads "
            f"(log: {log})"
        )
        return cls(name, process, threads, log, time.perf_counter())

    def _await(self) -> None:
        self.process.wait()
        self.ended = time.perf_counter()

    @property
    def running(self) -> bool:
        return self.ended is None

    def raise_if_failed(self) -> None:
        code = self.process.poll()
        if code:
            tail = self.log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
            raise RuntimeError(
                f"stage {self.name} failed in the background (exit {code}): {tail[0]} (whole log: "
                f"{self.log}); run the demo again to resume it from its last checkpoint"
            )

    def wait(self, progress: bool = True) -> float:
        """Waits for it; its seconds from start to end. Raises RuntimeError if it failed."""
        if self.running and progress:
            print(f"waiting for {self.name} (background; log: {self.log})")
        self._watch.join()
        self.raise_if_failed()
        return self.ended - self.started

    def stop(self) -> None:
        import subprocess

        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def install_foundation(name: str, output: str | os.PathLike) -> None:
    """Copies a shipped foundation (illume_eval.shapes.foundations: the encoder) to `output`, a
    stage's result, as the paper starts from a pretrained SigLIP."""
    import shutil

    from illume_core import atomic_directory
    from illume_eval.shapes.foundations import foundation

    source = foundation(name)
    with atomic_directory(output, name) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True)


def evaluate(pipe: IllumePipeline, sizes: ChainEvaluation, data: str = DATA) -> tuple[dict, dict]:
    """(metrics, records) on the validation and held-out splits, of the chain's sample sizes; see
    HEADLINE. Every figure comes with its sample size and 95% interval (metrics["intervals"])."""
    from illume_eval import aspect_failures
    from illume_eval.shapes import SEEN_TAGS, UNSEEN_TAGS
    from illume_eval.shapes.audit import TrainingOverlap, split_scenes
    from illume_eval.shapes.evaluation import (
        edit_quality,
        object_layout,
        qa_quality,
        t2i_baselines,
        t2i_quality,
    )

    overlap = TrainingOverlap(f"{data}/train")
    validation, heldout = f"{data}/validation", f"{data}/heldout"
    images = sizes.t2i_images
    subsets = {  # name: (split, categories, prompts)
        "unseen": (validation, UNSEEN_TAGS, sizes.t2i),
        "seen": (validation, SEEN_TAGS, sizes.t2i_seen),
        "heldout_compositions": (heldout, None, sizes.t2i),
    }
    t2i, baselines = {}, {}
    for name, (split, tags, n) in subsets.items():
        t2i[name] = t2i_quality(pipe, split, n=n, images_per_prompt=images, tags=tags)
        baselines[name] = t2i_baselines(pipe, overlap, split, n=n, tags=tags)
    scenes = split_scenes(validation)

    def question_seen(row: dict) -> bool:
        return overlap.question_seen(scenes[row["image"]], row)

    qa = qa_quality(pipe, validation, keep=lambda r: not question_seen(r), per_type=sizes.qa)
    qa_seen = qa_quality(pipe, validation, keep=question_seen, per_type=max(1, sizes.qa // 3))
    edits = edit_quality(pipe, validation, n=sizes.edit, keep=lambda r: not overlap.edit_seen(r))
    pope = qa["pope"]
    worst = min(pope, key=lambda k: pope[k]["f1"]) if pope else None

    def t2i_figures(name: str) -> dict:
        result, base = t2i[name], baselines[name]
        return {
            "model": result["summary"],
            "model_ci95": result["ci95"],
            "lookup_baseline": base["lookup_baseline"],
            "lookup_ci95": base["lookup_ci95"],
            "codec_ceiling": base["codec_ceiling"],
            "codec_ci95": base["codec_ci95"],
            "codec_scene_recovery": base["codec_scene_recovery"],
            "prompts": result["prompts"],
            "drawings": result["drawings"],
        }

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
        "t2i_lookup_baseline": {
            "n": t2i["unseen"]["prompts"],
            "ci95": baselines["unseen"]["lookup_ci95"],
        },
        "codec_ceiling": {"n": t2i["unseen"]["prompts"], "ci95": baselines["unseen"]["codec_ci95"]},
        "t2i_heldout_compositions": {
            "n": t2i["heldout_compositions"]["drawings"],
            "ci95": t2i["heldout_compositions"]["ci95"],
        },
        "qa_macro": {"n": sum(qa["questions"].values()), "ci95": qa["ci95"]},
        "pope_f1_worst": {"n": pope_n, "ci95": None},  # an F1 has no closed-form interval here
        "edit_target": {"n": edits["edits"], "ci95": edits["ci95"]["target_reached"]},
        "edit_preserve": {"n": edits["edits"], "ci95": edits["ci95"]["preserved"]},
        "t2i_seen": {"n": t2i["seen"]["drawings"], "ci95": t2i["seen"]["ci95"]},
        "qa_seen_macro": {"n": sum(qa_seen["questions"].values()), "ci95": qa_seen["ci95"]},
    }
    records = {"t2i": t2i, "baselines": baselines, "qa": qa, "qa_seen": qa_seen, "edits": edits}
    return metrics, records


def headline_table(metrics: dict) -> str:
    """The headline figures as a plain-text table: value, sample size, 95% interval, for text to
    image the lookup baseline and codec ceiling on the same prompts, and each figure against the
    chain's target (metrics["targets"]) with its verdict (`target_verdict`)."""
    targets = metrics.get("targets") or {}
    head = f"{'figure':<26}{'value':>8}{'n':>6}{'95% interval':>16}{'lookup':>8}{'codec':>8}"
    lines = [head + (f"{'target':>9}  verdict" if targets else "")]
    beside = {
        "t2i_unseen": "unseen",
        "t2i_seen": "seen",
        "t2i_heldout_compositions": "heldout_compositions",
    }
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
        else:
            row += " " * 16
        if key in targets:
            verdict = target_verdict(metrics[key], ci, targets[key])
            row += f"{'>= ' + format(targets[key], '.2f'):>9}  {verdict}"
        lines.append(row.rstrip())
    return "\n".join(lines)


def run_demo(
    out: str | os.PathLike, chain: str | os.PathLike | Chain = "default", progress: bool = True
) -> dict:
    """The whole demo in `out` for a chain (a shipped name, a chain file or a Chain); returns
    metrics.json's content, which records the chain file, its SHA-256 and its settings."""

    chosen = chain if isinstance(chain, Chain) else Chain.load(chain)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    here = Path.cwd()
    os.chdir(out)
    try:
        start = time.perf_counter()
        chosen.data.ensure(DATA, progress=progress)
        seconds = train(chosen, progress=progress)
        pipe = IllumePipeline.from_stages(
            chosen.output_of("tokenizer"),
            chosen.final_mllm(),
            chosen.output_of("detokenizer"),
            sampling=SamplingConfig(**chosen.sampling),
        )
        if not Path("pipeline").is_dir():
            pipe.save_pretrained("pipeline")
        metrics, records = evaluate(pipe, chosen.evaluation)
        metrics |= {
            "chain": chosen.name,
            "chain_settings": chosen.settings(),
            "targets": dict(chosen.targets),
            "train_seconds": seconds,
        }
        metrics["total_seconds"] = round(time.perf_counter() - start, 1)
        atomic_write_json("metrics.json", metrics)
        from .model_card import CARD_FILE, pipeline_card

        # the pipeline's card says how it was made and what it scored
        card = pipeline_card(
            pipe, {"chain": chosen.name, **chosen.settings()}, headline_table(metrics)
        )
        atomic_write_text(Path("pipeline") / CARD_FILE, card)
        from .report import write_report

        write_report("report.html", metrics, records, pipe)
        return metrics
    finally:
        os.chdir(here)


def summary_line(metrics: dict) -> str:
    return json.dumps({k: round(metrics[k], 4) for k in HEADLINE})
