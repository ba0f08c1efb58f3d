"""A chain: every step of a ShapesWorld run as one YAML file (`recipes/shapes/chains/*.yaml`).

A chain names the data to make, each stage's recipe and steps and the recipe fields it replaces,
self-enhancement, the evaluation's sample sizes and the sampling the pipeline ships with. `illume
demo --chain NAME_OR_FILE` runs one; its metrics.json records the file and its SHA-256, so "which
settings produced this figure?" is answered by one file. A variant is a new chain file, never a
Python override.

    chain = Chain.load("default")            # a shipped chain, or a path to your own
    chain.stage("tokenizer").steps           # 600
    chain.output("detokenizer")              # runs/shapes/detokenizer/final (the recipe's output_dir)
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

from illume_core import MAX_CONFIG_BYTES, read_bounded, read_json, read_text


def _recipes() -> Path:
    from illume_trainer.cli import RECIPES

    return RECIPES


def chains_dir() -> Path:
    """Where the shipped chains are (inside illume-trainer's recipes)."""
    return _recipes() / "shapes" / "chains"


def shipped_chains() -> list[str]:
    return sorted(p.stem for p in chains_dir().glob("*.yaml"))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ChainData(_Strict):
    """The ShapesWorld dataset the chain makes (illume_eval.shapes.ensure_dataset)."""

    scenes: PositiveInt
    """Training scenes."""
    n_eval: PositiveInt
    """Scenes of each evaluation split (validation, held-out compositions)."""
    image_size: PositiveInt = 36
    seed: int = 0

    def ensure(self, directory: str | os.PathLike = "data/shapes", progress: bool = True) -> None:
        """Makes the dataset in `directory` unless it is there already, after refusing trained
        stages (runs/) beside data of another format or image size (`refuse_stale_runs`)."""
        from illume_eval.shapes import ensure_dataset

        refuse_stale_runs(str(directory), self.image_size)
        ensure_dataset(
            directory,
            self.scenes,
            seed=self.seed,
            size=self.image_size,
            n_eval=self.n_eval,
            progress=progress,
        )


class ChainStage(_Strict):
    """One trained stage: an illume-train stage run with a recipe."""

    name: str
    """The stage's name in the chain, the seconds ledger and `--steps NAME=N`."""
    stage: Literal["encoder", "language_model", "tokenizer", "detokenizer", "mllm", "pack"]
    """The illume-train stage that runs the recipe; `pack`: conversation files packed as shards
    with the chain's tokenizer (illume_trainer.shards.pack_recipe), trained on by later stages."""
    recipe: str
    """A LightningCLI recipe: a path, or one shipped with illume-trainer (`recipes/shapes/...`)."""
    steps: PositiveInt | None = None
    """Optimizer steps; None: the recipe's `trainer.max_steps`."""
    foundation: str | None = None
    """Copy this shipped foundation (illume_eval.shapes.foundations) as the stage's output instead
    of training it, as the paper starts from a pretrained SigLIP and a pretrained Vicuna."""
    overrides: dict[str, Any] = Field(default_factory=dict)
    """Recipe fields replaced, nested as in the recipe (`{model: {lr: 5.0e-4}}`); given to the stage
    as a second config after the recipe."""
    background: bool = False
    """Train it in a process of its own beside the stages after it, each with half the CPU threads
    (`illume.demo.train`), when no later stage reads its output: on 2 cores the small MLLM trains
    about as fast on one thread as on two, so a detokenizer beside it slows the MLLM stages it
    overlaps (by a fifth to a half) instead of adding its own time (benchmarks/RESULTS.md)."""


class ChainSelfEnhance(_Strict):
    """Self-enhancement (ILLUME section 3.3): draw, assess, continue training on the assessments."""

    recipe: str = "recipes/shapes/self_enhance.yaml"
    prompts: PositiveInt
    """Prompts drawn and assessed."""
    sft_steps: PositiveInt
    """Steps of the continued training."""


class ChainEvaluation(_Strict):
    """Sample sizes of the evaluation (illume.demo.evaluate)."""

    t2i: PositiveInt
    """Text-to-image prompts of validation's unseen categories (the headline) and of the held-out
    compositions, each."""
    t2i_seen: PositiveInt = 30
    """Text-to-image prompts of validation's seen categories (reported apart)."""
    t2i_images: PositiveInt = 1
    """Drawings per prompt; GenEval draws 4."""
    qa: PositiveInt
    """Questions of each type not asked of the same layout in training (three times as many
    existence probes, for POPE's three negative types); a third as many of those that were."""
    edit: PositiveInt
    """Edits of validation not asked of the same layout in training."""


class Chain(_Strict):
    """Every step of a run, in order. Load with `Chain.load`; `with_steps` makes a variant in memory
    (the benchmarks' step sweeps), recorded in metrics.json as settings beside the file's hash."""

    description: str = ""
    data: ChainData
    stages: tuple[ChainStage, ...]
    self_enhance: ChainSelfEnhance | None = None
    evaluation: ChainEvaluation
    sampling: dict[str, Any] = Field(default_factory=dict)
    """illume.pipeline.SamplingConfig's fields, saved with the pipeline the chain makes."""
    targets: dict[str, float] = Field(default_factory=dict)
    """What each headline figure (illume.report.HEADLINE) should reach; `illume demo` prints each
    figure against it."""
    source: str = Field(default="", exclude=True)
    """The file it was loaded from."""
    sha256: str = Field(default="", exclude=True)
    """SHA-256 of that file's bytes."""

    @model_validator(mode="after")
    def _names_unique(self) -> Chain:
        names = [s.name for s in self.stages]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"stage names must be unique; repeated: {repeated}")
        from .report import HEADLINE

        unknown = sorted(set(self.targets) - set(HEADLINE))
        if unknown:
            raise ValueError(
                f"targets for unknown figures {unknown}; figures: {', '.join(HEADLINE)}"
            )
        return self

    @classmethod
    def load(cls, name_or_path: str | os.PathLike) -> Chain:
        """A shipped chain by name (`default`, `smoke`, ...) or a chain file by path; a bad file is
        one ValueError naming the file, the field and the problem."""
        path = Path(name_or_path)
        if not path.is_file():
            shipped = chains_dir() / f"{name_or_path}.yaml"
            if not shipped.is_file():
                raise ValueError(
                    f"no chain {str(name_or_path)!r}: neither a file nor a shipped chain "
                    f"({', '.join(shipped_chains())})"
                )
            path = shipped
        raw = read_bounded(path, MAX_CONFIG_BYTES)
        try:
            values = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise ValueError(f"{path}: not YAML ({' '.join(str(err).split())})") from None
        if not isinstance(values, dict):
            raise ValueError(f"{path}: a chain is a YAML mapping (data, stages, evaluation, ...)")
        try:
            return cls(**values, source=str(path), sha256=hashlib.sha256(raw).hexdigest())
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "chain"
            more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
            raise ValueError(f"{path}: {where}: {first['msg']}{more}") from None

    @property
    def name(self) -> str:
        return Path(self.source).stem if self.source else "chain"

    def stage(self, name: str) -> ChainStage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise ValueError(f"unknown stage {name!r}; stages: {', '.join(self.stage_names)}")

    @property
    def stage_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.stages)

    def with_steps(self, steps: dict[str, int]) -> Chain:
        """The chain with some stages' steps replaced, by stage name (`{"mllm_stage3": 1500}`)."""
        for name, n in steps.items():
            self.stage(name)  # refuses unknown names
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"{name}: steps must be an integer >= 1, got {n!r}")
        stages = tuple(
            s.model_copy(update={"steps": steps[s.name]}) if s.name in steps else s
            for s in self.stages
        )
        return self.model_copy(update={"stages": stages})

    def check_background(self) -> None:
        """A ValueError where a later stage's recipe (overrides included) reads what a background
        stage writes: it would start before that output exists."""
        for i, stage in enumerate(self.stages):
            if not stage.background:
                continue
            if stage.foundation is not None or stage.stage == "pack":
                raise ValueError(
                    f"stage {stage.name!r}: only a trained stage can run in the background"
                )
            output = self.output(stage.name)
            for later in self.stages[i + 1 :]:
                if later.foundation is None and _mentions(self.recipe(later.name), output):
                    raise ValueError(
                        f"stage {later.name!r} reads {output}, which {stage.name!r} writes in the "
                        f"background, so it would start before that exists: drop `background: true` "
                        f"from {stage.name!r}"
                    )

    def without_self_enhance(self) -> Chain:
        return self.model_copy(update={"self_enhance": None})

    def only(self, *names: str) -> Chain:
        """The chain with only the named stages (e.g. the codec's), without self-enhancement."""
        for name in names:
            self.stage(name)
        stages = tuple(s for s in self.stages if s.name in names)
        return self.model_copy(update={"stages": stages, "self_enhance": None})

    def recipe(self, name: str) -> dict:
        """A stage's recipe with the chain's overrides merged in."""
        from illume_trainer.cli import resolve_recipe

        stage = self.stage(name)
        recipe = yaml.safe_load(read_text(resolve_recipe(stage.recipe)))
        return merge(recipe, stage.overrides)

    def steps(self, name: str) -> int:
        stage = self.stage(name)
        return stage.steps or int(self.recipe(name)["trainer"]["max_steps"])

    def output(self, name: str) -> str:
        """Where a stage writes its result: its recipe's `model.output_dir` (overrides applied)."""
        return str(self.recipe(name)["model"]["output_dir"])

    def output_of(self, kind: str) -> str:
        """The output of the chain's last stage of an illume-train stage kind (`mllm`, ...)."""
        names = [s.name for s in self.stages if s.stage == kind]
        if not names:
            raise ValueError(f"chain {self.name!r} has no {kind} stage")
        return self.output(names[-1])

    def self_enhanced_output(self) -> str | None:
        if self.self_enhance is None:
            return None
        from illume_trainer.cli import resolve_recipe

        recipe = yaml.safe_load(read_text(resolve_recipe(self.self_enhance.recipe)))
        return str(Path(recipe["out"]) / "final")

    def final_mllm(self) -> str:
        """The MLLM the chain ships: self-enhanced when it runs that step, else its last MLLM
        stage's."""
        return self.self_enhanced_output() or self.output_of("mllm")

    def settings(self) -> dict:
        """What metrics.json records: the file, its hash and the settings as run."""
        return {"file": self.source, "sha256": self.sha256, **self.model_dump()}


def _mentions(values: Any, path: str) -> bool:
    """Whether any string in a recipe (nested mappings and lists) is `path` or lies under it."""
    if isinstance(values, dict):
        return any(_mentions(v, path) for v in values.values())
    if isinstance(values, (list, tuple)):
        return any(_mentions(v, path) for v in values)
    if isinstance(values, str):
        target = Path(path)
        return Path(values) == target or target in Path(values).parents
    return False


def merge(base: dict, overrides: dict) -> dict:
    """`base` with `overrides` merged in, mapping by mapping (a recipe with a chain's overrides)."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


#: The first ShapesWorld format whose splits are by meaning (illume_eval.shapes.splits): stages
#: trained on an older one have drawn what its validation now calls unseen.
SPLITS_BY_MEANING = 5


def refuse_stale_runs(data: str = "data/shapes", image_size: int | None = None) -> None:
    """A ValueError where trained stages (runs/) sit beside a dataset of a format before splits by
    meaning (resuming them would score on prompts they were trained to draw), or of another image
    size than the chain's (they were trained for other images)."""
    info = Path(data) / "info.json"
    if not info.is_file() or not Path("runs").is_dir():
        return
    details = read_json(info)
    if image_size is not None and details.get("image_size") != image_size:
        raise ValueError(
            f"{Path.cwd()} holds stages trained on {details.get('image_size')} px ShapesWorld images; "
            f"this chain draws {image_size} px. Run in a new --out folder (the old one stays as it is)."
        )
    version = details.get("format_version", 0)
    if version < SPLITS_BY_MEANING:
        raise ValueError(
            f"{Path.cwd()} holds stages trained on ShapesWorld format {version}, whose validation "
            f"overlaps training; format {SPLITS_BY_MEANING} splits by meaning. Run in a new --out "
            "folder (the old one stays as it is)."
        )
